package dflock

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// noDeadlineConn is what golang.org/x/crypto/ssh's Client.Dial returns (its
// chanConn): every deadline setter returns "ssh: tcpChan: deadline not
// supported" and does nothing. WithDialer's doc names SSH channels.
type noDeadlineConn struct{ net.Conn }

var errNoDeadline = errors.New("ssh: tcpChan: deadline not supported")

func (noDeadlineConn) SetDeadline(time.Time) error      { return errNoDeadline }
func (noDeadlineConn) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (noDeadlineConn) SetWriteDeadline(time.Time) error { return errNoDeadline }

var noDeadlineDialer = wrappingDialer(func(nc net.Conn) net.Conn { return noDeadlineConn{nc} })

// wrappingDialer dials TCP and returns the connection wrap makes of it.
func wrappingDialer(wrap func(net.Conn) net.Conn) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return wrap(nc), nil
	}
}

// A connection that does not support deadlines (an SSH tunnel through
// x/crypto/ssh) is usable. Every dial failed on clearing its deadline, the
// server marked down (review "dialer" F2).
func TestDialerConnWithoutDeadlinesWorks(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv), WithDialer(noDeadlineDialer))
	lockAndReleaseWork(t, c)
}

// A server stalled during the handshake, over a connection without
// deadlines: the handshake is ended by closing the connection at its
// deadline, so Close does not wait for the server (it hung).
func TestDialerNoDeadlineHandshakeStall(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	resume := srv.Stall(0)
	defer resume()
	c, err := New(addrsOf(srv), WithDialer(noDeadlineDialer), WithDialTimeout(300*time.Millisecond))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(testCtx(t), 500*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err = c.Lock(ctx, "k")
	t.Logf("Lock: %v after %v", err, time.Since(t0))
	closed := make(chan struct{})
	go func() { _ = c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		resume()
		<-closed
		t.Fatal("Close hung while the handshake waited")
	}
}

// A stalled server is cut by the keepalive over a connection without
// deadlines as over a plain wrapper: the lease is reported lost; then Close
// returns.
func TestDialerNoDeadlineKeepaliveCut(t *testing.T) {
	t.Parallel()
	for _, plain := range []bool{false, true} {
		t.Run(map[bool]string{false: "nodeadline", true: "plain"}[plain], func(t *testing.T) {
			keepaliveCutsAUserConn(t, plain)
		})
	}
}

func keepaliveCutsAUserConn(t *testing.T, plain bool) {
	srv := newServer(t, testutil.Config{})
	dial := noDeadlineDialer
	if plain {
		dial = wrappingDialer(func(nc net.Conn) net.Conn { return struct{ net.Conn }{nc} })
	}
	c, err := New(addrsOf(srv), WithDialer(dial), WithKeepAlive(MinKeepAlive))
	require.NoError(t, err)
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	resume := srv.Stall(0)
	defer resume()
	t0 := time.Now()
	select {
	case <-l.Done():
		t.Logf("lost after %v: %v", time.Since(t0), l.Err())
	case <-time.After(5 * time.Second):
		t.Error("lease not lost in 5s")
	}
	closed := make(chan struct{})
	t1 := time.Now()
	go func() { _ = c.Close(); t.Logf("Close took %v", time.Since(t1)); close(closed) }()
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Logf("%s", buf[:n])
		resume()
		<-closed
		t.Fatal("Close hung")
	}
}

// countCloseConn counts Close calls.
type countCloseConn struct {
	net.Conn
	closed *atomic.Int32
}

func (c countCloseConn) Close() error { c.closed.Add(1); return c.Conn.Close() }

// A dialer that returns a connection together with an error (a SOCKS/HTTP
// CONNECT wrapper whose negotiation failed after the TCP connect) has that
// connection closed (it was dropped unclosed).
func TestDialerConnAndErrorClosesTheConn(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	var opened, closed atomic.Int32
	var conns sync.Map
	c := newClient(t, addrsOf(srv), WithDialer(func(ctx context.Context, n, a string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, n, a)
		if err != nil {
			return nil, err
		}
		opened.Add(1)
		conns.Store(nc, true)
		return countCloseConn{nc, &closed}, errors.New("proxy refused CONNECT")
	}))
	ctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
	defer cancel()
	_, err := c.TryLock(ctx, "k")
	require.ErrorIs(t, err, ErrServerUnavailable)
	require.NoError(t, c.Close())
	t.Logf("opened %d, closed %d; server conns %d", opened.Load(), closed.Load(), srv.Stats().Connections)
	conns.Range(func(k, _ any) bool { _ = k.(net.Conn).Close(); return true })
	require.Equal(t, opened.Load(), closed.Load(), "connections returned with an error were never closed")
}

