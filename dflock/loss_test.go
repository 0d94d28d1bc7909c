package dflock

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/renew"
	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

func newProxy(t testing.TB, target string) *testutil.Proxy {
	t.Helper()
	p, err := testutil.NewProxy(target)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// lostHook records OnLeaseLost calls.
type lostHook struct {
	mu    sync.Mutex
	infos []LeaseInfo
	errs  []error
	ch    chan LeaseInfo
}

func newLostHook() *lostHook { return &lostHook{ch: make(chan LeaseInfo, 100)} }

func (h *lostHook) hooks() Hooks {
	return Hooks{OnLeaseLost: func(info LeaseInfo, err error) {
		h.mu.Lock()
		h.infos = append(h.infos, info)
		h.errs = append(h.errs, err)
		h.mu.Unlock()
		h.ch <- info
	}}
}

// A lease longer than the server's read timeout ends on a silent network
// when the server, having read nothing for that long, closes the
// connection (and hands the lock on), not when its TTL runs out: the client
// declares it lost before that. Client and server share one clock, moved to
// just before the server's read timeout closes the connection.
func TestLossIsReportedBeforeTheServersReadTimeoutForALongLease(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Clock: clk}) // read timeout 23 s, as dflockd's default
	px := newProxy(t, srv.Addr())
	c := newClient(t, []string{px.Addr()}, withClock(clk)) // declares 23 s (the default)
	ctx := testCtx(t)

	sent := clk.Now() // the server last reads anything at the acquire
	l, err := c.Lock(ctx, "bh", LeaseTTL(time.Minute))
	require.NoError(t, err)
	px.Blackhole(true)

	clk.Advance(DefaultServerReadTimeout - time.Millisecond)
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatalf("the lease was not reported lost by %v after the request; the server closes the connection at %v",
			clk.Now().Sub(sent), DefaultServerReadTimeout)
	}
	assert.True(t, lockHeld(srv, "bh"), "the server had already dropped the lease")
	require.ErrorIs(t, l.Err(), ErrLockLost)
	assert.ErrorContains(t, l.Err(), "server read timeout 23s")
}

// When the network goes silent, the client declares the lease lost by its
// own clock — before the server-side lease can have ended. Client and
// server share one clock, moved to just before the server's lease ends:
// the loss must have been declared by then.
func TestLossIsReportedBeforeServerLeaseEndsWhenNetworkBlackholes(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Clock: clk})
	px := newProxy(t, srv.Addr())
	hook := newLostHook()
	c, err := New([]string{px.Addr()}, WithHooks(hook.hooks()), withClock(clk))
	require.NoError(t, err)
	defer c.Close()
	ctx := testCtx(t)

	const ttl = 5 * time.Second // safety margin 500 ms
	// The clock stands still until the Advance below, so the server's
	// lease starts at sent, and so does the client's (a send time later
	// than the scheduler's clock counts as its now).
	sent := clk.Now()
	l, err := c.Lock(ctx, "bh", LeaseTTL(ttl))
	require.NoError(t, err)
	lctx := l.Context()
	px.Blackhole(true)

	// The renewal due at half the TTL goes into the blackhole; the server's
	// lease (and its 23 s read timeout) still has a millisecond to run.
	clk.Advance(ttl - time.Millisecond)
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatalf("the lease was not reported lost by %v after the request; the server lease lasts %v", clk.Now().Sub(sent), ttl)
	}
	assert.True(t, lockHeld(srv, "bh"), "the server had already dropped the lease")
	require.ErrorIs(t, l.Err(), ErrLockLost)
	assert.ErrorContains(t, l.Err(), "no renewal confirmed within the lease's life")
	// Done is closed only after the Context is cancelled.
	require.Error(t, lctx.Err(), "Done closed before the lease's Context was cancelled")
	assert.ErrorIs(t, context.Cause(lctx), ErrLockLost)
	select {
	case info := <-hook.ch:
		assert.Equal(t, "bh", info.Key)
		assert.Equal(t, px.Addr(), info.Server)
		assert.Equal(t, ttl, info.TTL)
	case <-ctx.Done():
		t.Fatal("OnLeaseLost was not called")
	}
	err = l.Release(ctx)
	assert.ErrorIs(t, err, ErrLockLost, "Release of a lost lease reports the loss")

	px.Blackhole(false)
	px.ResetAll()
	require.NoError(t, c.Close())
}

