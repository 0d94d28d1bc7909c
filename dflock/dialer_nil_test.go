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
// process from a background dial goroutine (found by review); so does one
// that returns a nil pointer as its net.Conn.
func TestDialerReturningNoConnAndNoErrorFailsTheDial(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ typed, withTLS bool }{{false, false}, {false, true}, {true, false}, {true, true}} {
		typed, withTLS := tc.typed, tc.withTLS
		t.Run(map[bool]string{false: "nil", true: "typed-nil"}[typed]+"/"+map[bool]string{false: "tcp", true: "tls"}[withTLS], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{})
			opts := []Option{WithDialer(func(context.Context, string, string) (net.Conn, error) { return nil, nil })}
			if typed {
				// A nil pointer in a net.Conn is not a nil net.Conn; its
				// methods would dereference it.
				opts = []Option{WithDialer(func(context.Context, string, string) (net.Conn, error) { return (*nilConn)(nil), nil })}
			}
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

// nilConn is a net.Conn whose methods need a non-nil receiver, as most
// wrappers' do.
type nilConn struct{ net.Conn }

func (c *nilConn) Read(b []byte) (int, error)  { return c.Conn.Read(b) }
func (c *nilConn) Write(b []byte) (int, error) { return c.Conn.Write(b) }
func (c *nilConn) Close() error                { return c.Conn.Close() }
func (c *nilConn) SetDeadline(t time.Time) error {
	return c.Conn.SetDeadline(t)
}
