package dflock

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Regression: an AcquireTimeout that ran out between the wait-pool
// connection arriving and the blocking request being sent failed with a
// bare context.DeadlineExceeded (waitSeconds saw the deadline passed before
// the context's own timer had closed Done), which matched neither ErrTimeout
// nor ErrNotAcquired. Tiny timeouts on a held key hit that window often.
func TestTinyAcquireTimeoutIsErrTimeout(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, []string{srv.Addr()})
	ctx := testCtx(t)
	held, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	defer held.Release(ctx)

	for i := range 300 {
		d := time.Duration(1+i%100) * 10 * time.Microsecond // 10 µs .. 1 ms
		l, err := c.Lock(ctx, "k", AcquireTimeout(d))
		require.Nil(t, l)
		require.Error(t, err)
		require.Truef(t, errors.Is(err, ErrTimeout) && errors.Is(err, ErrNotAcquired),
			"timeout %v: %v matches ErrTimeout %v, ErrNotAcquired %v", d, err,
			errors.Is(err, ErrTimeout), errors.Is(err, ErrNotAcquired))
	}
}

// A caller's deadline that passes while its call dials is the caller's
// error, not the server's: the handshake's socket deadline is the
// context's own, and it may fire before the context reports its end. Read
// as a server failure it would also mark a healthy, merely slow server
// down, failing every other caller fast.
func TestCallerDeadlineDuringDialIsTheCallers(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	p.SetLatency(100 * time.Millisecond) // slow, not down

	t.Run("first dial", func(t *testing.T) {
		for i := range 10 {
			c := newClient(t, []string{p.Addr()})
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			_, err := c.Stats(ctx)
			cancel()
			assert.ErrorIs(t, err, context.DeadlineExceeded, "call %d", i)
			assert.NotErrorIs(t, err, ErrServerUnavailable, "call %d", i)
			assert.True(t, c.Snapshot().Servers[0].Up, "call %d left the server marked down", i)
			require.NoError(t, c.Close())
		}
	})
	t.Run("lane up", func(t *testing.T) {
		c := newClient(t, []string{p.Addr()})
		l, err := c.TryLock(testCtx(t), "k")
		require.NoError(t, err)
		for i := range 10 {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			_, err := c.Stats(ctx)
			cancel()
			assert.ErrorIs(t, err, context.DeadlineExceeded, "call %d", i)
			assert.NotErrorIs(t, err, ErrServerUnavailable, "call %d", i)
		}
		require.NoError(t, l.Release(testCtx(t)))
	})
}