// pipeDialer returns one end of a net.Pipe (synchronous, unbuffered),
// bridged to a real TCP connection to the address.
func pipeDialer(ctx context.Context, n, a string) (net.Conn, error) {
	tc, err := (&net.Dialer{}).DialContext(ctx, n, a)
	if err != nil {
		return nil, err
	}
	cli, end := net.Pipe()
	go func() { _, _ = io.Copy(tc, end); _ = tc.Close() }()
	go func() { _, _ = io.Copy(end, tc); _ = end.Close() }()
	return cli, nil
}

func TestDialerPipe(t *testing.T) {
	t.Parallel()
	for _, withTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "tls"}[withTLS], func(t *testing.T) {
			t.Parallel()
			cfg, opts := tlsIf(t, withTLS)
			opts = append(opts, WithDialer(pipeDialer))
			srv := newServer(t, cfg)
			c := newClient(t, addrsOf(srv), opts...)
			ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
			defer cancel()
			// 2 s leases, renewed within the 1.5 s below (a 1 s lease
			// with a 10 ms keepalive was lost once under make test's load)
			l, err := c.Lock(ctx, "k", LeaseTTL(2*time.Second))
			require.NoError(t, err)
			// contended: a blocking wait on the wait pool
			got := make(chan error, 1)
			go func() {
				l2, err := c.Lock(ctx, "k", LeaseTTL(2*time.Second))
				if err == nil {
					err = l2.Release(ctx)
				}
				got <- err
			}()
			require.Eventually(t, func() bool { return lockWaiters(srv, "k") == 1 }, 5*time.Second, time.Millisecond)
			time.Sleep(1500 * time.Millisecond) // renewals
			require.NoError(t, l.Err())
			require.NoError(t, l.Release(ctx))
			require.NoError(t, <-got)
			// a caller whose ctx ends while the server stalls
			resume := srv.Stall(0)
			sctx, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
			t0 := time.Now()
			_, err = c.TryLock(sctx, "z")
			scancel()
			t.Logf("stalled TryLock: %v after %v", err, time.Since(t0))
			require.Less(t, time.Since(t0), 2*time.Second)
			resume()
		})
	}
}

// A dialer that ignores ctx: Lock's ctx is honoured, and the late
// connections are closed.
func TestDialerIgnoringCtx(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	var opened, closed atomic.Int32
	release := make(chan struct{})
	c, err := New(addrsOf(srv), WithDialer(func(ctx context.Context, n, a string) (net.Conn, error) {
		<-release
		nc, err := (&net.Dialer{}).Dial(n, a)
		if err != nil {
			return nil, err
		}
		opened.Add(1)
		return countCloseConn{nc, &closed}, nil
	}))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(testCtx(t), 100*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err = c.Lock(ctx, "k")
	t.Logf("Lock: %v after %v", err, time.Since(t0))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	time.AfterFunc(200*time.Millisecond, func() { close(release) })
	require.NoError(t, c.Close())
	require.Eventually(t, func() bool { return opened.Load() == closed.Load() }, 2*time.Second, time.Millisecond,
		"opened %d closed %d", opened.Load(), closed.Load())
	t.Logf("opened %d closed %d", opened.Load(), closed.Load())
}

// halfCloseConn has a CloseWrite, as an SSH channel's conn does (it sends
// the channel's EOF over the SSH transport, and waits for that write);
// slow says how long CloseWrite (and, if failCW, Close) takes.
type halfCloseConn struct {
	net.Conn
	slow   time.Duration
	failCW bool
}

func (c halfCloseConn) CloseWrite() error {
	if c.failCW {
		return errors.New("half-close not supported")
	}
	time.Sleep(c.slow)
	return c.Conn.(*net.TCPConn).CloseWrite()
}

func (c halfCloseConn) Close() error {
	if c.failCW {
		time.Sleep(c.slow)
	}
	return c.Conn.Close()
}

// A blocking Lock whose context ends returns at once although the user's
// CloseWrite (or Close, if CloseWrite fails) that withdraws its wait is
// slow: it runs on a goroutine of its own (it ran on the caller's).
func TestDialerWithdrawDoesNotWaitForTheUsersClose(t *testing.T) {
	t.Parallel()
	for _, failCW := range []bool{false, true} {
		t.Run(map[bool]string{false: "slow-closewrite", true: "failing-closewrite-slow-close"}[failCW], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{})
			const slow = 2 * time.Second
			var on atomic.Bool
			c := newClient(t, addrsOf(srv), WithDialer(func(ctx context.Context, n, a string) (net.Conn, error) {
				nc, err := (&net.Dialer{}).DialContext(ctx, n, a)
				if err != nil {
					return nil, err
				}
				d := time.Duration(0)
				if on.Load() {
					d = slow
				}
				return halfCloseConn{Conn: nc, slow: d, failCW: failCW}, nil
			}))
			ctx := testCtx(t)
			l, err := c.Lock(ctx, "k")
			require.NoError(t, err)
			on.Store(true)
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			go func() {
				for lockWaiters(srv, "k") == 0 {
					time.Sleep(time.Millisecond)
				}
				cancel()
			}()
			t0 := time.Now()
			_, err = c.Lock(wctx, "k")
			took := time.Since(t0)
			t.Logf("Lock: %v after %v", err, took)
			require.ErrorIs(t, err, context.Canceled)
			require.NoError(t, l.Release(ctx))
			require.Less(t, took, slow, "the cancelled Lock waited for the user's CloseWrite/Close")
		})
	}
}

