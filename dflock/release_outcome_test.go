package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/renew"
	"github.com/dflock-sdk/go/testutil"
)

// A Release in progress (its ctx alive: context.Background, as in the
// README's `defer l.Release(context.Background())`) when another goroutine
// calls Close returns ErrClosed ("ends every blocked call"); Close then
// waits for the release's answer, the server answers ok, and a later
// Release reports that outcome (nil), as one first called after Close does
// (it once kept returning ErrClosed).
func TestReleaseOutcomeLaterReleaseAfterCloseInterruptedOne(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	c, err := New([]string{px.Addr()})
	require.NoError(t, err)
	ctx := testCtx(t)
	l, err := c.TryLock(ctx, "k")
	require.NoError(t, err)
	other, err := c.TryLock(ctx, "other")
	require.NoError(t, err)

	px.SetLatency(150 * time.Millisecond)
	res := make(chan error, 1)
	go func() { res <- l.Release(context.Background()) }()
	awaitReleaseSending(t, l.h)
	time.Sleep(20 * time.Millisecond) // the release is written
	require.NoError(t, c.Close())
	t.Logf("Release in progress at Close: %v", <-res)
	require.False(t, lockHeld(srv, "k"))
	require.Equal(t, int64(2), c.Snapshot().Released)
	assert.NoError(t, other.Release(ctx), "first Release after Close of a lock Close released")
	assert.NoError(t, l.Release(ctx), "later Release of a lock whose release the server answered ok")
}

// leases.md: Close's releases, ticket withdrawals and background releases
// are bounded together by one DefaultReleaseTimeout, so an unreachable
// server costs 2 s, "not 2 s per kind of work".
func TestReleaseOutcomeCloseBoundIsOneReleaseTimeout(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	holder := newClient(t, addrsOf(srv))
	c, err := New([]string{px.Addr()})
	require.NoError(t, err)
	ctx := testCtx(t)
	_, err = c.TryLock(ctx, "lane")
	require.NoError(t, err)
	bg, err := c.TryLock(ctx, "bg")
	require.NoError(t, err)
	_ = pinnedSlot(t, srv, c, holder, "pin")
	_, err = holder.Lock(ctx, "q")
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "q")
	require.NoError(t, err)
	require.False(t, tk.Acquired())

	px.Blackhole(true)
	defer px.Blackhole(false)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	_ = bg.Release(rctx) // answered in the background (c.bg)
	cancel()
	d := timed(func() { _ = c.Close() })
	t.Logf("Close took %v", d)
	assert.Less(t, d, DefaultReleaseTimeout+time.Second, "one bound, not one per kind of work")
}

// A Release that finds the lease gone on the server returns ErrLockLost and
// counts a loss, but the lease was ended by Release: Err (and the Context's
// cause) is ErrReleased, as ErrReleased's and Lock.Err's docs say.
func TestReleaseOutcomeErrAfterReleaseFoundLost(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srvClk := testutil.NewManualClock(time.Now().Round(0))
	b := newServer(t, testutil.Config{Clock: srvClk, ReadTimeout: -1})
	cliClk := testutil.NewManualClock(time.Now().Round(0))
	c := newClient(t, []string{b.Addr()}, withClock(cliClk))
	l, err := c.TryLock(ctx, "exp", LeaseTTL(30*time.Second))
	require.NoError(t, err)
	srvClk.Advance(40 * time.Second)
	require.Eventually(t, func() bool { return !lockHeld(b, "exp") }, 5*time.Second, time.Millisecond)
	rerr := l.Release(ctx)
	require.ErrorIs(t, rerr, ErrLockLost)
	require.Equal(t, int64(1), c.Snapshot().Lost)
	assert.ErrorIs(t, l.Err(), ErrReleased, "Err after a Release that found the lock lost")
	assert.ErrorIs(t, context.Cause(l.Context()), ErrReleased)
}

// Two concurrent Releases: the first with a short ctx, the second with a
// ctx that lasts (context.Background). The server answers ok soon after the
// first ctx ends. The second call waits for that answer while its own ctx
// lasts and returns nil — not the first caller's deadline (as it once did,
// and every later Release with it).
func TestReleaseOutcomeConcurrentReleaseGetsAnotherCallersCtxError(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newServer(t, testutil.Config{})
	pb := newProxy(t, b.Addr())
	c := newClient(t, []string{pb.Addr()})
	l, err := c.TryLock(ctx, "k")
	require.NoError(t, err)

	pb.SetLatency(150 * time.Millisecond) // answer after ~300 ms
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	first := make(chan error, 1)
	go func() { first <- l.Release(short) }()
	awaitReleaseSending(t, l.h)
	second := make(chan error, 1)
	go func() { second <- l.Release(context.Background()) }()
	require.ErrorIs(t, <-first, context.DeadlineExceeded)
	err = <-second
	require.Eventually(t, func() bool { return !lockHeld(b, "k") }, 5*time.Second, time.Millisecond)
	assert.NotErrorIs(t, err, context.DeadlineExceeded, "a Release whose own ctx never ended reports another caller's deadline")
	assert.NoError(t, err, "the release was clean and this caller's ctx lasted")
}

// awaitReleaseSending waits until a Release of h is under way (sending, or
// waiting for the server's answer).
func awaitReleaseSending(t *testing.T, h *held) {
	t.Helper()
	require.Eventually(t, func() bool {
		h.relMu.Lock()
		defer h.relMu.Unlock()
		return h.relState == relSending
	}, 5*time.Second, time.Millisecond)
}

