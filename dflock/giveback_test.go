package dflock

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Enqueue is not a blocking wait: its `e` is answered at once. A caller
// whose ctx ends while the answer (`acquired <token>`) is on its way must
// not leave the lock held by nobody on a server with auto-release off (the
// package doc's one exception covers only a blocking wait).
func TestEnqueueCancelledWhileAcquiredIsOnItsWayLeavesNoGrant(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	px := newProxy(t, srv.Addr())
	c := newClient(t, []string{px.Addr()})
	ctx := testCtx(t)
	// Dial a wait-pool connection first, so the latency only delays `e`.
	tk, err := c.Enqueue(ctx, "warm")
	require.NoError(t, err)
	require.NoError(t, tk.Cancel())

	px.SetLatency(200 * time.Millisecond)
	ectx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Enqueue(ectx, "k")
		errc <- err
	}()
	// The server has granted "k" (`e` → acquired); the answer is in the proxy.
	require.Eventually(t, func() bool { return lockHeld(srv, "k") }, 5*time.Second, time.Millisecond)
	cancel()
	require.ErrorIs(t, <-errc, ErrNotAcquired)
	px.SetLatency(0)
	assert.Eventually(t, func() bool { return !lockHeld(srv, "k") }, 2*DefaultReleaseTimeout, 5*time.Millisecond,
		"the grant to the cancelled Enqueue is held by nobody: %+v", srv.Stats())
}

// writeWatchConn signals seen (once) when the client writes a request
// starting with prefix.
type writeWatchConn struct {
	net.Conn
	prefix []byte
	seen   chan struct{}
	once   *sync.Once
}

func (w writeWatchConn) Write(p []byte) (int, error) {
	if bytes.Contains(p, w.prefix) {
		w.once.Do(func() { close(w.seen) })
	}
	return w.Conn.Write(p)
}

// A grant read at the end of a long wait is confirmed by a renewal; if the
// caller gives up during it, the token is known and the grant is released
// aside. When it is Close that ends the wait, that release is queued after
// Close has begun, and must still be sent (it once was dropped, leaving the
// lock held by nobody until its TTL on a server with auto-release off).
func TestGrantConfirmedDuringCloseIsReleasedWithoutAutoRelease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	px := newProxy(t, srv.Addr())
	holder := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	renewSent := make(chan struct{})
	var once sync.Once
	var d net.Dialer
	c, err := New([]string{px.Addr()}, WithDialer(func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return writeWatchConn{Conn: nc, prefix: []byte("n\nk\n"), seen: renewSent, once: &once}, nil
	}))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })

	hl, err := holder.Lock(ctx, "k")
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Lock(ctx, "k", LeaseTTL(8*time.Second))
		errc <- err
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "k") == 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(2100 * time.Millisecond) // a long wait: > TTL/4, so the grant is confirmed by a renewal
	px.SetLatency(300 * time.Millisecond)
	require.NoError(t, hl.Release(ctx)) // granted to c's waiter
	select {
	case <-renewSent:
	case <-ctx.Done():
		t.Fatal("no confirming renewal")
	}
	require.NoError(t, c.Close())
	require.ErrorIs(t, <-errc, ErrClosed)
	px.SetLatency(0)
	assert.False(t, lockHeld(srv, "k"), "the grant c read during Close is held by nobody: %+v", srv.Stats())
}

// A Wait whose ctx is already cancelled finds the ticket's place granted on
// the server. Nothing is on its way, so the place is tried (`w k 0`) and the
// grant released, as for a deadline that has passed; closing the
// connection instead (as it once did) leaves the grant held by nobody until
// its lease runs out on a server with auto-release off. The same path
// serves a Wait cancelled (or stopped by Cancel) before its `w` was sent.
func TestTicketWaitWithCancelledContextReleasesAGrantWithoutAutoRelease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	holder, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	tk := ticketGrantedWhileQueued(t, srv, holder, c)

	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := tk.Wait(cctx)
	require.ErrorIs(t, err, ErrNotAcquired)
	require.ErrorIs(t, err, context.Canceled)
	assert.Eventually(t, func() bool { return heldTotal(srv) == 0 }, 2*DefaultReleaseTimeout, 5*time.Millisecond,
		"the grant to the ticket's place is held by nobody: %+v", srv.Stats())
}

