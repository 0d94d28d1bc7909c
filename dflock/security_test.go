package dflock

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

func TestAuthFailureIsErrAuth(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{AuthToken: "s3cret"})
	ctx := testCtx(t)

	for name, opts := range map[string][]Option{
		"wrong token": {WithAuthToken("wrong")},
		"no token":    nil,
	} {
		t.Run(name, func(t *testing.T) {
			c := newClient(t, addrsOf(srv), opts...)
			_, err := c.Lock(ctx, "auth")
			require.ErrorIs(t, err, ErrAuth)
			assert.NotContains(t, err.Error(), "s3cret")
			assert.NotContains(t, err.Error(), "wrong")
			_, err = c.Enqueue(ctx, "auth")
			require.Error(t, err)
		})
	}

	c := newClient(t, addrsOf(srv), WithAuthToken("s3cret"))
	l, err := c.Lock(ctx, "auth")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
}

// The auth token never reaches the log, at any level, whether auth
// succeeds or fails.
func TestLoggingNeverPrintsTheAuthToken(t *testing.T) {
	t.Parallel()
	const token = "s3cret-Token-42"
	srv := newServer(t, testutil.Config{AuthToken: token})
	ctx := testCtx(t)
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	good := newClient(t, addrsOf(srv), WithAuthToken(token), WithLogger(logger))
	l, err := good.Lock(ctx, "logged")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
	st, err := good.Stats(ctx)
	require.NoError(t, err)
	require.NotNil(t, st.Servers[0].State)
	require.NoError(t, good.Close())

	bad := newClient(t, addrsOf(srv), WithAuthToken(token+"-wrong"), WithLogger(logger))
	_, err = bad.Lock(ctx, "logged")
	require.ErrorIs(t, err, ErrAuth)
	require.NoError(t, bad.Close())

	out := logs.String()
	require.NotEmpty(t, out, "nothing was logged: the check below would prove nothing")
	assert.NotContains(t, out, token)
}

func TestTLSWithVerifyingClientWorksAndWrongCAFailsClearly(t *testing.T) {
	t.Parallel()
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	otherCA, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	srv := newServer(t, testutil.Config{TLS: certs.ServerConfig(), AuthToken: "tok"})
	ctx := testCtx(t)

	c := newClient(t, addrsOf(srv), WithTLS(certs.ClientConfig()), WithAuthToken("tok"))
	l, err := c.Lock(ctx, "tls")
	require.NoError(t, err)
	require.True(t, lockHeld(srv, "tls"))
	// A contended acquire goes over a wait-pool connection: TLS there too.
	w := make(chan error, 1)
	go func() {
		l2, err := c.Lock(ctx, "tls", AcquireTimeout(5*time.Second))
		if err == nil {
			err = l2.Release(ctx)
		}
		w <- err
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "tls") == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, l.Release(ctx))
	require.NoError(t, <-w)

	bad := newClient(t, addrsOf(srv), WithTLS(otherCA.ClientConfig()), WithAuthToken("tok"))
	_, err = bad.Lock(ctx, "tls")
	require.Error(t, err)
	// It failed on its own, not by retrying until the context ran out.
	assert.NoError(t, ctx.Err())
	assert.NotErrorIs(t, err, context.DeadlineExceeded)
	var uae x509.UnknownAuthorityError
	assert.True(t, errors.As(err, &uae) || strings.Contains(err.Error(), "certificate"),
		"the error does not say the certificate was refused: %v", err)
	t.Log(err)
	assert.NotErrorIs(t, err, ErrAuth)
}

// An auth token given for a server without auth (it answers `auth` with a
// bare `error`) is an auth misconfiguration: the error matches ErrAuth and
// says what to check, and the server is not taken for down.
func TestTokenForAServerWithoutAuthIsErrAuth(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv), WithAuthToken("s3cret"))
	_, err := c.TryLock(testCtx(t), "k")
	require.ErrorIs(t, err, ErrAuth)
	assert.NotErrorIs(t, err, ErrServerUnavailable)
	assert.ErrorContains(t, err, "does the server have auth enabled?")
	assert.ErrorContains(t, err, srv.Addr())
}

// A client without TLS whose server expects it sees the connection closed
// without a word (so does a server at its connection cap): the error names
// both likely causes.
func TestPlainClientToTLSServerIsToldOfTLS(t *testing.T) {
	t.Parallel()
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	srv := newServer(t, testutil.Config{TLS: certs.ServerConfig()})
	c := newClient(t, addrsOf(srv))
	_, err = c.TryLock(testCtx(t), "k")
	require.ErrorIs(t, err, ErrServerUnavailable)
	assert.ErrorContains(t, err, "or expect TLS (WithTLS)")
}
