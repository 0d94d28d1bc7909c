package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A lease lost to an answer of the server matches the sentinel that answer
// has everywhere else, as ErrRefused's and ErrDraining's docs say: a
// renewal or a release answered the bare `error` matches ErrRefused, a
// renewal answered error_draining ErrDraining — beside ErrLockLost (found
// by review: they matched only ErrLockLost and the internal renew errors).
func TestLossesMatchTheSentinelOfTheirAnswer(t *testing.T) {
	t.Parallel()
	t.Run("refused renewal", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t)
		srv := newServer(t, testutil.Config{})
		c := newClient(t, addrsOf(srv))
		l, err := c.Lock(ctx, "k", LeaseTTL(30*time.Second))
		require.NoError(t, err)
		rawRelease(t, srv.Addr(), "r", "k", l.Token())
		err = l.Renew(ctx)
		require.ErrorIs(t, err, ErrLockLost)
		assert.ErrorIs(t, err, ErrRefused)
		assert.ErrorIs(t, l.Err(), ErrRefused)
		assert.NotErrorIs(t, l.Err(), ErrDraining)
		assert.ErrorContains(t, l.Err(), "renewal refused: server answered error")
	})
	t.Run("refused release", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t)
		srv := newServer(t, testutil.Config{})
		c := newClient(t, addrsOf(srv))
		s, err := c.Semaphore(ctx, "s", 2, LeaseTTL(30*time.Second))
		require.NoError(t, err)
		rawRelease(t, srv.Addr(), "sr", "s", s.Token())
		err = s.Release(ctx)
		require.ErrorIs(t, err, ErrLockLost)
		assert.ErrorIs(t, err, ErrRefused)
		assert.ErrorContains(t, err, "server refused: error: semaphore slot lost: the server no longer held the lease")
		var e *Error
		require.ErrorAs(t, err, &e)
		assert.ErrorContains(t, e.Err, "release refused: the server no longer held the lease")
	})
	t.Run("renewal answered error_draining", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t)
		srv := newServer(t, testutil.Config{ShutdownTimeout: time.Minute})
		c := newClient(t, addrsOf(srv))
		l, err := c.Lock(ctx, "k", LeaseTTL(30*time.Second))
		require.NoError(t, err)
		done := make(chan error, 1)
		go func() { done <- srv.Shutdown(context.Background()) }()
		require.Eventually(t, srv.Draining, 5*time.Second, time.Millisecond)
		err = l.Renew(ctx)
		require.ErrorIs(t, err, ErrLockLost)
		assert.ErrorIs(t, err, ErrDraining)
		assert.NotErrorIs(t, err, ErrRefused)
		assert.ErrorContains(t, l.Err(), "error_draining")
		require.NoError(t, c.Close()) // its connections were the last: the drain ends
		require.NoError(t, <-done)
	})
}

// A server whose read timeout is shorter than the client was told closes
// an idle connection, after the bare `error` dflockd writes then; the
// leases on it are lost, and the error says why and what to declare,
// rather than blame the server for a protocol violation (found by review,
// on dflockd v1.10.0 with -read-timeout 2).
func TestLossToAnUndeclaredShortReadTimeoutSaysSo(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{ReadTimeout: time.Second})
	c := newClient(t, addrsOf(srv)) // told nothing: the default 23 s
	l, err := c.Lock(ctx, "k", LeaseTTL(30*time.Second))
	require.NoError(t, err)
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("the lease outlived its connection")
	}
	require.ErrorIs(t, l.Err(), ErrLockLost)
	assert.ErrorIs(t, l.Err(), ErrServerUnavailable)
	assert.NotErrorIs(t, l.Err(), wire.ErrProtocol)
	assert.ErrorContains(t, l.Err(), "closed the connection as idle")
	assert.ErrorContains(t, l.Err(), "WithServerReadTimeout")
}