// timeoutErr is how many multiplexers (yamux, smux, gVisor's gonet) report
// an expired deadline: a net.Error whose Timeout is true, not wrapping
// os.ErrDeadlineExceeded.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o deadline reached" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

type ownTimeoutConn struct{ net.Conn }

func (c ownTimeoutConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = timeoutErr{}
	}
	return n, err
}

// WithTLS over a connection that reports an expired read deadline with its
// own timeout error (yamux's, say): every handshake failed on the check
// for a stray TLS record, which only kernel sockets need.
func TestDialerOwnTimeoutErrorWithTLS(t *testing.T) {
	t.Parallel()
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	srv := newServer(t, testutil.Config{TLS: certs.ServerConfig()})
	c := newClient(t, addrsOf(srv), WithTLS(certs.ClientConfig()), WithDialer(wrappingDialer(func(nc net.Conn) net.Conn { return ownTimeoutConn{nc} })))
	lockAndReleaseWork(t, c)
}

// A dialer that does TLS itself (no WithTLS): treated as a kernel socket
// under TLS. Lock/TryLock with quiet gaps (the turn's probe), contended
// wait, server restart.
func TestDialerOwnTLS(t *testing.T) {
	t.Parallel()
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	srv := newServer(t, testutil.Config{TLS: certs.ServerConfig()})
	cfg := certs.ClientConfig()
	c := newClient(t, addrsOf(srv), WithDialer(func(ctx context.Context, n, a string) (net.Conn, error) {
		d := tls.Dialer{Config: cfg}
		return d.DialContext(ctx, n, a)
	}))
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancel()
	for i := 0; i < 20; i++ {
		l, err := c.TryLock(ctx, "k")
		require.NoError(t, err)
		require.NoError(t, l.Release(ctx))
		time.Sleep(3 * time.Millisecond)
	}
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	go func() { time.Sleep(50 * time.Millisecond); _ = l.Release(ctx) }()
	l2, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l2.Release(ctx))
	srv.DropConnections()
	require.Eventually(t, func() bool {
		l, err := c.TryLock(ctx, "k")
		if err != nil {
			return false
		}
		return l.Release(ctx) == nil
	}, 5*time.Second, 10*time.Millisecond)
}

// noopDeadlineConn's deadline setters succeed and do nothing.
type noopDeadlineConn struct{ net.Conn }

func (noopDeadlineConn) SetDeadline(time.Time) error      { return nil }
func (noopDeadlineConn) SetReadDeadline(time.Time) error  { return nil }
func (noopDeadlineConn) SetWriteDeadline(time.Time) error { return nil }

