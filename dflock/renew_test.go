package dflock

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// connCounter is a WithDialer hook that counts dials, open connections and
// Write calls of every connection a Client makes.
type connCounter struct {
	dials, open, writes atomic.Int64

	mu    sync.Mutex
	conns []*countedConn
}

func (cc *connCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	cc.dials.Add(1)
	cc.open.Add(1)
	counted := &countedConn{Conn: c, cc: cc}
	cc.mu.Lock()
	cc.conns = append(cc.conns, counted)
	cc.mu.Unlock()
	return counted, nil
}

// awaitEveryOpenConnWrites waits until every connection still open has
// written at least once more than it had at the call.
func (cc *connCounter) awaitEveryOpenConnWrites(t *testing.T, ctx context.Context) {
	t.Helper()
	cc.mu.Lock()
	conns := slices.Clone(cc.conns)
	cc.mu.Unlock()
	base := make([]int64, len(conns))
	for i, c := range conns {
		base[i] = c.writes.Load()
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for i, c := range conns {
		for !c.closed.Load() && c.writes.Load() == base[i] {
			select {
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("connection %d of %d wrote nothing", i, len(conns))
			}
		}
	}
}

type countedConn struct {
	net.Conn
	cc     *connCounter
	closed atomic.Bool
	writes atomic.Int64
}

func (c *countedConn) Write(b []byte) (int, error) {
	c.cc.writes.Add(1)
	c.writes.Add(1)
	return c.Conn.Write(b)
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.cc.open.Add(-1)
	}
	return c.Conn.Close()
}

// renewAudit keeps, per token, the server's last renewal of it.
type renewAudit struct {
	mu   sync.Mutex
	last map[string]testutil.AuditEvent
	ch   chan struct{} // signalled on every renewal
}

func newRenewAudit() *renewAudit {
	return &renewAudit{last: make(map[string]testutil.AuditEvent), ch: make(chan struct{}, 1)}
}

func (a *renewAudit) record(ev testutil.AuditEvent) {
	if ev.Kind != testutil.AuditRenew {
		return
	}
	a.mu.Lock()
	a.last[ev.Token] = ev
	a.mu.Unlock()
	select {
	case a.ch <- struct{}{}:
	default:
	}
}

// awaitRenewedAt waits until the server has renewed every lease at server
// time at (or later) and returns those renewals.
func (a *renewAudit) awaitRenewedAt(t *testing.T, ctx context.Context, at time.Time, leases ...*Lock) []testutil.AuditEvent {
	t.Helper()
	for {
		a.mu.Lock()
		var evs []testutil.AuditEvent
		for _, l := range leases {
			if ev, ok := a.last[l.Token()]; ok && !ev.Time.Before(at) {
				evs = append(evs, ev)
			}
		}
		a.mu.Unlock()
		if len(evs) == len(leases) {
			return evs
		}
		select {
		case <-a.ch:
		case <-ctx.Done():
			t.Fatalf("the server saw %d of %d leases renewed since %v", len(evs), len(leases), at)
		}
	}
}

// A 2 s lease stays valid over many of its lifetimes, on the lane and on a
// wait-pool connection: one clock, shared by the server and the client's
// scheduler, is advanced by 1.5 s only after the server has seen both
// leases renewed at the time the last step reached, 8 times, so 12 s pass
// for both. Every renewal carries the 2 s TTL (the server would otherwise
// apply its default). The default renew ratio is
// the renew package's subject; time passing for the server is this one's.
func TestRenewalKeepsShortLeaseHeld(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	audit := newRenewAudit()
	srv := newServer(t, testutil.Config{Clock: clk, Audit: audit.record})
	const ttl = 2 * time.Second
	// The client's scheduler runs on the server's clock: each step's
	// renewals are the scheduler's answer to the time that step let pass.
	c := newClient(t, addrsOf(srv), WithRenewRatio(0.05), withClock(clk))
	ctx := testCtx(t)

	lane, err := c.Lock(ctx, "short", LeaseTTL(ttl))
	require.NoError(t, err)
	// A second lease granted after waiting, so it lives on a wait-pool
	// connection: both kinds of owner must be renewed.
	other := newClient(t, addrsOf(srv))
	blocker, err := other.Lock(ctx, "short-wait")
	require.NoError(t, err)
	got := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, "short-wait", LeaseTTL(ttl))
		assert.NoError(t, err)
		got <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "short-wait") == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, blocker.Release(ctx))
	pinned := <-got
	require.NotNil(t, pinned)
	require.NotSame(t, lane.h.owner, pinned.h.owner)

	const steps = 8
	for i := range int64(steps) {
		clk.Advance(ttl * 3 / 4) // less than a lease since the last renewals
		for _, ev := range audit.awaitRenewedAt(t, ctx, clk.Now(), lane, pinned) {
			assert.Equal(t, ttl, ev.Expires.Sub(ev.Time), "a renewal of %q did not carry the TTL", ev.Key)
		}
		// The client's loss deadline moves only when the replies arrive:
		// the next step must not outrun them.
		awaitConfirmed(t, ctx, c, 2*(i+1))
		require.True(t, lockHeld(srv, "short"), "the server lost the lane lease")
		require.True(t, lockHeld(srv, "short-wait"), "the server lost the pinned lease")
		require.NoError(t, lane.Err())
		require.NoError(t, pinned.Err())
	}
	st, err := c.Stats(ctx)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, st.Renew.Renewed, int64(2*steps))
	require.NoError(t, lane.Release(ctx))
	require.NoError(t, pinned.Release(ctx))
}

