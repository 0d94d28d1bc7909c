package dflockotel

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/wire"
)

func TestErrorTypeNamesTheFirstMatchingDflockError(t *testing.T) {
	t.Parallel()
	wrap := func(err error) error { return fmt.Errorf("dflock: lock %q: %w", "k", err) }
	for _, tc := range []struct {
		err  error
		want string
	}{
		{wrap(dflock.ErrTimeout), "timeout"}, // also matches ErrNotAcquired
		{errors.Join(dflock.ErrTimeout, context.DeadlineExceeded), "timeout"},
		{wrap(context.DeadlineExceeded), "timeout"}, // a Release's deadline
		{errors.Join(dflock.ErrNotAcquired, context.Canceled), "canceled"},
		{errors.Join(dflock.ErrNotAcquired, dflock.ErrClosed), "closed"},
		{errors.Join(dflock.ErrLockLost, dflock.ErrDraining), "lock_lost"},
		{errors.Join(dflock.ErrLockLost, dflock.ErrRefused), "lock_lost"},
		{errors.Join(dflock.ErrNotAcquired, dflock.ErrLeaseExpired), "lease_expired"},
		{errors.Join(dflock.ErrNotAcquired, dflock.ErrMaxWaiters), "max_waiters"},
		{wrap(dflock.ErrTicketDone), "ticket_done"},
		{wrap(&dflock.ArgError{Arg: "key"}), "invalid_argument"},
		{wrap(dflock.ErrAuth), "auth"},
		{wrap(dflock.ErrServerUnavailable), "server_unavailable"},
		{errors.Join(dflock.ErrServerUnavailable, wire.ErrConnBroken), "server_unavailable"},
		{wrap(wire.ErrConnBroken), "connection_broken"},
		{wrap(dflock.ErrDraining), "draining"},
		{wrap(dflock.ErrMaxLocks), "max_locks"},
		{wrap(dflock.ErrLimitMismatch), "limit_mismatch"},
		{wrap(dflock.ErrNotSupported), "not_supported"},
		{wrap(dflock.ErrRefused), "refused"},
		{wrap(dflock.ErrNotAcquired), "not_acquired"},
		// The program's own error (a WithLock's function): its type.
		{fmt.Errorf("charge: %w", errors.New("card declined")), "*errors.errorString"},
	} {
		got := errorType(tc.err)
		assert.Equal(t, semconv.ErrorTypeKey, got.Key)
		assert.Equal(t, tc.want, got.Value.AsString(), "error.type of %v", tc.err)
	}
}

func TestFailuresCarryErrorTypeAndAnswersDoNot(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := testCtx(t)

	l, err := h.c.TryLock(ctx, "busy")
	require.NoError(t, err)
	_, err = h.c.TryLock(ctx, "busy")
	require.ErrorIs(t, err, dflock.ErrNotAcquired)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = h.c.Lock(cctx, "busy")
	require.ErrorIs(t, err, context.Canceled)

	// A release that finds the lease gone fails with ErrLockLost.
	releaseBehindClientsBack(t, h.srv.Addr(), "busy", l.Token())
	require.ErrorIs(t, l.Release(ctx), dflock.ErrLockLost)

	granted := h.spansNamed("dflock.TryLock")
	require.Len(t, granted, 2)
	for _, s := range granted {
		_, ok := spanValue(s, semconv.ErrorTypeKey)
		assert.False(t, ok, "a grant and a try that found the key held are no errors: %v", s.Attributes())
	}
	locks := h.spansNamed("dflock.Lock")
	require.Len(t, locks, 1)
	assert.True(t, has(spanAttrs(locks[0]), semconv.ErrorTypeKey.String("canceled")), "attributes: %v", locks[0].Attributes())
	rel := h.spansNamed("dflock.Lock.Release")
	require.Len(t, rel, 1)
	assert.Equal(t, codes.Error, rel[0].Status().Code)
	assert.True(t, has(spanAttrs(rel[0]), semconv.ErrorTypeKey.String("lock_lost")), "attributes: %v", rel[0].Attributes())

	rm := h.collect(t)
	pts := histogramPoints(rm, "dflock.client.acquire.duration", keyOutcome.String("cancelled"))
	require.Len(t, pts, 1)
	assert.True(t, has(pts[0].Attributes, semconv.ErrorTypeKey.String("canceled")), "attributes: %v", pts[0].Attributes)
	for _, o := range []string{"granted", "refused"} {
		pts := histogramPoints(rm, "dflock.client.acquire.duration", keyOutcome.String(o))
		require.Len(t, pts, 1, "outcome %s", o)
		_, ok := pts[0].Attributes.Value(semconv.ErrorTypeKey)
		assert.False(t, ok, "outcome %s carries no error.type: %v", o, pts[0].Attributes)
	}
}
