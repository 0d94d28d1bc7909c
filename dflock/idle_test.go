package dflock

import (
	"math"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// contend makes n goroutines wait for key (each on a wait-pool connection
// of its own) while it is held, then lets them take it one after another,
// leaving their connections idle.
func contend(t *testing.T, c *Client, srv *testutil.Server, key string, n int) {
	t.Helper()
	ctx := testCtx(t)
	first, err := c.Lock(ctx, key)
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			l, err := c.Lock(ctx, key)
			if err == nil {
				err = l.Release(ctx)
			}
			errs <- err
		})
	}
	// A waiter that failed would leave the count short for good: say why.
	require.Eventually(t, func() bool { return lockWaiters(srv, key) == n || len(errs) > 0 }, testTimeout, 5*time.Millisecond,
		"waiters: %d of %d", lockWaiters(srv, key), n)
	if len(errs) > 0 {
		require.NoError(t, <-errs, "a waiter failed before the key was released")
	}
	require.NoError(t, first.Release(ctx))
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// idleTestKeepAlive is the keepalive, and so the janitor's period, of the
// idle-limit tests: short, so that the janitor sweeps soon, but long enough
// that a ping's reply delayed by a loaded machine (under -race, with 100
// connections pinged per period) does not count as a stall, which breaks
// the connection after two periods without a reply.
const idleTestKeepAlive = 200 * time.Millisecond

func poolStats(t *testing.T, c *Client) Stats {
	t.Helper()
	st, err := c.Stats(testCtx(t))
	require.NoError(t, err)
	return st
}

// Regression (issue 10): after 100 goroutines contended on one key, the 100
// wait-pool connections they used stayed open, and pinged, for good.
func TestIdleConnsFallBackAfterContention(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	// A short keepalive is the janitor's period: the excess is closed
	// within one.
	c := newClient(t, addrsOf(srv), WithKeepAlive(idleTestKeepAlive), WithMaxConnIdleTime(time.Hour))
	const n = 100
	contend(t, c, srv, "k", n)

	if !assert.Eventually(t, func() bool {
		return poolStats(t, c).Servers[0].Pool.IdleClosed >= n-DefaultMaxIdleConnsPerServer
	}, testTimeout, 10*time.Millisecond) {
		t.Fatalf("pool: %+v", c.servers[0].pool.Stats())
	}
	ps := poolStats(t, c).Servers[0].Pool
	assert.Equal(t, DefaultMaxIdleConnsPerServer, ps.IdleConns)
	assert.Zero(t, ps.AcquiredConns)
	assert.Zero(t, ps.Broken, "closing an idle connection is not a break")
	// The server sees the lanes and the idle connections kept, nothing more.
	want := ps.LaneConns + DefaultMaxIdleConnsPerServer
	require.Eventually(t, func() bool { return srv.Stats().Connections == want }, testTimeout, 5*time.Millisecond)
}

func TestIdleConnsClosedAfterMaxConnIdleTime(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv), WithKeepAlive(idleTestKeepAlive), WithMaxConnIdleTime(100*time.Millisecond),
		WithMaxIdleConnsPerServer(MaxConnsPerServer))
	ctx := testCtx(t)
	// A lock granted after waiting holds its connection: never idle.
	held, err := c.Lock(ctx, "held")
	require.NoError(t, err)
	waited := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, "held")
		assert.NoError(t, err)
		waited <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "held") == 1 }, testTimeout, 5*time.Millisecond)
	require.NoError(t, held.Release(ctx))
	pinned := <-waited
	require.NotNil(t, pinned)

	const n = 20
	contend(t, c, srv, "k", n)
	if !assert.Eventually(t, func() bool {
		ps := poolStats(t, c).Servers[0].Pool
		return ps.IdleConns == 0 && ps.IdleClosed >= n
	}, testTimeout, 10*time.Millisecond) {
		t.Fatalf("pool: %+v", c.servers[0].pool.Stats())
	}
	ps := poolStats(t, c).Servers[0].Pool
	assert.Equal(t, 1, ps.PinnedConns)
	want := ps.LaneConns + 1
	require.Eventually(t, func() bool { return srv.Stats().Connections == want }, testTimeout, 5*time.Millisecond)
	require.True(t, lockHeld(srv, "held"))
	require.NoError(t, pinned.Release(ctx))
}

