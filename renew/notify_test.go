package renew

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/wire"
)

// lossFunc is a function as a Spec.OnLost.
type lossFunc func(l *Lease, err error)

func (f lossFunc) LeaseLost(l *Lease, err error) { f(l, err) }

// lossRecorder is a Spec.OnLost that records the order of notifications, checks
// that calls never overlap, and can be made to block.
type lossRecorder struct {
	mu      sync.Mutex
	keys    []string
	inside  atomic.Int32
	overlap atomic.Bool
	changed chan struct{}

	blockKey string        // a call for this key waits for unblock
	entered  chan struct{} // closed when the call for blockKey starts
	unblock  chan struct{}
}

func newLossRecorder(blockKey string) *lossRecorder {
	return &lossRecorder{
		changed:  make(chan struct{}, 1),
		blockKey: blockKey,
		entered:  make(chan struct{}),
		unblock:  make(chan struct{}),
	}
}

func (r *lossRecorder) LeaseLost(l *Lease, err error) {
	if r.inside.Add(1) != 1 {
		r.overlap.Store(true)
	}
	defer r.inside.Add(-1)
	if !errors.Is(err, ErrLost) || err != l.Err() {
		panic(fmt.Sprintf("OnLost(%q) with err %v, lease Err %v", l.Key(), err, l.Err()))
	}
	if l.Key() == r.blockKey {
		close(r.entered)
		<-r.unblock // user code that blocks
	}
	r.mu.Lock()
	r.keys = append(r.keys, l.Key())
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *lossRecorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.keys...)
}

func (r *lossRecorder) waitFor(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.NewTimer(waitShort)
	defer deadline.Stop()
	for {
		if ks := r.snapshot(); len(ks) >= n {
			return ks
		}
		select {
		case <-r.changed:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %d loss notifications; got %q", n, r.snapshot())
		}
	}
}

// An OnLost that blocks (here until the test lets it go) on one loss must
// stall nothing but later notifications: another owner's lease keeps being
// renewed, and losses by every path — a refused explicit Renew (decided on
// the owner's reader), a failed owner, an expiry found by the scheduler —
// are still detected at once. The notifications then arrive in the order of
// the losses, one call at a time. The blocked loss is decided once on the
// scheduler goroutine (an expiry) and once on a connection reader (a
// refused renewal, on the owner whose reader c's Renew then needs).
func TestBlockingOnLostDoesNotStallRenewalsOrLossDetection(t *testing.T) {
	t.Parallel()
	for _, via := range []string{"scheduler", "reader"} {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			bad := newOwner(t, func(wire.Request) answer { return answer{kind: answerRefuse} })
			good := okOwner(t)
			doomed := okOwner(t)
			silent := newOwner(t, func(wire.Request) answer { return answer{kind: answerNever} })
			rec := newLossRecorder("a")
			s := newTestScheduler(t, Config{KeepAlive: 50 * time.Millisecond})
			defer close(rec.unblock) // before Close (cleanup), which waits for OnLost
			var cnt Counters

			b := s.Track(Spec{Key: "b", Token: "t", TTL: time.Minute, Owner: good, OnLost: rec, Counters: &cnt})
			var a *Lease
			if via == "scheduler" {
				a = s.Track(Spec{Key: "a", Token: "t", TTL: time.Second, Owner: silent, Sent: time.Now().Add(-time.Hour), OnLost: rec, Counters: &cnt})
			} else {
				a = s.Track(Spec{Key: "a", Token: "t", TTL: time.Minute, Owner: bad, OnLost: rec, Counters: &cnt}) // refused at its first renewal
			}
			<-rec.entered
			require.ErrorIs(t, a.Err(), ErrLost)

			// b is renewed (sent and answered) again and again while OnLost blocks.
			n := len(good.snapshot())
			good.waitBatches(t, n+3, waitShort)
			good.waitAnswered(t, n+3, waitShort)
			assert.NoError(t, b.Err())

			// A refused explicit renewal: the reader decides the loss and Renew returns.
			ctx, cancel := context.WithTimeout(context.Background(), waitShort)
			defer cancel()
			c := s.Track(Spec{Key: "c", Token: "t", TTL: time.Hour, Owner: bad, OnLost: rec, Counters: &cnt})
			assert.ErrorIs(t, c.Renew(ctx), ErrRefused)
			// A failed owner: OwnerFailed returns with the lease already lost.
			d := s.Track(Spec{Key: "d", Token: "t", TTL: time.Hour, Owner: doomed, OnLost: rec, Counters: &cnt})
			s.OwnerFailed(doomed, errTransport)
			assert.ErrorIs(t, d.Err(), ErrOwnerFailed)
			// An overdue grant, found by the scheduler.
			e := s.Track(Spec{Key: "e", Token: "t", TTL: time.Second, Owner: silent, Sent: time.Now().Add(-time.Hour), OnLost: rec, Counters: &cnt})
			waitDone(t, e, waitShort)
			assert.ErrorIs(t, e.Err(), errExpired)

			assert.Empty(t, rec.snapshot(), "a notification overtook the blocked one")
			assert.Equal(t, int64(4), cnt.Lost.Load())
			assert.NoError(t, b.Err())

			rec.unblock <- struct{}{} // let the blocked call return; later ones do not block
			assert.Equal(t, []string{"a", "c", "d", "e"}, rec.waitFor(t, 4))
			assert.False(t, rec.overlap.Load(), "OnLost calls overlapped")
		})
	}
}

