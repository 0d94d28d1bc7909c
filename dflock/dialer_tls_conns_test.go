package dflock

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// WithTLS over a WithDialer connection whose deadline setters fail (an SSH
// channel's, noDeadlineConn). The handshake's stray-record check set an
// expired read deadline and waited for a line: the read blocked until
// DialTimeout closed the connection, so every TLS dial failed (review
// "rv5"). It now runs only over a socket.
func TestDialerTLSOverAConnWithoutDeadlinesWorks(t *testing.T) {
	t.Parallel()
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	srv := newServer(t, testutil.Config{TLS: certs.ServerConfig()})
	c := newClient(t, addrsOf(srv), WithTLS(certs.ClientConfig()), WithDialer(noDeadlineDialer), WithDialTimeout(5*time.Second))
	ctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
	defer cancel()
	t0 := time.Now()
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err, "after %v", time.Since(t0))
	require.NoError(t, l.Release(ctx))
	// Well under the dial timeout it used to wait out (a bound kept loose
	// for one CPU under -race).
	require.Less(t, time.Since(t0), 2500*time.Millisecond)
}

// yamuxTimeout is hashicorp/yamux's ErrTimeout as it is: a NetError whose
// Timeout is true and whose Temporary is false (yamux const.go sets only
// timeout). crypto/tls makes a read error that is not Temporary sticky.
type yamuxTimeout struct{}

func (yamuxTimeout) Error() string   { return "i/o deadline reached" }
func (yamuxTimeout) Timeout() bool   { return true }
func (yamuxTimeout) Temporary() bool { return false }

type yamuxTimeoutConn struct{ net.Conn }

func (c yamuxTimeoutConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = yamuxTimeout{}
	}
	return n, err
}

// TestDialerOwnTimeoutErrorWithTLS with yamux's real error value, which
// left the tls.Conn dead after the stray-record check (review "rv5").
func TestDialerYamuxTimeoutErrorWithTLS(t *testing.T) {
	t.Parallel()
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	srv := newServer(t, testutil.Config{TLS: certs.ServerConfig()})
	var breaks atomic.Int64
	c := newClient(t, addrsOf(srv), WithTLS(certs.ClientConfig()), WithHooks(Hooks{OnConnBroken: func(addr string, err error) {
		breaks.Add(1)
		t.Logf("broken: %v", err)
	}}), WithDialer(func(ctx context.Context, n, a string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, n, a)
		if err != nil {
			return nil, err
		}
		return yamuxTimeoutConn{nc}, nil
	}))
	ctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
	defer cancel()
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
	require.Zero(t, breaks.Load())
}