func TestIdleOptionBounds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opt   Option
		arg   string
		bound string
	}{
		{WithMaxIdleConnsPerServer(-1), "max idle conns per server", "between 0 and " + strconv.Itoa(MaxConnsPerServer)},
		{WithMaxIdleConnsPerServer(math.MaxInt), "max idle conns per server", strconv.Itoa(MaxConnsPerServer)},
		{WithMaxConnIdleTime(0), "max conn idle time", "positive"},
		{WithMaxConnIdleTime(-time.Second), "max conn idle time", "positive"},
		{WithMaxConnIdleTime(60), "max conn idle time", "at least 1ms (a bare number is nanoseconds)"},
	} {
		c, err := New(nil, tc.opt)
		require.Nil(t, c)
		require.ErrorIs(t, err, ErrInvalidArgument)
		var ae *ArgError
		require.ErrorAs(t, err, &ae)
		assert.Equal(t, tc.arg, ae.Arg)
		assert.Contains(t, err.Error(), tc.bound)
	}
	// The bounds are valid; a longer idle time is no limit.
	for _, opt := range []Option{WithMaxIdleConnsPerServer(0), WithMaxIdleConnsPerServer(MaxConnsPerServer),
		WithMaxConnIdleTime(time.Millisecond), WithMaxConnIdleTime(time.Duration(math.MaxInt64))} {
		c, err := New(nil, opt)
		require.NoError(t, err)
		require.NoError(t, c.Close())
	}
}

// WithMaxIdleConnsPerServer(0) keeps none, rather than meaning the default.
func TestMaxIdleConnsZeroKeepsNone(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv), WithKeepAlive(idleTestKeepAlive), WithMaxIdleConnsPerServer(0))
	contend(t, c, srv, "k", 8)
	if !assert.Eventually(t, func() bool {
		ps := poolStats(t, c).Servers[0].Pool
		return ps.IdleConns == 0 && ps.IdleClosed >= 8
	}, testTimeout, 10*time.Millisecond) {
		t.Fatalf("pool: %+v", c.servers[0].pool.Stats())
	}
}

// A blocking Lock that takes an idle wait-pool connection the server has
// just closed (a restart, an idle timeout) sends its request on a fresh
// connection instead of failing with ErrServerUnavailable: Acquire looks at
// an idle connection before handing it out, and a close it cannot see yet
// (the reader has not read it, or it came within probeAfter of the last
// reply) fails the first request, which is then sent once more
// (pool.Conn.StaleOnFirstUse).
func TestLockOnAnIdleConnectionTheServerClosedIsSentAgain(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	for i := range 30 {
		contend(t, c, srv, "k", 1) // "k" is hot: the next Lock goes to the wait pool
		require.Positive(t, c.servers[0].pool.Stats().IdleConns)
		srv.DropConnections() // every connection closes; the lock state stays
		// Vary the moment, across the reader's quiet period (2 ms) and
		// the probe's (1 ms).
		time.Sleep(time.Duration(i%6) * 500 * time.Microsecond)
		l, err := c.Lock(ctx, "k")
		require.NoError(t, err, "iteration %d", i)
		require.NoError(t, l.Release(ctx))
	}
}

// The same for Enqueue, whose e is the first request on the connection.
func TestEnqueueOnAnIdleConnectionTheServerClosedIsSentAgain(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	for i := range 30 {
		tk, err := c.Enqueue(ctx, "k")
		require.NoError(t, err, "iteration %d", i)
		l, err := tk.Wait(ctx)
		require.NoError(t, err)
		require.NoError(t, l.Release(ctx)) // the connection goes back idle
		srv.DropConnections()
		time.Sleep(time.Duration(i%6) * 500 * time.Microsecond)
	}
}
