package dflock

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Release after Close has finished, with a ctx that has already ended
// (a deferred Release in a shutting-down goroutine): Close released the
// lock, so Release reports nil, every time (with both c.closed and ctx
// ready, a plain select once made it a coin toss).
func TestReleaseAfterCloseWithEndedCtxIsDeterministic(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	var locks []*Lock
	for i := range 64 {
		l, err := c.TryLock(ctx, fmt.Sprintf("k%d", i))
		require.NoError(t, err)
		locks = append(locks, l)
	}
	require.NoError(t, c.Close())
	ended, cancel := context.WithCancel(ctx)
	cancel()
	var errs []error
	for _, l := range locks {
		if err := l.Release(ended); err != nil {
			errs = append(errs, err)
		}
	}
	assert.Empty(t, errs, "Release after Close of a lock Close released: %d of %d calls failed", len(errs), len(locks))
}

// A Release whose ctx ends before the (slow) answer, followed by Close:
// Close waits for the answer (until its deadline) and, if pool.Close still
// cuts it, the lease counts as released, not lost, and no OnLeaseLost is
// called: the user released the lock.
func TestReleaseCutByCloseIsNotALoss(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	lost := newLostHook()
	c, err := New([]string{px.Addr()}, WithHooks(lost.hooks()))
	require.NoError(t, err)
	ctx := testCtx(t)
	l, err := c.TryLock(ctx, "k")
	require.NoError(t, err)

	px.SetLatency(300 * time.Millisecond)
	rctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	rerr := l.Release(rctx)
	cancel()
	require.ErrorIs(t, rerr, context.DeadlineExceeded)
	assert.NotErrorIs(t, rerr, ErrLockLost)
	require.NoError(t, c.Close())

	s := c.Snapshot()
	assert.Equal(t, int64(0), s.Lost, "a lock the user released, cut by Close, counted as lost")
	assert.Equal(t, int64(1), s.Released)
	assert.Equal(t, s.Acquired-s.Released-s.Lost, int64(s.Held))
	lost.mu.Lock()
	defer lost.mu.Unlock()
	assert.Empty(t, lost.errs, "OnLeaseLost called for a released lock")
}

// Close's one deadline starts once the calls in progress have returned. A
// Ticket.Cancel of a place on a partitioned server A is such a call and
// takes DefaultReleaseTimeout; the queued ticket on the healthy server B
// must still be withdrawn (not its connection closed: B, with auto-release
// off, would keep the lock it had granted to that place).
func TestCloseDeadlineIsNotEatenByTheDrain(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	a := newServer(t, testutil.Config{})
	pa := newProxy(t, a.Addr())
	b := newServer(t, testutil.Config{DisableAutoRelease: true})
	c, err := New([]string{pa.Addr(), b.Addr()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	ka := keyOn(t, c, pa.Addr(), "a")
	kb := keyOn(t, c, b.Addr(), "b")
	holderA := newClient(t, addrsOf(a))
	holderB := newClient(t, addrsOf(b))

	_, err = holderA.Lock(ctx, ka)
	require.NoError(t, err)
	hb, err := holderB.Lock(ctx, kb, LeaseTTL(30*time.Second))
	require.NoError(t, err)
	ta, err := c.Enqueue(ctx, ka)
	require.NoError(t, err)
	require.False(t, ta.Acquired())
	tb, err := c.Enqueue(ctx, kb, LeaseTTL(30*time.Second))
	require.NoError(t, err)
	require.False(t, tb.Acquired())
	require.NoError(t, hb.Release(ctx)) // B grants kb to tb's place

	pa.Blackhole(true)
	defer pa.Blackhole(false)
	go func() { _ = ta.Cancel() }() // waits up to DefaultReleaseTimeout for A
	require.Eventually(t, func() bool { return c.inflight.Load() > 0 }, time.Second, time.Millisecond)
	require.NoError(t, c.Close())
	assert.False(t, lockHeld(b, kb), "the lock granted to the queued ticket on the healthy server is held by nobody after Close: %+v", b.Stats())
}

// Close's own releases (releaseAll) are sent aside when the owning
// connection breaks as they are written: on a server with auto-release off
// the lock would stay held by nobody until its TTL.
func TestCloseReleaseOnBrokenConnIsSentAside(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	var armed atomic.Bool
	c, err := New([]string{srv.Addr()}, WithDialer(breakingDialer("r\nk\n", &armed)))
	require.NoError(t, err)
	ctx := testCtx(t)
	_, err = c.TryLock(ctx, "k", LeaseTTL(30*time.Second))
	require.NoError(t, err)
	armed.Store(true)
	require.NoError(t, c.Close())
	require.False(t, armed.Load(), "the release was written")
	assert.False(t, lockHeld(srv, "k"), "the lock Close released is held by nobody: %+v", srv.Stats())
}

// The same for a queued ticket that Close withdraws: its place was granted
// meanwhile, Close's w reads the grant, and the release on the ticket's
// connection breaks as it is written. releaseOn sends it aside, and the
// jobs are stopped only after the withdrawals, so it goes out.
func TestCloseWithdrawnTicketGrantOnBrokenConnIsSentAside(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	holder := newClient(t, addrsOf(srv))
	var armed atomic.Bool
	c, err := New([]string{srv.Addr()}, WithDialer(breakingDialer("r\nq\n", &armed)))
	require.NoError(t, err)
	ctx := testCtx(t)
	hl, err := holder.Lock(ctx, "q")
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "q", LeaseTTL(30*time.Second))
	require.NoError(t, err)
	require.False(t, tk.Acquired())
	require.NoError(t, hl.Release(ctx)) // the place is granted
	armed.Store(true)
	require.NoError(t, c.Close())
	require.False(t, armed.Load(), "the release was written")
	assert.False(t, lockHeld(srv, "q"), "the lock granted to the withdrawn ticket is held by nobody: %+v", srv.Stats())
}
