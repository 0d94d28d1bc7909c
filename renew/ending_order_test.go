package renew

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/wire"
)

// gatedOwner never answers renewals, and its SendBatch of a release (the
// best-effort release a round writes for a lease it declared lost) waits
// for gate: a write that takes a while, which the round makes after it
// declared the lease lost.
type gatedOwner struct {
	gate      chan struct{}
	inRelease chan struct{}
	once      sync.Once
}

func (o *gatedOwner) Err() error { return nil }

func (o *gatedOwner) SendBatch(reqs []wire.Request, done func(int, wire.Reply, error)) {
	for _, r := range reqs {
		if r.Cmd == wire.CmdRelease {
			o.once.Do(func() { close(o.inRelease) })
			<-o.gate
			return
		}
	}
}

// newGatedOwner returns a gatedOwner whose gate opens at cleanup, after
// which the cleanup waits for the ticks the test started (tickDone).
func newGatedOwner(t *testing.T) (*gatedOwner, *sync.WaitGroup) {
	o := &gatedOwner{gate: make(chan struct{}), inRelease: make(chan struct{})}
	tickDone := new(sync.WaitGroup)
	t.Cleanup(tickDone.Wait)
	t.Cleanup(func() {
		select {
		case <-o.gate:
		default:
			close(o.gate)
		}
	})
	return o, tickDone
}

// The Context and Done of a lease are ended after the scheduler's mutex is
// released, but nobody may see the loss before: documented order
// (docs/leases.md, Lease.finish): Context cancelled, Done closed, Err, then
// OnLeaseLost — and whoever wakes on Done finds the Context cancelled,
// including a Done first taken after the end.
func TestLossIsObservedOnlyWithContextCancelledAndDoneClosed(t *testing.T) {
	s, clk := manualScheduler(t, Config{})
	o, tickDone := newGatedOwner(t)

	type seen struct{ doneClosed, ctxCancelled bool }
	onLost := make(chan seen, 2)
	var a, b *Lease
	handler := lossFunc(func(l *Lease, err error) {
		s := seen{ctxCancelled: l.Context().Err() != nil}
		select {
		case <-l.Done():
			s.doneClosed = true
		default:
		}
		onLost <- s
	})
	const ttl = 4 * time.Second
	sent := clk.Now()
	a = s.Track(Spec{Key: "a", Token: "t", TTL: ttl, Owner: o, Sent: sent, OnLost: handler})
	b = s.Track(Spec{Key: "b", Token: "t", TTL: ttl, Owner: o, Sent: sent})
	ctxA, doneA := a.Context(), a.Done()
	ctxB := b.Context() // Done of b not taken yet

	clk.Advance(ttl) // past both deadlines
	tickDone.Add(1)
	go func() { defer tickDone.Done(); s.tick() }()
	select {
	case <-o.inRelease:
	case <-time.After(waitShort):
		t.Fatal("the round wrote no release")
	}

	// The round is writing its release; both leases are lost already.
	require.ErrorIs(t, a.Err(), ErrLost)
	require.ErrorIs(t, b.Err(), ErrLost)
	var got seen
	select {
	case got = <-onLost:
	case <-time.After(waitShort):
		t.Fatal("OnLost not called")
	}
	if !got.ctxCancelled || !got.doneClosed {
		t.Errorf("OnLost ran with the lease's Context cancelled=%v and Done closed=%v: both must precede it", got.ctxCancelled, got.doneClosed)
	}
	if ctxA.Err() == nil {
		t.Errorf("Err() reports the loss while the Context taken before is not cancelled")
	}
	select {
	case <-doneA:
	default:
		t.Errorf("Err() reports the loss while the Done taken before is open")
	}
	select {
	case <-b.Done(): // closedDone
		if ctxB.Err() == nil {
			t.Errorf("Done (first taken after the end) is closed but the Context taken before is not cancelled")
		}
	default:
	}
	close(o.gate)
	tickDone.Wait()
	// Once the round is over, everything is consistent.
	assert.Error(t, ctxA.Err())
	assert.Error(t, ctxB.Err())
}

// Untrack reports false for a lease the round has just declared lost, and
// Release in dflock then returns ErrLockLost: with Done closed, though
// whoever ended the lease may not have finished it yet.
func TestUntrackOfAnEndedLeaseReturnsWithDoneClosed(t *testing.T) {
	s, clk := manualScheduler(t, Config{})
	o, tickDone := newGatedOwner(t)
	const ttl = 4 * time.Second
	l := s.Track(Spec{Key: "a", Token: "t", TTL: ttl, Owner: o, Sent: clk.Now()})
	done := l.Done()
	clk.Advance(ttl)
	tickDone.Add(1)
	go func() { defer tickDone.Done(); s.tick() }()
	<-o.inRelease
	require.False(t, l.Untrack(), "already lost")
	select {
	case <-done:
	default:
		t.Error("Untrack returned (lease ended) with Done still open")
	}
	close(o.gate)
	tickDone.Wait()
}

// recOwner records, when a round writes the best-effort release of a lease
// it declared lost, whether that lease's Context was cancelled and its
// Done closed by then. It never answers renewals and does not block.
type recOwner struct {
	mu     sync.Mutex
	leases map[string]*Lease
	seen   map[string][2]bool // key → {ctx cancelled, done closed}
}

func (o *recOwner) Err() error { return nil }

func (o *recOwner) SendBatch(reqs []wire.Request, done func(int, wire.Reply, error)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, r := range reqs {
		if r.Cmd != wire.CmdRelease {
			continue
		}
		l := o.leases[r.Key]
		var s [2]bool
		s[0] = l.Context().Err() != nil
		select {
		case <-l.Done():
			s[1] = true
		default:
		}
		o.seen[r.Key] = s
	}
}

// The round that declares a lease lost by the clock writes its best-effort
// release — which ends the lease on the server, free for the next holder —
// only after it cancelled the lease's Context and closed its Done: a
// WithLock fn (whose ctx derives from the lease's Context) must not run
// with a live ctx once its lock is let go on the server.
func TestReleaseOfAnExpiredLeaseWrittenAfterItsContextIsCancelled(t *testing.T) {
	s, clk := manualScheduler(t, Config{})
	o := &recOwner{leases: map[string]*Lease{}, seen: map[string][2]bool{}}
	const ttl = 4 * time.Second
	l := s.Track(Spec{Key: "a", Token: "t", TTL: ttl, Owner: o, Sent: clk.Now()})
	o.mu.Lock()
	o.leases["a"] = l
	o.mu.Unlock()
	ctx, done := l.Context(), l.Done()
	clk.Advance(ttl)
	s.tick()
	o.mu.Lock()
	seen, ok := o.seen["a"]
	o.mu.Unlock()
	require.True(t, ok, "no best-effort release written")
	assert.True(t, seen[0], "the release was written while the lease's Context was not cancelled")
	assert.True(t, seen[1], "the release was written while the lease's Done was open")
	assert.Error(t, ctx.Err())
	<-done
}
