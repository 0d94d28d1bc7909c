package renew

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// simulate runs the scheduler as its goroutine would on clk, without the
// goroutine: it advances the clock exactly to each event the scheduler
// asks to wake for (or to the next of grants, whichever is first), calls
// grant for each grant time reached and then runs a round, until until.
// After every round it checks that no renewal was left due: together with
// waking exactly at the heap's top, that means no lease is renewed later
// than its renewal time.
func simulate(t *testing.T, s *Scheduler, clk *testutil.ManualClock, grants []time.Time, grant func(i int), until time.Time) {
	t.Helper()
	for g := 0; ; {
		now := clk.Now()
		s.tick()
		s.mu.Lock()
		for _, l := range s.heap {
			if l.inflight == 0 && l.renewAt <= s.now() {
				s.mu.Unlock()
				t.Fatalf("%v: lease %q left due %v after its renewal time", now, l.key, s.epoch.Add(time.Duration(l.renewAt)))
			}
		}
		next := until
		if len(s.heap) > 0 {
			next = s.epoch.Add(time.Duration(s.heap[0].next))
		}
		s.mu.Unlock()
		if g < len(grants) && !grants[g].After(next) {
			next = grants[g]
		}
		if !next.Before(until) {
			clk.Advance(until.Sub(now))
			return
		}
		clk.Advance(next.Sub(now))
		for g < len(grants) && !grants[g].After(clk.Now()) {
			grant(g)
			g++
		}
	}
}

// Leases granted one by one over a whole renewal interval end up renewed
// together: after a few rounds an owner carries a handful of writes per
// interval, not one per few leases, and every write carries many
// renewals. (Before coalescing, 1,000 leases of TTL 4 s took ~100 writes
// per 2 s interval.)
func TestRenewalsCoalesceIntoFewBatches(t *testing.T) {
	t.Parallel()
	for _, n := range []int{10, 1000} {
		t.Run(fmt.Sprint("leases=", n), func(t *testing.T) {
			t.Parallel()
			s, clk := manualScheduler(t, Config{})
			o := syncOwner(t, clk)
			const ttl = 4 * time.Second // renewed every 2 s
			iv := 2 * time.Second
			start := clk.Now()
			grants := make([]time.Time, n)
			for i := range grants {
				grants[i] = start.Add(time.Duration(i) * iv / time.Duration(n))
			}
			ls := make([]*Lease, n)
			var c Counters
			grant := func(i int) {
				ls[i] = s.Track(Spec{Key: fmt.Sprint("k", i), Token: "t", TTL: ttl, Owner: o, Sent: clk.Now(), Counters: &c})
			}
			settled := start.Add(4 * iv)
			simulate(t, s, clk, grants, grant, settled)
			before, sentBefore := s.Stats(), c.Sent.Load()
			const rounds = 10
			simulate(t, s, clk, nil, nil, settled.Add(rounds*iv))
			st := s.Stats()
			batches, sent := st.Batches-before.Batches, c.Sent.Load()-sentBefore
			t.Logf("%d leases: %d writes carried %d renewals in %d intervals", n, batches, sent, rounds)

			// A lease is renewed at most a quarter of its interval early,
			// so groups closer than that merge and stay merged: at most
			// five writes per interval, whatever n.
			assert.LessOrEqual(t, batches, int64(5*rounds), "writes")
			// Every lease is renewed once per interval, give or take the
			// early renewals.
			assert.GreaterOrEqual(t, sent, int64(n*rounds))
			assert.LessOrEqual(t, sent, int64(n*rounds)*4/3+int64(n))
			if n >= 1000 {
				assert.GreaterOrEqual(t, sent/batches, int64(100), "renewals per write")
			}
			assert.Zero(t, c.Lost.Load())
			for _, l := range ls {
				require.NoError(t, l.Err())
			}
		})
	}
}

// A lease renewed early, in the round of another lease, survives a dead
// connection as long as the documented bound says: it is lost at its last
// confirmed send + TTL − margin, and that send is later than the one it
// would have made on its own, so the early renewal only moved the loss
// later. The owner answers the first round and then nothing.
func TestEarlyRenewalDoesNotShortenSurvival(t *testing.T) {
	t.Parallel()
	s, clk := manualScheduler(t, Config{})
	answered := 0
	o := newOwner(t, func(wire.Request) answer {
		answered++ // SendBatch runs on the test goroutine here
		if answered <= 2 {
			return answer{kind: answerSync}
		}
		return answer{kind: answerNever}
	})
	o.now = clk.Now
	const ttl = 4 * time.Second
	start := clk.Now()
	a := s.Track(Spec{Key: "a", Token: "t", TTL: ttl, Owner: o, Sent: start})
	clk.Advance(300 * time.Millisecond)
	bGrant := clk.Now()
	b := s.Track(Spec{Key: "b", Token: "t", TTL: ttl, Owner: o, Sent: bGrant})
	_, bDue := leaseTimes(s, b)
	_, aDue := leaseTimes(s, a)
	require.True(t, aDue.Before(bDue))
	require.Less(t, bDue.Sub(aDue), bDue.Sub(bGrant)/4, "b may ride in a's round")

	// a's round renews b early, and both are confirmed.
	clk.Advance(aDue.Sub(clk.Now()))
	s.tick()
	bs := o.snapshot()
	require.Len(t, bs, 1)
	require.Len(t, bs[0].reqs, 2, "b rides in a's round")
	bConfirmed, _ := leaseTimes(s, b)
	assert.Equal(t, aDue, bConfirmed)
	assert.True(t, bConfirmed.After(bGrant))

	// The owner now answers nothing. b is held until exactly its last
	// confirmed send + TTL − margin: later than its grant's bound.
	deadline := bConfirmed.Add(ttl - defaultSafetyMargin(ttl))
	assert.True(t, deadline.After(bGrant.Add(ttl-defaultSafetyMargin(ttl))))
	simulate(t, s, clk, nil, nil, deadline.Add(-1))
	require.NoError(t, b.Err(), "lost before last confirmed send + TTL − margin")
	require.Len(t, requestsFor(o.snapshot(), wire.CmdRenew, "b"), 2, "b's next renewal was sent")
	clk.Advance(1)
	s.tick()
	assert.ErrorIs(t, b.Err(), errExpired)
	assert.ErrorIs(t, a.Err(), errExpired)
}