// A 60 s lease on a server whose read timeout is 2 s stays held while the
// server's clock runs through several read timeouts: the keepalive (not
// the lease ratio) paces the renewals, and idle pool connections survive
// too. The server's clock moves by under half a read timeout only after
// every connection has written again, so a connection that went quiet for
// two steps would be cut.
func TestKeepAliveHoldsLongLeaseUnderShortReadTimeout(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	const readTimeout = 2 * time.Second
	srv := newServer(t, testutil.Config{Clock: clk, ReadTimeout: readTimeout})
	cc := &connCounter{}
	c := newClient(t, addrsOf(srv), WithKeepAlive(100*time.Millisecond), WithDialer(cc.dial))
	ctx := testCtx(t)

	l, err := c.Lock(ctx, "long", LeaseTTL(60*time.Second))
	require.NoError(t, err)
	// Put an idle connection into the wait pool as well.
	tk, err := c.Enqueue(ctx, "idle-conn")
	require.NoError(t, err)
	tl, err := tk.Wait(ctx)
	require.NoError(t, err)
	require.NoError(t, tl.Release(ctx))

	// Both lane connections (the second is dialled in the background) and
	// the idle wait-pool connection.
	// The server counts a connection when it accepts it, possibly before
	// our dialer has returned: wait for both to agree before the baseline.
	const want = DefaultLaneConns + 1
	require.Eventually(t, func() bool { return srv.Stats().Connections == want && cc.dials.Load() == want }, 5*time.Second, time.Millisecond)
	dials := cc.dials.Load()
	const steps = 8 // 8 × 0.9 s: more than three read timeouts
	for range steps {
		cc.awaitEveryOpenConnWrites(t, ctx)
		clk.Advance(readTimeout/2 - 100*time.Millisecond)
	}
	cc.awaitEveryOpenConnWrites(t, ctx)
	require.NoError(t, l.Err())
	require.True(t, lockHeld(srv, "long"))
	ps := c.servers[0].pool.Stats()
	assert.Equal(t, dials, cc.dials.Load(), "a connection was cut by the read timeout and re-dialled: %+v", ps)
	assert.Zero(t, ps.Broken, "a connection broke: %+v", ps)
	assert.Equal(t, want, srv.Stats().Connections)
	require.NoError(t, l.Release(ctx))
}

// Renewals of 1,000 leases on 3 servers go out as batched writes: at most one
// write per lane connection per renewal round, and many renewals per write.
//
// The scheduler runs on a clock of the test's, moved one renewal interval
// (250 ms; the leases last 60 s) at a time once the previous round has
// been answered, so nothing depends on the machine keeping up: every lease
// falls due within the round's window and each round is one write per lane
// connection that carries leases; a client that wrote renewals one by one
// would fail on the renewals-per-write bound.
func TestRenewalsOfManyLeasesAreBatched(t *testing.T) {
	t.Parallel()
	srvs := []*testutil.Server{
		newServer(t, testutil.Config{MaxLocks: -1}),
		newServer(t, testutil.Config{MaxLocks: -1}),
		newServer(t, testutil.Config{MaxLocks: -1}),
	}
	cc := &connCounter{}
	const laneConns = 2
	const ttl, interval = 60 * time.Second, 250 * time.Millisecond
	clk := testutil.NewManualClock(time.Now().Round(0))
	c := newClient(t, addrsOf(srvs...), WithDialer(cc.dial), WithLaneConns(laneConns),
		WithRenewRatio(float64(interval)/float64(ttl)), withClock(clk))
	ctx := testCtx(t)

	const n = 1000
	locks := make([]*Lock, n)
	var wg sync.WaitGroup
	for w := range 50 {
		wg.Go(func() {
			for i := w; i < n; i += 50 {
				l, err := c.Lock(ctx, fmt.Sprintf("batch:%d", i), LeaseTTL(ttl))
				if !assert.NoError(t, err) {
					return
				}
				locks[i] = l
			}
		})
	}
	wg.Wait()
	require.False(t, t.Failed())

	// The scheduler's own counters: c.Stats would add writes of its own.
	before := c.renewStats()
	w0 := cc.writes.Load()
	// Every lease renewed twice. The keepalive (10 s, on the real clock)
	// sends no ping on a lane that carries renewals within it, so every
	// write counted is a renewal batch.
	require.True(t, stepRenewals(t, ctx, c, clk, interval, 2*n, nil))
	w1 := cc.writes.Load()
	after := c.renewStats()

	rounds := after.Rounds - before.Rounds
	sent := after.Sent - before.Sent
	writes := w1 - w0
	t.Logf("renewals sent %d in %d rounds with %d writes (%.0f renewals per write, %.1f writes per round)",
		sent, rounds, writes, float64(sent)/float64(max(writes, 1)), float64(writes)/float64(max(rounds, 1)))
	require.Positive(t, rounds)
	// The two counters are not read atomically: a round counted before
	// `before` may still be writing after w0. Allow that one round.
	assert.LessOrEqual(t, writes, (rounds+1)*laneConns*int64(len(srvs)), "more than one write per lane connection per round")
	assert.GreaterOrEqual(t, sent/max(writes, 1), int64(10), "renewals were not batched")
	for _, s := range srvs {
		assert.Equal(t, laneConns, s.Stats().Connections, "leases must not cost connections beyond the lanes")
	}
	for _, l := range locks {
		require.NoError(t, l.Err())
	}
	assert.Zero(t, after.Lost)
}