// A server that stops takes its leases with it — and only its leases; after
// it restarts the same Client acquires there again.
func TestLossOnServerStopAffectsOnlyThatServer(t *testing.T) {
	t.Parallel()
	a, b := newServer(t, testutil.Config{}), newServer(t, testutil.Config{})
	hook := newLostHook()
	c := newClient(t, addrsOf(a, b), WithHooks(hook.hooks()))
	other := newClient(t, addrsOf(a, b))
	ctx := testCtx(t)

	keysOn := func(addr string, n int) []string {
		var out []string
		for i := 0; len(out) < n; i++ {
			if k := fmt.Sprintf("stop:%d", i); c.ServerFor(k) == addr {
				out = append(out, k)
			}
		}
		return out
	}
	aKeys, bKeys := keysOn(a.Addr(), 5), keysOn(b.Addr(), 5)
	var aLocks, bLocks []*Lock
	for _, k := range aKeys[:4] {
		l, err := c.Lock(ctx, k)
		require.NoError(t, err)
		aLocks = append(aLocks, l)
	}
	for _, k := range bKeys {
		l, err := c.Lock(ctx, k)
		require.NoError(t, err)
		bLocks = append(bLocks, l)
	}
	// One lease on A granted after waiting: it pins a wait-pool connection.
	blocker, err := other.Lock(ctx, aKeys[4])
	require.NoError(t, err)
	got := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, aKeys[4])
		assert.NoError(t, err)
		got <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(a, aKeys[4]) == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, blocker.Release(ctx))
	pinned := <-got
	require.NotNil(t, pinned)
	aLocks = append(aLocks, pinned)
	require.Equal(t, 1, c.servers[0].pool.Stats().PinnedConns)

	require.NoError(t, a.Stop())
	for _, l := range aLocks {
		select {
		case <-l.Done():
			assert.ErrorIs(t, l.Err(), ErrLockLost)
			// Nested errors read once-prefixed ("dflock: lock lost: key
			// ...: owning connection failed: server ...: ..."), however
			// many layers wrapped them.
			assert.Equal(t, 1, strings.Count(l.Err().Error(), "dflock: "), l.Err().Error())
			rerr := l.Release(ctx)
			assert.Equal(t, 1, strings.Count(rerr.Error(), "dflock: "), rerr.Error())
		case <-time.After(5 * time.Second):
			t.Fatalf("lease %q on the stopped server was not reported lost", l.Key())
		}
	}
	for _, l := range bLocks {
		assert.NoError(t, l.Err(), "a lease on the healthy server was affected")
		assert.True(t, lockHeld(b, l.Key()))
	}
	for range aLocks {
		select {
		case info := <-hook.ch:
			assert.Equal(t, a.Addr(), info.Server)
		case <-time.After(5 * time.Second):
			t.Fatal("OnLeaseLost was not called for every lost lease")
		}
	}
	require.Eventually(t, func() bool { return c.servers[0].pool.Stats().AcquiredConns == 0 }, 5*time.Second, time.Millisecond,
		"the pinned connection of a lost lease was not given back")

	// The key's server is down: fail fast, never re-route.
	require.Eventually(t, func() bool {
		_, err := c.TryLock(ctx, aKeys[0])
		return errors.Is(err, ErrServerUnavailable)
	}, 5*time.Second, 10*time.Millisecond)
	// Fail fast: a blocking Lock on a key of the server known down returns
	// ErrServerUnavailable, the error the pool keeps for that state,
	// instead of waiting for the server or for its context.
	downErr := c.servers[0].pool.Err()
	require.Error(t, downErr, "server a is known down")
	_, err = c.Lock(ctx, aKeys[0])
	require.ErrorIs(t, err, ErrServerUnavailable)
	assert.NoError(t, ctx.Err(), "a down server's key waited for the context")
	assert.Empty(t, keysHeldOn(b, aKeys), "a key of the stopped server was re-routed")
	// The healthy server still works.
	l, err := c.TryLock(ctx, bKeys[0]+"x")
	if c.ServerFor(bKeys[0]+"x") == b.Addr() {
		require.NoError(t, err)
		require.NoError(t, l.Release(ctx))
	}

	require.NoError(t, a.Restart())
	var back *Lock
	require.Eventually(t, func() bool {
		back, err = c.TryLock(ctx, aKeys[0])
		return err == nil
	}, 15*time.Second, 20*time.Millisecond, "the Client never acquired again after the restart")
	require.NoError(t, back.Release(ctx))
	for _, l := range bLocks {
		require.NoError(t, l.Release(ctx))
	}
}

