package renew

import (
	"container/heap"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/wire"
)

// serverOwner is a connection to a one-connection model of the server: it
// logs every request in wire order and answers it synchronously as the
// server would (a token released, or unknown, is refused). before, if set,
// runs at the start of SendBatch (another goroutine's work that got there
// first).
type serverOwner struct {
	mu     sync.Mutex
	wire   *[]string
	held   map[string]bool // token → held, shared by the owners of one server
	before func()
}

func (o *serverOwner) Err() error { return nil }

func (o *serverOwner) SendBatch(reqs []wire.Request, done func(int, wire.Reply, error)) {
	if f := o.before; f != nil {
		o.before = nil
		f()
	}
	for i, r := range reqs {
		o.mu.Lock()
		*o.wire = append(*o.wire, r.Cmd.String()+" "+r.Key)
		ok := o.held[r.Token]
		if r.Cmd == wire.CmdRelease || r.Cmd == wire.CmdSemRelease {
			delete(o.held, r.Token)
		}
		o.mu.Unlock()
		if ok {
			done(i, wire.Reply{Status: wire.StatusOK, Lease: r.Lease}, nil)
		} else {
			done(i, wire.Reply{Status: wire.StatusError}, nil)
		}
	}
}

// A lease taken into a round and released (Untrack, then its release on its
// owner, as dflock's Release does) while the round sends the batches of the
// owners before its own: its renewal is not written after its release
// (where the server would refuse it, counted as a refused renewal — "each
// one loses its lease", dflock.ServerSnapshot — although none was lost).
func TestRenewalOfALeaseReleasedDuringItsRoundIsNotSent(t *testing.T) {
	t.Parallel()
	rec := make(batchRecorder, 16)
	s, clk := manualScheduler(t, Config{OnBatch: rec.onBatch})
	var order []string
	held := map[string]bool{"t1": true, "t2": true}
	o1 := &serverOwner{wire: &order, held: held}
	o2 := &serverOwner{wire: &order, held: held}
	var c Counters
	const ttl = 10 * time.Second // interval 5 s (first one jittered up to 0.5 s earlier), early 1.25 s
	l1 := s.Track(Spec{Key: "k1", Token: "t1", TTL: ttl, Owner: o1, Counters: &c})
	clk.Advance(time.Second)
	l2 := s.Track(Spec{Key: "k2", Token: "t2", TTL: ttl, Owner: o2, Counters: &c}) // due in [5.5 s, 6 s]
	// While the round writes o1's batch, l2 is released by its user.
	o1.before = func() {
		require.True(t, l2.Untrack())
		o2.SendBatch([]wire.Request{releaseRequest(l2)}, func(int, wire.Reply, error) {})
	}
	clk.Advance(4 * time.Second) // l1 due; l2 rides in its round (early)
	s.tick()
	t.Logf("wire order: %q", order)
	require.NoError(t, l1.Err())
	assert.ErrorIs(t, l2.Err(), ErrReleased)
	assert.Equal(t, int64(0), c.Lost.Load(), "no lease was lost")
	rIdx, nIdx := -1, -1
	for i, w := range order {
		switch w {
		case "r k2":
			rIdx = i
		case "n k2":
			nIdx = i
		}
	}
	require.NotEqual(t, -1, rIdx)
	assert.Equal(t, -1, nIdx, "a renewal of k2 was written after its Untrack (release at %d, renewal at %d)", rIdx, nIdx)
	assert.Equal(t, int64(0), c.Refused.Load(), "a released lease's stale renewal is counted as refused")
	// One batch (k1's): k2's was emptied, so never written.
	if b := rec.next(t); b.Refused != 0 || b.Size != 1 {
		t.Errorf("OnBatch reports a refused renewal or another batch: %+v", b)
	}
	assert.Equal(t, int64(1), c.Sent.Load(), "renewals counted as sent")
	assert.Equal(t, int64(1), s.Stats().Batches, "Stats.Batches counts k2's emptied batch, never written")
}

// A round whose only renewals belonged to leases released while it wrote
// another owner's batch (here the release of a lease it declared lost)
// sent no renewal: Stats.Rounds ("wakes that sent at least one renewal")
// counted it, since it was counted when the round picked them (found by
// review).
func TestRoundWhoseRenewalsWereAllDroppedIsNotCounted(t *testing.T) {
	t.Parallel()
	s, clk := manualScheduler(t, Config{})
	var order []string
	held := map[string]bool{"t1": true, "t2": true}
	o1 := &serverOwner{wire: &order, held: held}
	o2 := &serverOwner{wire: &order, held: held}
	const ttl = 10 * time.Second
	l1 := s.Track(Spec{Key: "k1", Token: "t1", TTL: ttl, Owner: o1})
	l2 := s.Track(Spec{Key: "k2", Token: "t2", TTL: ttl, Owner: o2})
	clk.Advance(time.Second)
	// l1 is past its loss deadline (its renewal unanswered, say) and l2
	// due for renewal in the same round, l1 first.
	s.mu.Lock()
	now := s.now()
	l1.deadline.Store(now - 1)
	l1.next = now - 1
	heap.Fix(&s.heap, int(l1.idx))
	l2.renewAt, l2.next = now, now
	heap.Fix(&s.heap, int(l2.idx))
	s.mu.Unlock()
	// While the round writes l1's release on o1, l2 is released by its user.
	o1.before = func() { require.True(t, l2.Untrack()) }
	s.tick()
	t.Logf("wire order: %q", order)
	require.Error(t, l1.Err(), "l1 lost")
	assert.NotContains(t, order, "n k2", "k2's renewal was written")
	st := s.Stats()
	assert.Zero(t, st.Batches, "no renewal batch was written")
	assert.Zero(t, st.Rounds, "a round that sent no renewal is counted")
}
