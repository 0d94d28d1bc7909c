package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// pinTheOnlyWaitConn has c (capped at one wait-pool connection) hold
// key on that connection: granted after waiting, the lease pins it, so
// that every further contended acquire of c waits for a connection.
func pinTheOnlyWaitConn(t *testing.T, ctx context.Context, srv *testutil.Server, c, other *Client, key string) *Lock {
	t.Helper()
	h, err := other.Lock(ctx, key)
	require.NoError(t, err)
	got := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, key)
		assert.NoError(t, err)
		got <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, key) == 1 }, testTimeout, time.Millisecond)
	require.NoError(t, h.Release(ctx))
	l := <-got
	require.NotNil(t, l)
	require.NotNil(t, l.h.pinned, "granted on the wait-pool connection")
	require.True(t, c.servers[0].pool.WaitPoolFull())
	return l
}

// awaitWaitForConn waits until c has n acquires on the wait path (waiting
// for a wait-pool connection, or on one) of its one server.
func awaitWaitForConn(t *testing.T, c *Client, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return c.Snapshot().Servers[0].WaitsInFlight == n }, testTimeout, time.Millisecond)
}

// A Lock nested in another, at a cap of one wait-pool connection that the
// outer lock pins, used to wait for that connection — which only its own
// outer lock could free — and never saw its key released: without a
// deadline it deadlocked itself. It now tries the key on the control lane
// while it waits, and gets it there once it is free.
func TestNestedLockAtTheWaitPoolCapIsGrantedWhenItsKeyIsFreed(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{})
	var tr recTracer
	c := newClient(t, addrsOf(srv), WithMaxConnsPerServer(1), WithTracer(&tr))
	other := newClient(t, addrsOf(srv))
	outer := pinTheOnlyWaitConn(t, ctx, srv, c, other, "outer")
	h, err := other.Lock(ctx, "inner")
	require.NoError(t, err)
	tr.take(t)
	contended, lane := c.stats.contended.Load(), c.stats.laneGrants.Load()

	before := lockRequests(srv)
	got := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, "inner") // no deadline but the test's
		assert.NoError(t, err)
		got <- l
	}()
	// The lane try found the key held; the call is not queued on the
	// server: it waits for a connection.
	awaitWaitForConn(t, c, 1)
	require.Greater(t, lockRequests(srv), before)
	assert.Zero(t, lockWaiters(srv, "inner"))
	require.NoError(t, h.Release(ctx))

	inner := <-got
	require.NotNil(t, inner)
	assert.Nil(t, inner.h.pinned, "granted on the control lane")
	assert.Equal(t, lane+1, c.stats.laneGrants.Load())
	assert.Equal(t, contended+1, c.stats.contended.Load(), "counted contended once, however many tries found it held")
	assert.Zero(t, c.Snapshot().Servers[0].WaitsInFlight)
	spans := tr.take(t)
	require.Len(t, spans, 1)
	assert.Equal(t, PathLane, spans[0].res.Path)
	assert.Positive(t, spans[0].res.Waited, "it waited on the wait path")
	require.NoError(t, inner.Release(ctx))
	require.NoError(t, outer.Release(ctx))
	assert.Zero(t, heldTotal(srv))
}

// The same when the one connection is taken by a blocked wait on another
// key, held for the whole test: a Lock of a key released meanwhile used to
// time out on a key free for almost all its time. The blocked wait keeps
// its place on the server.
func TestLockWaitingBehindABlockedWaitAtTheCapSeesItsKeyFreed(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv), WithMaxConnsPerServer(1))
	other := newClient(t, addrsOf(srv))
	_, err := other.Lock(ctx, "leader")
	require.NoError(t, err)
	wctx, wcancel := context.WithCancel(ctx)
	leader := make(chan error, 1)
	go func() { _, err := c.Lock(wctx, "leader"); leader <- err }()
	require.Eventually(t, func() bool { return lockWaiters(srv, "leader") == 1 }, testTimeout, time.Millisecond)

	h, err := other.Lock(ctx, "job")
	require.NoError(t, err)
	got := make(chan error, 1)
	go func() {
		l, err := c.Lock(ctx, "job", AcquireTimeout(testTimeout))
		if err == nil {
			err = l.Release(ctx)
		}
		got <- err
	}()
	awaitWaitForConn(t, c, 2)
	require.NoError(t, h.Release(ctx))
	require.NoError(t, <-got)
	assert.Equal(t, 1, lockWaiters(srv, "leader"), "the blocked wait lost its place")

	wcancel()
	require.ErrorIs(t, <-leader, context.Canceled)
	require.Eventually(t, func() bool { return lockWaiters(srv, "leader") == 0 }, testTimeout, time.Millisecond)
}

