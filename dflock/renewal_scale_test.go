package dflock

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// One renewal of a batch refused: only its lease is lost, every other lease
// of the same write is renewed.
func TestOneRefusedRenewalInABatchLosesOnlyItsLease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	clk := testutil.NewManualClock(time.Now().Round(0))
	var batches atomic.Int64
	var lastBatch atomic.Pointer[RenewalBatchInfo]
	c := newClient(t, addrsOf(srv), withClock(clk), WithLaneConns(1),
		WithHooks(Hooks{OnRenewalBatch: func(b RenewalBatchInfo) { lastBatch.Store(&b); batches.Add(1) }}))
	ctx := testCtx(t)

	const n = 20
	locks := make([]*Lock, n)
	for i := range locks {
		l, err := c.Lock(ctx, fmt.Sprint("batch-", i), LeaseTTL(10*time.Second))
		require.NoError(t, err)
		locks[i] = l
	}
	const bad = 7
	releaseBehindClientsBack(t, srv.Addr(), locks[bad].Key(), locks[bad].Token())

	// One round: every lease is due within its jitter, and a round takes
	// everything due within a quarter of the interval.
	clk.Advance(5 * time.Second)
	require.True(t, waitFor(ctx, 10*time.Second, func() bool { return batches.Load() >= 1 }), "no batch")
	b := lastBatch.Load()
	require.Equal(t, int64(1), batches.Load())
	assert.Equal(t, n, b.Size)
	assert.Equal(t, 1, b.Refused)
	assert.Equal(t, n-1, b.Renewed)

	select {
	case <-locks[bad].Done():
	case <-ctx.Done():
		t.Fatal("the refused lease was not lost")
	}
	assert.ErrorIs(t, locks[bad].Err(), ErrLockLost)
	for i, l := range locks {
		if i != bad {
			assert.NoError(t, l.Err(), "lease %d", i)
			assert.True(t, lockHeld(srv, l.Key()))
		}
	}
	st := c.renewStats()
	assert.Equal(t, int64(1), st.Lost)
	assert.Equal(t, int64(n-1), st.Renewed)
	assert.Equal(t, int64(1), st.Refused)
}

// A stuck OnLeaseLost and a stuck OnRenewalBatch hold up neither the
// renewals of healthy leases nor the loss of another: short leases (1 s,
// declared lost 900 ms after their last confirmed send) on the lane stay
// held for several of their lives while both hooks are blocked.
func TestStuckHooksDoNotDelayRenewalsOfHealthyLeases(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	release := make(chan struct{})
	var lostCalls, batchCalls atomic.Int64
	c, err := New(addrsOf(srv), WithLaneConns(1), withCallbackWait(100*time.Millisecond),
		WithHooks(Hooks{
			OnLeaseLost:    func(LeaseInfo, error) { lostCalls.Add(1); <-release },
			OnRenewalBatch: func(RenewalBatchInfo) { batchCalls.Add(1); <-release },
		}))
	require.NoError(t, err)
	defer func() { close(release); _ = c.Close() }()
	ctx := testCtx(t)

	var locks []*Lock
	for i := range 10 {
		l, err := c.Lock(ctx, fmt.Sprint("slow-", i), LeaseTTL(time.Second))
		require.NoError(t, err)
		locks = append(locks, l)
	}
	releaseBehindClientsBack(t, srv.Addr(), locks[0].Key(), locks[0].Token())
	select {
	case <-locks[0].Done():
	case <-ctx.Done():
		t.Fatal("the refused lease was not lost")
	}
	require.True(t, waitFor(ctx, 5*time.Second, func() bool { return lostCalls.Load()+batchCalls.Load() >= 1 }), "no hook ran")
	// The hooks' goroutine is now stuck; the other leases live on for 3 s (three
	// TTLs), renewed every ~500 ms.
	before := c.renewStats().Renewed
	time.Sleep(3 * time.Second)
	for _, l := range locks[1:] {
		assert.NoError(t, l.Err())
	}
	assert.GreaterOrEqual(t, c.renewStats().Renewed-before, int64(9*4))
}

// Thousands of leases released while rounds renew them, from many
// goroutines: no lease is lost, every renewal sent is accounted for, no
// lease is tracked or held afterwards, and the server applies no renewal
// of a token after its release.
func TestReleasesRacingRenewalRoundsLeaveNothingRenewed(t *testing.T) {
	t.Parallel()
	var (
		amu      sync.Mutex
		released = map[string]bool{}
		late     []string
	)
	srv := newServer(t, testutil.Config{MaxLocks: -1, Audit: func(ev testutil.AuditEvent) {
		amu.Lock()
		defer amu.Unlock()
		switch ev.Kind {
		case testutil.AuditRelease:
			released[ev.Token] = true
		case testutil.AuditRenew:
			if released[ev.Token] {
				late = append(late, ev.Key)
			}
		}
	}})
	c := newClient(t, addrsOf(srv), WithLaneConns(2))
	ctx := testCtx(t)

	const n = 2000
	locks := make([]*Lock, n)
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < n; i += 16 {
				l, err := c.Lock(ctx, fmt.Sprint("race-", i), LeaseTTL(time.Second))
				if !assert.NoError(t, err) {
					return
				}
				locks[i] = l
			}
		})
	}
	wg.Wait()
	require.False(t, t.Failed())
	for w := range 16 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for i := w; i < n; i += 16 {
				time.Sleep(time.Duration(r.IntN(24000)) * time.Microsecond)
				assert.NoError(t, locks[i].Release(ctx), "lease %d", i)
			}
		})
	}
	wg.Wait()
	require.True(t, waitFor(ctx, 10*time.Second, func() bool {
		st := c.renewStats()
		return st.Sent == st.Renewed+st.Refused+st.Unanswered
	}), "renewals unaccounted for: %+v", c.renewStats())
	st := c.renewStats()
	t.Logf("%+v", st)
	assert.Zero(t, st.Lost)
	assert.Zero(t, st.Leases)
	assert.Zero(t, st.Unanswered)
	assert.Zero(t, heldTotal(srv))
	snap := c.Snapshot()
	assert.Zero(t, snap.Servers[0].Losses)
	assert.Equal(t, int64(n), snap.Servers[0].Releases)
	amu.Lock()
	assert.Empty(t, late)
	amu.Unlock()
}

