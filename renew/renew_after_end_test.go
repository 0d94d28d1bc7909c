package renew

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dflock-sdk/go/wire"
)

// okSyncOwner answers every request ok inside SendBatch.
type okSyncOwner struct{}

func (okSyncOwner) Err() error { return nil }

func (okSyncOwner) SendBatch(reqs []wire.Request, done func(int, wire.Reply, error)) {
	for i := range reqs {
		done(i, wire.Reply{Status: wire.StatusOK}, nil)
	}
}

// Nobody sees a lease's end before its Context is cancelled and its Done
// closed — Renew included, which reports the end ("If the lease ends first
// ..., Renew returns Err at once") while the ender (here OwnerFailed,
// finishing its leases one by one after the mutex) may not have finished
// this one yet.
func TestRenewReportsTheEndOnlyWithTheContextCancelled(t *testing.T) {
	s, _ := manualScheduler(t, Config{})
	o := okSyncOwner{}
	const ttl = 10 * time.Second
	b := s.Track(Spec{Key: "b", Token: "t", TTL: ttl, Owner: o})
	a := s.Track(Spec{Key: "a", Token: "t", TTL: ttl, Owner: o}) // owner's list head: finished first
	// a's finish takes a while: many contexts derive from it.
	actx := a.Context()
	for range 200_000 {
		_, cancel := context.WithCancel(actx)
		defer cancel()
	}
	bctx := b.Context()
	bdone := b.Done()

	failed := make(chan struct{})
	go func() {
		defer close(failed)
		s.OwnerFailed(o, errors.New("connection reset"))
	}()
	// Wait until OwnerFailed has ended b (under s.mu; read without
	// finishing it), while it is still finishing a.
	deadline := time.Now().Add(waitShort)
	for !b.ended.Load() {
		if time.Now().After(deadline) {
			t.Fatal("b never ended")
		}
		time.Sleep(time.Millisecond)
	}
	err := b.Renew(context.Background())
	if !errors.Is(err, ErrLost) {
		t.Fatalf("Renew: %v", err)
	}
	// Renew has told us the lease is lost.
	ctxLive := bctx.Err() == nil
	doneOpen := false
	select {
	case <-bdone:
	default:
		doneOpen = true
	}
	if ctxLive || doneOpen {
		t.Errorf("Renew returned the loss (%v) while the lease's Context was live=%v and Done open=%v", err, ctxLive, doneOpen)
	}
	<-failed
}
