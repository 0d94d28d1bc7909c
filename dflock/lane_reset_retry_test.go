package dflock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A reset of every connection (a server restart, a middlebox dropping its
// state) while the Client is idle, its lane readers blocked in their reads:
// a TryLock (or a Lock, whose first step is a try on the lane) made just
// after may be written onto a lane whose reset has arrived but that its
// reader has not yet handled. The write fails, or the reader fails the
// connection first; either way no byte went out, so pool.Do carries the
// request on another connection instead of failing it with
// ErrServerUnavailable on a healthy server.
func TestTryLockJustAfterAResetOfEveryConnectionGoesOutAgain(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	for i := range 30 {
		c, err := New([]string{px.Addr()}, WithLaneConns(2))
		require.NoError(t, err)
		l, err := c.TryLock(ctx, "reset-a")
		require.NoError(t, err)
		require.NoError(t, l.Release(ctx))
		require.True(t, waitFor(ctx, 5*time.Second, func() bool { return c.Snapshot().Servers[0].Conns.Lane == 2 }))
		time.Sleep(5 * time.Millisecond) // both readers back in their reads
		px.ResetAll()
		acquire := c.TryLock
		if i%2 == 1 {
			acquire = c.Lock
		}
		l2, err := acquire(ctx, "reset-b")
		require.NoError(t, err, "iteration %d", i)
		require.NoError(t, l2.Release(ctx))
		require.NoError(t, c.Close())
	}
}