func keysHeldOn(s *testutil.Server, keys []string) []string {
	var out []string
	for _, k := range keys {
		if lockHeld(s, k) {
			out = append(out, k)
		}
	}
	return out
}

// rawRelease releases a token from a connection of its own, behind the
// Client's back, so that the next renewal is refused.
func rawRelease(t *testing.T, addr, cmd, key, token string) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer nc.Close()
	require.NoError(t, nc.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = fmt.Fprintf(nc, "%s\n%s\n%s\n", cmd, key, token)
	require.NoError(t, err)
	line, err := bufio.NewReader(nc).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ok", strings.TrimSpace(line))
}

// A renewal the server refuses loses the lease: found by the scheduler, or
// at once by an explicit Renew.
func TestLossOnRefusedRenewal(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	clk := testutil.NewManualClock(time.Now().Round(0))
	c := newClient(t, addrsOf(srv), withClock(clk))
	ctx := testCtx(t)

	const ttl = 2 * time.Second
	l, err := c.Lock(ctx, "refused", LeaseTTL(ttl))
	require.NoError(t, err)
	rawRelease(t, srv.Addr(), "r", "refused", l.Token())
	// The scheduler's renewal falls due (the loss deadline, 1.8 s, does not).
	clk.Advance(ttl / 2)
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("a refused renewal did not lose the lease")
	}
	require.ErrorIs(t, l.Err(), ErrLockLost)
	assert.ErrorIs(t, l.Err(), renew.ErrRefused)
	assert.ErrorIs(t, l.Release(ctx), ErrLockLost)

	s, err := c.Semaphore(ctx, "refused-sem", 2, LeaseTTL(30*time.Second))
	require.NoError(t, err)
	rawRelease(t, srv.Addr(), "sr", "refused-sem", s.Token())
	err = s.Renew(ctx)
	require.ErrorIs(t, err, ErrLockLost)
	assert.ErrorIs(t, s.Err(), ErrLockLost)
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after a refused Renew")
	}
}

// WithLock's function sees its context cancelled when the lease is lost, and
// WithLock reports the loss.
func TestWithLockCancelsFunctionOnLoss(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	clk := testutil.NewManualClock(time.Now().Round(0))
	c, err := New([]string{px.Addr()}, withClock(clk))
	require.NoError(t, err)
	defer c.Close()
	ctx := testCtx(t)

	const ttl = 2 * time.Second
	err = c.WithLock(ctx, "wl-loss", func(fctx context.Context) error {
		px.Blackhole(true)
		// The renewal goes into the blackhole and the loss deadline passes.
		clk.Advance(ttl)
		select {
		case <-fctx.Done():
			assert.ErrorIs(t, context.Cause(fctx), ErrLockLost)
			return fctx.Err()
		case <-ctx.Done():
			return fmt.Errorf("fn's context was not cancelled")
		}
	}, LeaseTTL(ttl))
	require.ErrorIs(t, err, ErrLockLost)
	require.ErrorIs(t, err, context.Canceled)
	px.Blackhole(false)
	px.ResetAll()
}

