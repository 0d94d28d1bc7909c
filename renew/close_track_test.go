package renew

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/wire"
)

// blockingOwner's SendBatch blocks (on the scheduler goroutine) until gate
// closes; entered is closed on the first call. It answers nothing.
type blockingOwner struct {
	gate    chan struct{}
	entered chan struct{}
	once    sync.Once
}

func newBlockingOwner() *blockingOwner {
	return &blockingOwner{gate: make(chan struct{}), entered: make(chan struct{})}
}

func (o *blockingOwner) Err() error { return nil }

func (o *blockingOwner) SendBatch(reqs []wire.Request, done func(int, wire.Reply, error)) {
	o.once.Do(func() { close(o.entered) })
	<-o.gate
}

// Spec.OnLost: "It is not called ... for one that Track returns already
// lost because the scheduler is closed". A Track made while Close is in
// progress (Close has set closed and waits for the scheduler goroutine,
// here held up in a SendBatch) is returned lost with errClosed, and must not
// be notified either.
func TestTrackDuringCloseIsNotNotified(t *testing.T) {
	t.Parallel()
	o := newBlockingOwner()
	s := New(Config{})
	// Due at once: the goroutine's round blocks in o.SendBatch.
	s.Track(Spec{Key: "busy", Token: "t", TTL: time.Minute, Owner: o, Sent: time.Now().Add(-40 * time.Second)})
	select {
	case <-o.entered:
	case <-time.After(waitShort):
		t.Fatal("round not started")
	}

	closed := make(chan []*Lease, 1)
	go func() { closed <- s.Close() }()
	require.Eventually(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.closed
	}, waitShort, time.Millisecond, "Close has begun")

	rec := newLossRecorder("")
	late := s.Track(Spec{Key: "late", Token: "t", TTL: time.Minute, Owner: okOwner(t), OnLost: rec})
	require.ErrorIs(t, late.Err(), errClosed)

	close(o.gate)
	<-closed
	assert.Empty(t, rec.snapshot(), "OnLost called for a lease Track returned lost because the scheduler is closed")
}
