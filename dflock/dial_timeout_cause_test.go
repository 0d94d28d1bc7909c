package dflock

import (
	"context"
	"errors"
	"io"
	"net"
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