// Close against a partitioned server: a background withdrawal, the release
// of a held lease and the withdrawal of a queued ticket all wait for it, and
// together take DefaultReleaseTimeout, not that much each (it once took
// three times the documented bound).
func TestCloseAgainstABlackholeIsBoundedByOneReleaseTimeout(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	holder := newClient(t, addrsOf(srv))
	c, err := New([]string{px.Addr()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	ctx := testCtx(t)

	_, err = holder.Lock(ctx, "k1")
	require.NoError(t, err)
	_, err = holder.Lock(ctx, "k2")
	require.NoError(t, err)
	l, err := c.Lock(ctx, "mine") // a held lease: Close releases it
	require.NoError(t, err)
	_ = l
	queued, err := c.Enqueue(ctx, "k1") // a queued ticket: Close withdraws it
	require.NoError(t, err)
	require.False(t, queued.Acquired())
	late, err := c.Enqueue(ctx, "k2") // its Wait's deadline has passed: withdrawn in the background
	require.NoError(t, err)
	require.False(t, late.Acquired())

	px.Blackhole(true)
	defer px.Blackhole(false)
	past, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	_, err = late.Wait(past)
	require.ErrorIs(t, err, ErrNotAcquired)

	start := time.Now()
	require.NoError(t, c.Close())
	took := time.Since(start)
	t.Logf("Close took %v", took)
	assert.Less(t, took, DefaultReleaseTimeout+time.Second, "Close against a partitioned server")
}

// A lease lost with its connection is released aside (auto-release off).
// A program that reacts to the loss by shutting down — Close right after
// Done — must not have that release dropped while the server is reachable.
func TestLossThenCloseStillReleasesAsideWithoutAutoRelease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	px := newProxy(t, srv.Addr())
	c, err := New([]string{px.Addr()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	px.SetLatency(20 * time.Millisecond) // the lane's re-dial takes a few round trips
	px.ResetAll()
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("no loss")
	}
	require.ErrorIs(t, l.Err(), ErrLockLost)
	require.NoError(t, c.Close())
	assert.False(t, lockHeld(srv, "k"), "the lost lease is held by nobody after Close: %+v", srv.Stats())
}

// breakOnWriteConn breaks the connection (closes it, and fails the write)
// the first time the client writes a request containing prefix while
// armed: a reset that comes just as that request is sent.
type breakOnWriteConn struct {
	net.Conn
	prefix []byte
	armed  *atomic.Bool
}

func (b breakOnWriteConn) Write(p []byte) (int, error) {
	if bytes.Contains(p, b.prefix) && b.armed.CompareAndSwap(true, false) {
		_ = b.Conn.Close()
		return 0, syscall.ECONNRESET
	}
	return b.Conn.Write(p)
}

// breakingDialer dials connections that break (breakOnWriteConn) the first
// time a request containing prefix is written after armed is set.
func breakingDialer(prefix string, armed *atomic.Bool) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return breakOnWriteConn{Conn: nc, prefix: []byte(prefix), armed: armed}, nil
	}
}

// A control-lane grant whose caller gave up while it was on its way is
// released on the same connection; if that connection breaks as the
// release is written, the release goes aside (pool.Config.OnReleaseLost):
// closing the connection releases nothing on a server with auto-release
// off.
func TestAbandonedLaneGrantWhoseReleaseBreaksIsReleasedAside(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	px := newProxy(t, srv.Addr())
	var armed atomic.Bool
	c := newClient(t, []string{px.Addr()}, WithDialer(breakingDialer("r\nk\n", &armed)))
	ctx := testCtx(t)
	l, err := c.TryLock(ctx, "warm") // the lane is up
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))

	armed.Store(true)
	px.SetLatency(200 * time.Millisecond)
	tctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := c.TryLock(tctx, "k")
		errc <- err
	}()
	require.Eventually(t, func() bool { return lockHeld(srv, "k") }, 5*time.Second, time.Millisecond)
	cancel() // the grant is on its way back
	require.ErrorIs(t, <-errc, ErrNotAcquired)
	px.SetLatency(0)
	assert.Eventually(t, func() bool { return !lockHeld(srv, "k") }, 2*DefaultReleaseTimeout, 5*time.Millisecond,
		"the abandoned lane grant is held by nobody: %+v", srv.Stats())
}