// When an owner with 10,000 leases fails, the losses are delivered by one
// goroutine, not one goroutine per lease.
func TestManyLossesAreDeliveredByOneGoroutine(t *testing.T) {
	// Not parallel: it counts the process's goroutines.
	const n = 10000
	o := okOwner(t)
	rec := newLossRecorder("k0")
	s := newTestScheduler(t, Config{KeepAlive: time.Hour})
	var cnt Counters
	for i := range n {
		s.Track(Spec{Key: fmt.Sprintf("k%d", i), Token: "t", TTL: time.Hour, Owner: o, OnLost: rec, Counters: &cnt})
	}
	first := s.Track(Spec{Key: "first", Token: "t", TTL: time.Hour, Owner: okOwner(t), OnLost: rec, Counters: &cnt})
	s.OwnerFailed(first.Owner(), errTransport)
	rec.waitFor(t, 1) // the notifier went idle: its goroutine may be gone
	base := runtime.NumGoroutine()

	s.OwnerFailed(o, errTransport) // the notifier blocks on k0 (list order is unspecified)
	<-rec.entered
	grew := runtime.NumGoroutine() - base
	assert.LessOrEqual(t, grew, 5, "goroutines per lost lease")
	assert.Equal(t, int64(n+1), cnt.Lost.Load())

	close(rec.unblock)
	ks := rec.waitFor(t, n+1)
	assert.Len(t, ks, n+1)
	assert.False(t, rec.overlap.Load(), "OnLost calls overlapped")
}

// Close delivers every notification queued before it, waiting for them; no
// notification is made after Close returns.
func TestCloseDeliversQueuedLossNotifications(t *testing.T) {
	t.Parallel()
	o := okOwner(t)
	rec := newLossRecorder("a")
	s := New(Config{KeepAlive: time.Hour})
	var ls []*Lease
	for _, k := range []string{"a", "b", "c"} {
		ls = append(ls, s.Track(Spec{Key: k, Token: "t", TTL: time.Hour, Owner: okOwner(t), OnLost: rec}))
	}
	held := s.Track(Spec{Key: "held", Token: "t", TTL: time.Hour, Owner: o, OnLost: rec})
	for _, l := range ls {
		s.OwnerFailed(l.Owner(), errTransport)
	}
	<-rec.entered // "a" is being delivered; "b" and "c" are queued

	closed := make(chan []*Lease)
	go func() { closed <- s.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while a queued notification was undelivered")
	default:
	}
	close(rec.unblock)
	assert.Equal(t, []*Lease{held}, <-closed)
	assert.Equal(t, []string{"a", "b", "c"}, rec.snapshot())

	late := s.Track(Spec{Key: "late", Token: "t", TTL: time.Hour, Owner: o, OnLost: rec})
	assert.ErrorIs(t, late.Err(), errClosed)
	assert.Equal(t, []string{"a", "b", "c"}, rec.snapshot(), "a notification after Close")
}