// Leases of very different TTLs — 1 s, 2 s, 60 s and the protocol's
// maximum — share one lane and so its rounds, which renew some of them
// early. Client and server share one clock, moved in small steps only
// while no renewal is in flight. None is lost while the server answers;
// once the network goes silent each is declared lost no earlier than its
// last renewal the server saw + life − margin (life: the TTL, or the 23 s
// read timeout if shorter), and before the server would end it.
func TestMixedTTLsOnOneLaneKeepTheirSurvivalBound(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	type seen struct{ at, expires time.Time }
	var amu sync.Mutex
	last := map[string]seen{}
	expired := 0
	srv := newServer(t, testutil.Config{Clock: clk, Audit: func(ev testutil.AuditEvent) {
		amu.Lock()
		defer amu.Unlock()
		switch ev.Kind {
		case testutil.AuditGrant, testutil.AuditRenew:
			last[ev.Token] = seen{ev.Time, ev.Expires}
		case testutil.AuditExpire, testutil.AuditDisconnect:
			expired++
		}
	}})
	px := newProxy(t, srv.Addr())
	c := newClient(t, []string{px.Addr()}, withClock(clk), WithLaneConns(1))
	ctx := testCtx(t)

	ttls := []time.Duration{time.Second, 2 * time.Second, time.Minute, MaxDuration, time.Second, 2 * time.Second}
	locks := make([]*Lock, len(ttls))
	for i, ttl := range ttls {
		l, err := c.Lock(ctx, fmt.Sprint("mixed-", i), LeaseTTL(ttl))
		require.NoError(t, err)
		locks[i] = l
		clk.Advance(130 * time.Millisecond) // different phases
	}
	settled := func() bool {
		st := c.renewStats()
		return st.Sent == st.Renewed+st.Refused+st.Unanswered
	}
	step := func(d time.Duration) {
		require.True(t, waitFor(ctx, 10*time.Second, settled))
		time.Sleep(200 * time.Microsecond) // let a round the last step woke write
		require.True(t, waitFor(ctx, 10*time.Second, settled))
		clk.Advance(d)
	}
	start := clk.Now()
	for clk.Now().Sub(start) < 30*time.Second {
		step(50 * time.Millisecond)
		for i, l := range locks {
			require.NoError(t, l.Err(), "lease %d (TTL %v) lost at %v", i, ttls[i], clk.Now().Sub(start))
		}
	}
	amu.Lock()
	require.Zero(t, expired)
	amu.Unlock()

	require.True(t, waitFor(ctx, 10*time.Second, settled))
	px.Blackhole(true)
	defer px.Blackhole(false)
	lostAt := make([]time.Time, len(locks))
	silent := clk.Now()
	for clk.Now().Sub(silent) < 25*time.Second {
		time.Sleep(200 * time.Microsecond)
		for i, l := range locks {
			if lostAt[i].IsZero() && l.Err() != nil {
				lostAt[i] = clk.Now()
			}
		}
		clk.Advance(10 * time.Millisecond)
	}
	require.True(t, waitFor(ctx, 5*time.Second, func() bool {
		for _, l := range locks {
			if l.Err() == nil {
				return false
			}
		}
		return true
	}))
	amu.Lock()
	defer amu.Unlock()
	for i, l := range locks {
		life := min(ttls[i], DefaultServerReadTimeout)
		margin := min(max(life/10, 100*time.Millisecond), 2*time.Second)
		s := last[l.Token()]
		bound := s.at.Add(life - margin)
		t.Logf("lease %d TTL %v: last renewal seen %v before the silence, lost %v after it (bound %v)",
			i, ttls[i], silent.Sub(s.at), lostAt[i].Sub(silent), bound.Sub(silent))
		require.False(t, lostAt[i].IsZero(), "lease %d", i)
		assert.False(t, lostAt[i].Before(bound), "lease %d (TTL %v) lost %v before last renewal + life − margin",
			i, ttls[i], bound.Sub(lostAt[i]))
		assert.True(t, lostAt[i].Before(s.at.Add(life)), "lease %d (TTL %v) lost after the server could end it", i, ttls[i])
	}
}