// A semaphore whose limit is above the cap, used by more goroutines of
// one Client than the cap: the slots beyond it used to stay unused while
// their callers waited for a connection.
func TestSemaphoreSlotsBeyondTheWaitPoolCapAreUsed(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv), WithMaxConnsPerServer(2))
	other := newClient(t, addrsOf(srv))
	var theirs []*Semaphore
	for range 3 {
		s, err := other.Semaphore(ctx, "s", 3)
		require.NoError(t, err)
		theirs = append(theirs, s)
	}
	got := make(chan *Semaphore, 3)
	for range 3 {
		go func() {
			s, err := c.Semaphore(ctx, "s", 3)
			assert.NoError(t, err)
			got <- s
		}()
	}
	// Two wait on the server, the third for a connection.
	require.Eventually(t, func() bool { return semWaiters(srv, "s") == 2 }, testTimeout, time.Millisecond)
	awaitWaitForConn(t, c, 3)
	for _, s := range theirs {
		require.NoError(t, s.Release(ctx))
	}
	var pinned, onLane int
	for range 3 {
		s := <-got
		require.NotNil(t, s)
		if s.h.pinned != nil {
			pinned++
		} else {
			onLane++
		}
		defer func() { assert.NoError(t, s.Release(ctx)) }()
	}
	assert.Equal(t, 3, semHolders(srv, "s"))
	assert.Equal(t, 2, pinned)
	assert.Equal(t, 1, onLane)
}

// The lane retries of a caller waiting for a connection do not overtake
// the waiters queued on the server: a timeout-0 try is granted only while
// nobody is queued for the key.
func TestLaneRetriesAtTheCapDoNotOvertakeQueuedWaiters(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv), WithMaxConnsPerServer(1))
	other := newClient(t, addrsOf(srv))
	queued := newClient(t, addrsOf(srv))
	outer := pinTheOnlyWaitConn(t, ctx, srv, c, other, "outer")
	defer func() { assert.NoError(t, outer.Release(ctx)) }()

	h, err := other.Lock(ctx, "k")
	require.NoError(t, err)
	first := make(chan *Lock, 1)
	go func() {
		l, err := queued.Lock(ctx, "k")
		assert.NoError(t, err)
		first <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "k") == 1 }, testTimeout, time.Millisecond)

	second := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, "k")
		assert.NoError(t, err)
		second <- l
	}()
	awaitWaitForConn(t, c, 1)
	require.NoError(t, h.Release(ctx))
	l1 := <-first

	// c retries while the queued waiter holds the key, and is refused.
	awaitRequests(t, ctx, srv, "l", lockRequests(srv)+1)
	select {
	case <-second:
		t.Fatal("the lane retry was granted a key held by the waiter queued before it")
	default:
	}
	require.NoError(t, l1.Release(ctx))
	l2 := <-second
	require.NotNil(t, l2)
	require.NoError(t, l2.Release(ctx))
}

// A lane retry whose grant is still on its way when the caller gives up
// is released, not left held by nobody (the server here keeps a grant to
// a closed connection: auto-release off).
func TestLaneRetryGrantedAfterTheCallerGaveUpIsReleased(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	px := newProxy(t, srv.Addr())
	other := newClient(t, addrsOf(srv))
	c := newClient(t, []string{px.Addr()}, WithMaxConnsPerServer(1))
	outer := pinTheOnlyWaitConn(t, ctx, srv, c, other, "outer")
	defer func() { assert.NoError(t, outer.Release(ctx)) }()

	h, err := other.Lock(ctx, "k")
	require.NoError(t, err)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		l, err := c.Lock(cctx, "k")
		if err == nil {
			_ = l.Release(ctx)
		}
		errc <- err
	}()
	awaitWaitForConn(t, c, 1)
	// The next retry's grant takes half a second to come back.
	px.SetLatency(500 * time.Millisecond)
	require.NoError(t, h.Release(ctx))
	require.Eventually(t, func() bool { return lockHeld(srv, "k") }, testTimeout, time.Millisecond, "no retry was granted")
	cancel()
	err = <-errc
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, err, ErrNotAcquired)
	assert.Eventually(t, func() bool { return !lockHeld(srv, "k") }, testTimeout, 5*time.Millisecond,
		"the late grant is held by nobody")
	px.SetLatency(0)
	assert.Equal(t, 1, c.Snapshot().Held, "only the outer lock is held")
}

// A key found held a moment ago goes straight to the wait pool, but not
// while a new wait-pool connection is paced after a refused dial (a
// server at its connection cap) and none is idle: the key may be free,
// and the lane grants it at once, while the wait pool's next dial may be
// up to 2 s away. It used to wait for that dial (with no deadline to
// route it to the lane first), and with the lane tries of a waiting
// caller still for the first of them.
func TestHotKeyIsTriedOnTheLaneFirstWhileWaitPoolDialsArePaced(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{MaxConnections: 2})
	var tr recTracer
	c := newClient(t, addrsOf(srv), WithLaneConns(1), WithTracer(&tr))
	c.servers[0].hot.ttl = time.Hour // however slow the machine
	other := newClient(t, addrsOf(srv), WithLaneConns(1))

	h, err := other.Lock(ctx, "k")
	require.NoError(t, err)
	// Found held on the lane (hot from now on), then refused a wait-pool
	// connection: the server's two are the lanes.
	_, err = c.Lock(ctx, "k", AcquireTimeout(testTimeout))
	require.ErrorIs(t, err, ErrServerUnavailable)
	require.True(t, c.servers[0].pool.DialsPaced())
	require.True(t, c.servers[0].hot.contains(hotKey{key: "k"}, time.Now))
	require.NoError(t, h.Release(ctx))
	tr.take(t)

	l, err := c.Lock(ctx, "k") // no AcquireTimeout, a distant deadline
	require.NoError(t, err)
	defer func() { assert.NoError(t, l.Release(ctx)) }()
	spans := tr.take(t)
	require.Len(t, spans, 1)
	assert.Equal(t, PathLane, spans[0].res.Path)
	assert.Zero(t, spans[0].res.Waited, "it waited on the wait path first")
}
