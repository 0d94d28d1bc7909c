package dflock

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A blocking Lock granted after a wait longer than the lease's life − margin
// (life: the read timeout, shorter than the TTL) but shorter than TTL/4 is
// tracked from the wait's send time without the confirming renewal that
// confirmLateGrant made only after TTL/4: its loss deadline had passed
// before Track, so a lease the server holds is declared lost at once.
// Scaled down: a 2 s read timeout stands for dflockd's 23 s, a 20 s lease
// for a 200 s one, a 3 s wait for a 30 s one.
func TestLongWaitGrantOfALeaseLongerThanTheReadTimeoutIsNotLostAtOnce(t *testing.T) {
	t.Parallel()
	const rt = 2 * time.Second // life 2 s, margin 200 ms: deadline = sent + 1.8 s
	srv := newServer(t, testutil.Config{ReadTimeout: rt})
	holder := newClient(t, []string{srv.Addr()}, WithServerReadTimeout(rt), WithKeepAlive(500*time.Millisecond))
	c := newClient(t, []string{srv.Addr()}, WithServerReadTimeout(rt), WithKeepAlive(500*time.Millisecond))
	ctx := testCtx(t)

	a, err := holder.Lock(ctx, "k")
	require.NoError(t, err)
	go func() {
		time.Sleep(3 * time.Second) // the waiter waits ~3 s: > 1.8 s, < TTL/4 = 5 s
		_ = a.Release(ctx)
	}()
	start := time.Now()
	b, err := c.Lock(ctx, "k", LeaseTTL(20*time.Second))
	require.NoError(t, err)
	t.Logf("granted after %v", time.Since(start))
	select {
	case <-b.Done():
		t.Fatalf("a lease the server holds was declared lost right after its grant: %v (server holds it: %v)", b.Err(), lockHeld(srv, "k"))
	case <-time.After(time.Second):
	}
	require.True(t, lockHeld(srv, "k"))
	require.NoError(t, b.Release(ctx))
}

// A lane lease longer than the servers' read timeout, on a server with
// auto-release off, is lost by the client's clock during a partition
// (rule 3: last confirmed send + read timeout − margin; keepalive rt/2, so
// the pool's health check, two unanswered keepalives, comes later). Its
// best-effort release goes into the partition; the server closes the silent
// connection at its read timeout but, auto-release off, keeps the lease; the
// partition kills the connection and the release fails
// (Stats.ReleaseFailed, documented as "the connection broke, which releases
// the lease on the server anyway" — not on this server). Unlike a lease lost
// with its connection, or one pinning a wait-pool connection, it is never
// sent aside: the lock stays held by nobody until its TTL (an hour) ends.
func TestLaneLeaseLostByClockIsReleasedAsideWhenItsReleaseBreaks(t *testing.T) {
	t.Parallel()
	const rt = 2 * time.Second
	srv := newServer(t, testutil.Config{ReadTimeout: rt, DisableAutoRelease: true})
	px := newProxy(t, srv.Addr())
	c := newClient(t, []string{px.Addr()}, WithServerReadTimeout(rt), WithKeepAlive(rt/2))
	ctx := testCtx(t)

	l, err := c.TryLock(ctx, "k", LeaseTTL(time.Hour))
	require.NoError(t, err)
	px.Blackhole(true)
	select {
	case <-l.Done(): // at 1.8 s: before the server's read timeout
	case <-ctx.Done():
		t.Fatal("not lost")
	}
	require.ErrorIs(t, l.Err(), ErrLockLost)
	require.ErrorContains(t, l.Err(), "no renewal confirmed", "lost by rule 3")
	// The server closes the silent connection, keeping the lease; the
	// partition killed the client's connections.
	require.Eventually(t, func() bool { return srv.Stats().Connections == 0 }, 10*time.Second, 10*time.Millisecond)
	px.ResetAll()
	px.Blackhole(false)
	if !assert.Eventually(t, func() bool { return !lockHeld(srv, "k") }, 3*DefaultReleaseTimeout, 10*time.Millisecond) {
		t.Errorf("the lock the client gave up on is held by nobody (releases failed: %d): %+v", c.renewStats().ReleaseFailed, srv.Stats().Locks)
	}
}

// The largest values every duration option accepts: nothing overflows
// (a lease that is lost at once, a janitor that spins, a panic).
func TestExtremeDurationOptionsHoldRenewAndRelease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, []string{srv.Addr()},
		WithServerReadTimeout(math.MaxInt64), WithKeepAlive(MaxDuration/2),
		WithLeaseTTL(math.MaxInt64), WithDialTimeout(math.MaxInt64), WithMaxConnIdleTime(math.MaxInt64),
		WithRenewRatio(math.Nextafter(1, 0)))
	ctx := testCtx(t)
	l, err := c.TryLock(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, MaxDuration, l.TTL())
	h, err := c.Lock(ctx, "b", LeaseTTL(math.MaxInt64), AcquireTimeout(math.MaxInt64))
	require.NoError(t, err)
	time.Sleep(300 * time.Millisecond)
	require.NoError(t, l.Err())
	require.NoError(t, h.Err())
	require.NoError(t, l.Renew(ctx))
	require.NoError(t, l.Release(ctx))
	require.NoError(t, h.Release(ctx))
}