// A handshake whose server does not answer, over a connection whose
// deadline setters do nothing: the connection is closed at the deadline, so
// Close (which waits for the dial) does not hang.
func TestDialerNoopDeadlineHandshakeStallDoesNotHoldClose(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	resume := srv.Stall(0)
	defer resume()
	c, err := New(addrsOf(srv), WithDialTimeout(300*time.Millisecond), WithDialer(wrappingDialer(func(nc net.Conn) net.Conn { return noopDeadlineConn{nc} })))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(testCtx(t), 500*time.Millisecond)
	defer cancel()
	_, err = c.Lock(ctx, "k")
	t.Logf("Lock: %v", err)
	closed := make(chan struct{})
	t0 := time.Now()
	go func() { _ = c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		resume()
		<-closed
		t.Fatalf("Close hung for %v while the handshake waited (ended only by resuming the server)", time.Since(t0))
	}
}

// A TLS handshake cut by its context closes the user's connection once.
// crypto/tls's HandshakeContext closed it to interrupt the handshake, then
// the pool closed it again; io.Closer leaves a second Close undefined, and a
// wrapper whose Close closes a channel panicked on a dial goroutine, ending
// the program (review "dialer" F1).
func TestDialerTLSHandshakeCutClosesTheConnOnce(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var held sync.WaitGroup
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); _ = ln.Close(); held.Wait() })
	held.Add(1)
	go func() { // accepts and never answers the TLS handshake
		defer held.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held.Add(1)
			go func() { defer held.Done(); <-stop; _ = c.Close() }()
		}
	}()
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	var closes, conns atomic.Int32
	c := newClient(t, []string{ln.Addr().String()}, WithTLS(certs.ClientConfig()), WithDialTimeout(200*time.Millisecond),
		WithDialer(func(ctx context.Context, n, a string) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, n, a)
			if err != nil {
				return nil, err
			}
			conns.Add(1)
			return countCloseConn{nc, &closes}, nil
		}))
	ctx, cancel := context.WithTimeout(testCtx(t), 2*time.Second)
	defer cancel()
	_, err = c.TryLock(ctx, "k")
	t.Logf("TryLock: %v", err)
	require.NoError(t, c.Close())
	t.Logf("conns %d, Close calls %d", conns.Load(), closes.Load())
	require.Equal(t, conns.Load(), closes.Load(), "a user conn was closed more than once")
}

// zeroReadConn's Read returns (0, nil) once armed.
type zeroReadConn struct {
	net.Conn
	armed *atomic.Bool
}

func (c zeroReadConn) Read(b []byte) (int, error) {
	if c.armed.Load() {
		return 0, nil
	}
	return c.Conn.Read(b)
}

// A Read returning (0, nil) for ever: the connection breaks (no spin, no
// hang), the lease is reported lost, and a new connection serves.
func TestDialerZeroReads(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	var armed atomic.Bool
	var first atomic.Bool
	c := newClient(t, addrsOf(srv), WithDialer(func(ctx context.Context, n, a string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, n, a)
		if err != nil {
			return nil, err
		}
		if !first.Load() {
			return zeroReadConn{nc, &armed}, nil
		}
		return nc, nil
	}))
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancel()
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	first.Store(true) // new connections are plain
	armed.Store(true)
	t0 := time.Now()
	_, err = c.TryLock(ctx, "z") // its reply is never read
	t.Logf("TryLock: %v after %v", err, time.Since(t0))
	select {
	case <-l.Done():
		t.Logf("lost: %v", l.Err())
	case <-ctx.Done():
		t.Fatal("not lost")
	}
	require.Eventually(t, func() bool {
		l, err := c.TryLock(ctx, "y")
		return err == nil && l.Release(ctx) == nil
	}, 5*time.Second, 10*time.Millisecond)
}

// perConnClose counts Close calls of each connection.
type perConnClose struct {
	net.Conn
	n *atomic.Int32
}

func (c perConnClose) Close() error { c.n.Add(1); return c.Conn.Close() }

