package dflock

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A dialer that returns neither a connection nor an error fails the dial
// (ErrServerUnavailable), with or without TLS, instead of crashing the
// process from a background dial goroutine (found by review).
func TestDialerReturningNoConnAndNoErrorFailsTheDial(t *testing.T) {
	t.Parallel()
	for _, withTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "tls"}[withTLS], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{})
			opts := []Option{WithDialer(func(context.Context, string, string) (net.Conn, error) { return nil, nil })}
			if withTLS {
				certs, err := testutil.NewTLSCerts()
				require.NoError(t, err)
				opts = append(opts, WithTLS(certs.ClientConfig()))
			}
			c := newClient(t, addrsOf(srv), opts...)
			ctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
			defer cancel()
			_, err := c.TryLock(ctx, "k")
			require.ErrorIs(t, err, ErrServerUnavailable)
			_, err = c.Stats(ctx)
			require.ErrorIs(t, err, ErrServerUnavailable)
			_, err = c.Listen(ctx, "ch")
			require.ErrorIs(t, err, ErrServerUnavailable)
		})
	}
}
