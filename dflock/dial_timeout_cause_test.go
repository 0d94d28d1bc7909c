package dflock

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A dial cut short by WithDialTimeout while the caller's own context is
// live is the server's failure: the error matches ErrServerUnavailable and
// must not also match context.DeadlineExceeded, which tells a caller that
// its own deadline passed (Error: "when a context ended the operation, to
// the context's error as well"). A server that stalls in the auth/ping
// exchange got this right; one that stalls in the TLS handshake, or a
// dialer that honours its context, did not: the pool's own DialTimeout
// context's error was in the chain.
func TestDialTimeoutIsNotTheCallersDeadline(t *testing.T) {
	t.Parallel()
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	silent := testutil.ServeRaw(t, func(nc net.Conn) { _, _ = io.Copy(io.Discard, nc) })
	// A dialer that honours its context, as proxy and tunnel dialers do.
	ctxDialer := func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	for name, opts := range map[string][]Option{
		"auth-stall": {WithAuthToken("tok")}, // the control: passes
		"tls-stall":  {WithTLS(certs.ClientConfig())},
		"dialer":     {WithDialer(ctxDialer)},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, []string{silent}, append(opts, WithDialTimeout(200*time.Millisecond))...)
			ctx := testCtx(t)
			for call, f := range map[string]func() error{
				"trylock": func() error { _, err := c.TryLock(ctx, "a"); return err },
				"stats":   func() error { _, err := c.Stats(ctx); return err },
			} {
				err := f()
				t.Logf("%s: %v", call, err)
				require.Error(t, err)
				require.NoError(t, ctx.Err(), "the caller's context must still be live")
				assert.ErrorIs(t, err, ErrServerUnavailable, call)
				assert.False(t, errors.Is(err, context.DeadlineExceeded),
					"%s: the error claims the caller's deadline passed: %v", call, err)
				// It says what ran out (the auth stall said "connection
				// broken: read …: i/o timeout").
				assert.Contains(t, err.Error(), "dial timeout", call)
			}
		})
	}
}

// A call whose context ends while the pool is still connecting for it
// fails with its context's error, and says what the pool was doing: a
// stalled handshake and a contended key used to read alike ("timed out:
// context deadline exceeded"). The words do not change what the error
// matches: the caller's deadline, not the server's failure.
func TestCallEndedWhileConnectingSaysWhatWasUnderWay(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	silent := testutil.ServeRaw(t, func(nc net.Conn) { _, _ = io.Copy(io.Discard, nc) })
	// The first connection (the lane) reaches the server; every later one
	// reaches a server that never answers the handshake.
	var dials atomic.Int32
	dialer := func(ctx context.Context, network, _ string) (net.Conn, error) {
		addr := silent
		if dials.Add(1) == 1 {
			addr = srv.Addr()
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	c := newClient(t, []string{srv.Addr()}, WithDialer(dialer))
	ctx := testCtx(t)
	held, err := c.Lock(ctx, "held")
	require.NoError(t, err)
	defer held.Release(ctx)

	for call, f := range map[string]func(context.Context) error{
		"lock":    func(ctx context.Context) error { _, err := c.Lock(ctx, "held"); return err },
		"enqueue": func(ctx context.Context) error { _, err := c.Enqueue(ctx, "held"); return err },
		"stats":   func(ctx context.Context) error { _, err := c.Stats(ctx); return err },
	} {
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := f(cctx)
		cancel()
		t.Logf("%s: %v", call, err)
		require.ErrorIs(t, err, context.DeadlineExceeded, call)
		assert.NotErrorIs(t, err, ErrServerUnavailable, call)
		assert.Contains(t, err.Error(), "while connecting", call)
		if call != "stats" {
			assert.ErrorIs(t, err, ErrTimeout, call)
			assert.ErrorIs(t, err, ErrNotAcquired, call)
		}
	}
}

// The same for the control lane, which a server's first Lock, TryLock or
// Semaphore waits for: against a server that accepts and never answers the
// handshake, a call whose context ends first says so, rather than read
// like a contended key (found by review).
func TestLaneCallEndedWhileConnectingSaysWhatWasUnderWay(t *testing.T) {
	t.Parallel()
	silent := testutil.ServeRaw(t, func(nc net.Conn) { _, _ = io.Copy(io.Discard, nc) })
	c := newClient(t, []string{silent})
	ctx := testCtx(t)
	for call, f := range map[string]func(context.Context) error{
		"lock":      func(ctx context.Context) error { _, err := c.Lock(ctx, "k"); return err },
		"trylock":   func(ctx context.Context) error { _, err := c.TryLock(ctx, "k"); return err },
		"semaphore": func(ctx context.Context) error { _, err := c.Semaphore(ctx, "k", 2); return err },
	} {
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := f(cctx)
		cancel()
		t.Logf("%s: %v", call, err)
		require.ErrorIs(t, err, context.DeadlineExceeded, call)
		assert.ErrorIs(t, err, ErrTimeout, call)
		assert.NotErrorIs(t, err, ErrServerUnavailable, call)
		assert.Contains(t, err.Error(), "(while connecting: waiting for a control-lane connection being dialled)", call)
	}
}

// A handshake that Close cuts short (the server never answers it) says it
// was cut, not that the server did not answer: the socket deadline that
// ended it was Close's doing (review shut: "no answer to the handshake
// (auth, ping): … i/o timeout" sent readers after a server timeout that
// never happened). The error still matches ErrClosed and no timeout.
func TestHandshakeCutByCloseSaysSo(t *testing.T) {
	t.Parallel()
	read := make(chan struct{}, 1)
	silent := testutil.ServeRaw(t, func(nc net.Conn) {
		var b [1]byte
		if _, err := nc.Read(b[:]); err == nil {
			read <- struct{}{} // the handshake is on its way
		}
		_, _ = io.Copy(io.Discard, nc)
	})
	c, err := New([]string{silent}, WithDialTimeout(time.Minute))
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() { _, err := c.Stats(context.Background()); errc <- err }()
	<-read
	require.NoError(t, c.Close())
	err = <-errc
	t.Logf("stats: %v", err)
	require.ErrorIs(t, err, ErrClosed)
	assert.False(t, errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded), "%v", err)
	assert.NotContains(t, err.Error(), "no answer to the handshake")
	assert.Contains(t, err.Error(), "cut short")
}