func (c perConnClose) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// Every user connection is closed exactly once across: a keepalive cut
// that lingers, a withdrawn wait (CloseWrite), Stats, Listen, resets, and
// Client.Close. With and without TLS.
func TestDialerEachConnClosedOnce(t *testing.T) {
	t.Parallel()
	for _, withTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "tls"}[withTLS], func(t *testing.T) {
			t.Parallel()
			cfg, opts := tlsIf(t, withTLS)
			srv := newServer(t, cfg)
			px, err := testutil.NewProxy(srv.Addr())
			require.NoError(t, err)
			t.Cleanup(func() { _ = px.Close() })
			var mu sync.Mutex
			var counts []*atomic.Int32
			opts = append(opts, WithKeepAlive(50*time.Millisecond), WithDialer(func(ctx context.Context, n, a string) (net.Conn, error) {
				nc, err := (&net.Dialer{}).DialContext(ctx, n, a)
				if err != nil {
					return nil, err
				}
				k := new(atomic.Int32)
				mu.Lock()
				counts = append(counts, k)
				mu.Unlock()
				return perConnClose{nc, k}, nil
			}))
			c, err := New([]string{px.Addr()}, opts...)
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(testCtx(t), 15*time.Second)
			defer cancel()
			l, err := c.Lock(ctx, "k")
			require.NoError(t, err)
			// withdrawn wait
			wctx, wcancel := context.WithCancel(ctx)
			go func() {
				for lockWaiters(srv, "k") == 0 {
					time.Sleep(time.Millisecond)
				}
				wcancel()
			}()
			_, err = c.Lock(wctx, "k")
			require.ErrorIs(t, err, context.Canceled)
			_, err = c.Stats(ctx)
			require.NoError(t, err)
			sub, err := c.Listen(ctx, "ch")
			require.NoError(t, err)
			// keepalive cut with a stall (lingers), then resume
			resume := srv.Stall(0)
			<-l.Done()
			resume()
			px.ResetAll()
			require.Eventually(t, func() bool {
				l, err := c.TryLock(ctx, "y")
				return err == nil && l.Release(ctx) == nil
			}, 5*time.Second, 10*time.Millisecond)
			sub.Close()
			require.NoError(t, c.Close())
			mu.Lock()
			defer mu.Unlock()
			bad := 0
			for i, k := range counts {
				if k.Load() != 1 {
					bad++
					t.Errorf("conn %d closed %d times", i, k.Load())
				}
			}
			t.Logf("%d conns, %d not closed exactly once", len(counts), bad)
		})
	}
}

// A Stats (which dials on its caller's goroutine) whose context ends during
// the handshake returns then, although the user's Close of the connection
// takes 3 s: it runs on a goroutine of its own, which Close waits for (the
// caller waited 3.2 s: review "dialer" F4).
func TestDialerSlowCloseOfAFailedHandshakeDoesNotHoldTheCaller(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	var delay atomic.Int64
	c := newClient(t, addrsOf(srv), WithDialer(slowCloseDialer(&delay, srv.Addr())))
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "k") // the server is known up
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
	resume := srv.Stall(0)
	defer resume()
	delay.Store(int64(slowClose))
	sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err = c.Stats(sctx)
	took := time.Since(t0)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, took, slowClose, "the caller waited for the user's Close")
	delay.Store(0)
}

// A dialer's half-made connection, returned with an error (a tunnel whose
// negotiation failed), is closed apart as a failed handshake's is: a Stats
// waited for the user's slow Close of it (review "rv6").
func TestDialerHalfMadeConnsSlowCloseDoesNotHoldTheCaller(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	var delay atomic.Int64
	var fail atomic.Bool
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if fail.Load() {
			return &slowCloseConn{Conn: nc, delay: &delay}, errors.New("tunnel negotiation failed")
		}
		return nc, nil
	}
	c := newClient(t, addrsOf(srv), WithDialer(dial))
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
	fail.Store(true)
	delay.Store(int64(slowClose))
	sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err = c.Stats(sctx)
	took := time.Since(t0)
	require.Error(t, err)
	delay.Store(0)
	require.Less(t, took, slowClose, "the caller waited for the user's Close")
}

// lockAndReleaseWork locks a key through c and releases it, within 5 s.
func lockAndReleaseWork(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
	defer cancel()
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
}

// tlsIf is a server config and client options with TLS on both sides if
// withTLS, else plain ones.
func tlsIf(t *testing.T, withTLS bool) (testutil.Config, []Option) {
	t.Helper()
	if !withTLS {
		return testutil.Config{}, nil
	}
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	return testutil.Config{TLS: certs.ServerConfig()}, []Option{WithTLS(certs.ClientConfig())}
}