// A Release that reaches a paused server after the read deadline it was
// waiting under is answered `error` and the connection closed: the release
// was not applied. On a server with auto-release off the lock then stays
// held by nobody until its lease runs out; Release reports the lease lost
// ("the server no longer held the lease") and sent no release aside, as it
// does when the owning connection breaks (found by review). Now it sends
// the release again, and its loss error says that the release may not have
// been applied (review shut: it said only "no longer held").
func TestReleaseTimedOutByAPausedServerIsNotLeftHeld(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true, ReadTimeout: time.Second})
	c := newClient(t, addrsOf(srv), WithServerReadTimeout(time.Second), WithKeepAlive(500*time.Millisecond),
		WithLeaseTTL(30*time.Second))
	ctx := testCtx(t)
	l, err := c.TryLock(ctx, "paused-release")
	require.NoError(t, err)
	err = pastReadDeadlineInAStall(t, srv, func() error { return l.Release(ctx) })
	t.Logf("release: %v", err)
	require.ErrorIs(t, err, ErrLockLost)
	require.ErrorIs(t, err, renew.ErrMaybeUnapplied)
	// Its text says so too, not only the reply (review rv7).
	require.ErrorContains(t, err, `server refused: error: lock lost: the server no longer held the lease, or did not apply the release`)

	other := newClient(t, addrsOf(srv))
	require.Eventually(t, func() bool {
		l2, err := other.TryLock(ctx, "paused-release")
		if err == nil {
			_ = l2.Release(ctx)
			return true
		}
		return false
	}, 5*time.Second, 50*time.Millisecond, "the lock stays held by nobody (held by conn %d) until its 30 s lease runs out", holderOf(srv, "paused-release"))
}

// pastReadDeadlineInAStall runs op (a request on a connection the server
// answered about now, with a 1 s read timeout) while the server is stalled,
// and resumes it past that read deadline and well before the client's own
// patience (2×KeepAlive, at least 1 s): the server then answers the request
// the bare error, unapplied, and closes the connection. op's error.
func pastReadDeadlineInAStall(t *testing.T, srv *testutil.Server, op func() error) error {
	t.Helper()
	time.Sleep(300 * time.Millisecond) // the server's read deadline: ~1 s after its reply
	resume := srv.Stall(0)
	t.Cleanup(resume)
	errc := make(chan error, 1)
	go func() { errc <- op() }()
	time.Sleep(900 * time.Millisecond) // past the deadline, before the client gives up
	resume()
	return <-errc
}

func holderOf(srv *testutil.Server, key string) uint64 {
	for _, l := range srv.Stats().Locks {
		if l.Key == key {
			return l.OwnerConnID
		}
	}
	return 0
}

// Close's own releases (releaseAll) meet the same paused server: answered
// `error` and not applied, they were not sent again, and the lock stayed
// held by nobody until its TTL (found by review).
func TestCloseReleaseTimedOutByAPausedServerIsNotLeftHeld(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true, ReadTimeout: time.Second})
	c := newClient(t, addrsOf(srv), WithServerReadTimeout(time.Second), WithKeepAlive(500*time.Millisecond),
		WithLeaseTTL(30*time.Second))
	ctx := testCtx(t)
	_, err := c.TryLock(ctx, "paused-close")
	require.NoError(t, err)
	time.Sleep(300 * time.Millisecond) // the server's read deadline: ~1 s after its reply
	resume := srv.Stall(0)
	t.Cleanup(resume)
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	time.Sleep(900 * time.Millisecond) // past the deadline, before the client's 2×keepalive
	resume()
	t.Logf("close: %v", <-closed)

	other := newClient(t, addrsOf(srv))
	require.Eventually(t, func() bool {
		l2, err := other.TryLock(ctx, "paused-close")
		if err == nil {
			_ = l2.Release(ctx)
			return true
		}
		return false
	}, 5*time.Second, 50*time.Millisecond, "the lock stays held by nobody (held by conn %d) until its 30 s lease runs out", holderOf(srv, "paused-close"))
}

// A lane try whose caller gave up before the grant arrived is given back by
// the pool (pool conn.releaseAbandoned), on the lane. A paused server
// answers that release the bare `error` without applying it, then closes
// the lane: with auto-release off the lock is held by nobody until its TTL.
// It goes aside now, as tryLane's own give-back does (found by review).
func TestAbandonedLaneGrantReleaseTimedOutByAPausedServerIsNotLeftHeld(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true, ReadTimeout: time.Second})
	px := newProxy(t, srv.Addr())
	c := newClient(t, []string{px.Addr()}, WithLeaseTTL(30*time.Second))
	ctx := testCtx(t)
	// Warm the lane up.
	l, err := c.TryLock(ctx, "warm")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))

	px.SetLatency(300 * time.Millisecond)
	start := time.Now()
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = c.TryLock(tctx, "abandoned")
	cancel()
	require.Error(t, err) // gave up; the grant is on its way (server reads at ~300 ms)
	// The grant reaches the client at ~600 ms, its release the server at
	// ~900 ms: stall the server from 800 ms to 1500 ms, past its read
	// deadline (~1300 ms).
	time.Sleep(time.Until(start.Add(800 * time.Millisecond)))
	resume := srv.Stall(0)
	t.Cleanup(resume)
	time.Sleep(time.Until(start.Add(1500 * time.Millisecond)))
	resume()
	px.SetLatency(0)

	other := newClient(t, addrsOf(srv))
	require.Eventually(t, func() bool {
		l2, err := other.TryLock(ctx, "abandoned")
		if err == nil {
			_ = l2.Release(ctx)
			return true
		}
		return false
	}, 5*time.Second, 50*time.Millisecond, "the lock stays held by nobody (held by conn %d) until its 30 s lease runs out", holderOf(srv, "abandoned"))
}