// A lease lost with its owning connection is released on another
// connection, best effort: a server running with auto-release off keeps a
// closed connection's leases, held by nobody until their TTL ends, although
// the client has declared them lost (it did, before this release).
func TestLeaseLostWithItsConnectionIsReleasedWithoutAutoRelease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	s, err := c.Semaphore(ctx, "s", 2)
	require.NoError(t, err)

	srv.DropConnections() // the owning lane connection breaks; the server stays up
	for _, done := range []<-chan struct{}{l.Done(), s.Done()} {
		select {
		case <-done:
		case <-ctx.Done():
			t.Fatal("no loss reported")
		}
	}
	require.ErrorIs(t, l.Err(), ErrLockLost)
	require.ErrorIs(t, s.Err(), ErrLockLost)
	require.Eventually(t, func() bool { return heldTotal(srv) == 0 }, 5*time.Second, time.Millisecond,
		"leases the client declared lost are still held on the server: %+v", srv.Stats())
	l2, err := c.TryLock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l2.Release(ctx))
}

// The release of a lease lost with its connection is retried while the
// server cannot be reached for a moment (here: the fault that broke the
// connection also refuses the next dials), not dropped after one attempt.
func TestReleaseOfALeaseLostWithItsConnectionIsRetried(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	var refuse atomic.Bool
	var refused atomic.Int64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if refuse.Load() {
			refused.Add(1)
			return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	// One lane connection, up before dials are refused: a second lane's
	// dial begun before the refusal could connect after the drop and
	// carry the release early (the lock then gone before the check below).
	c := newClient(t, addrsOf(srv), WithDialer(dial), WithLaneConns(1))
	ctx := testCtx(t)
	l, err := c.TryLock(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, 1, c.Snapshot().Servers[0].Conns.Lane)

	refuse.Store(true)
	srv.DropConnections()
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("no loss reported")
	}
	require.Eventually(t, func() bool { return refused.Load() >= 1 }, 5*time.Second, time.Millisecond,
		"the release was not tried while dials were refused")
	require.True(t, lockHeld(srv, "k"))
	refuse.Store(false)
	require.Eventually(t, func() bool { return !lockHeld(srv, "k") }, DefaultReleaseTimeout, time.Millisecond,
		"the release was not tried again once the server could be reached")
}

// Every release sent aside is tried for DefaultReleaseTimeout from its own
// queueing: the sending goroutine keeps those whose time is not up, also
// when it has spent most of an earlier one's on a server it cannot reach,
// and tries them until the latest of their times. (Driven end to end, the
// order of "the earlier one's time is up" and "the server is back" depends
// on the down server's probe and its random backoff.)
func TestReleasesSentAsideKeepTheirOwnTime(t *testing.T) {
	t.Parallel()
	now := time.Now()
	a := asideRelease{req: wire.ReleaseRequest("a", "ta", false), until: now.Add(-time.Millisecond)}
	b := asideRelease{req: wire.ReleaseRequest("b", "tb", false), until: now.Add(1500 * time.Millisecond)}
	c := asideRelease{req: wire.ReleaseRequest("c", "tc", true), until: now.Add(time.Second)}
	live, until := liveReleases([]asideRelease{a, b, c}, now)
	assert.Equal(t, []asideRelease{b, c}, live, "a's time is up; b and c keep theirs, in order")
	assert.Equal(t, b.until, until)
	live, until = liveReleases([]asideRelease{a}, now)
	assert.Empty(t, live)
	assert.True(t, until.IsZero())
}
