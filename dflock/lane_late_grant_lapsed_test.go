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

// A try on the control lane whose grant comes back more than a quarter of
// the lease late is confirmed by a renewal (confirmLateGrant). When that
// renewal finds the lease lapsed, the error must read as a normal error
// (tryLane once wrapped it as if a context had ended, though none had, and
// printing it dereferenced a nil cause), and match ErrNotAcquired and
// ErrLeaseExpired.
func TestLaneLateGrantLapsedErrorIsPrintable(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	c := newClient(t, []string{px.Addr()})
	ctx := testCtx(t)

	// The lane is up before the latency starts.
	l, err := c.TryLock(ctx, "warm")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))

	// Round trip 1.4 s: the 1 s lease granted on arrival has lapsed when
	// the confirming renewal reaches the server.
	px.SetLatency(700 * time.Millisecond)
	_, err = c.TryLock(ctx, "k", LeaseTTL(time.Second))
	px.SetLatency(0)
	require.Error(t, err)
	t.Logf("errors.Is NotAcquired=%v LeaseExpired=%v", errors.Is(err, ErrNotAcquired), errors.Is(err, ErrLeaseExpired))
	var msg string
	require.NotPanics(t, func() { msg = err.Error() }, "the error of a lapsed lane grant panics when printed")
	t.Log(msg)
	assert.ErrorIs(t, err, ErrNotAcquired)
	assert.ErrorIs(t, err, ErrLeaseExpired)
}

// ctxError with neither context ended (a caller's mistake) returns the
// domain error, not an error with a nil cause that panics when printed.
func TestCtxErrorWithNoContextEndedPrints(t *testing.T) {
	c := newClient(t, addrsOf(newServer(t, testutil.Config{})))
	ctx := context.Background()
	err := c.ctxError(ctx, ctx, ErrNotAcquired)
	require.ErrorIs(t, err, ErrNotAcquired)
	require.NotPanics(t, func() { _ = err.Error() })
	require.NotPanics(t, func() { _ = (&bothError{domain: ErrNotAcquired}).Error() })
}
