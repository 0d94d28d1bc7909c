package testutil

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// proxyWait bounds every read, write and wait in the proxy tests, so that a
// fault fails the test instead of hanging it.
const proxyWait = 5 * time.Second

// startProxyBackend starts a TCP server for proxy tests. It runs handle on
// every connection and closes the connection when handle returns. stop, also
// run at cleanup, closes the listener and every connection and waits for the
// server's goroutines; it may be called more than once.
func startProxyBackend(t *testing.T, handle func(net.Conn)) (addr string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = make(map[net.Conn]struct{})
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
				_ = c.Close()
			}()
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = ln.Close()
			mu.Lock()
			for c := range conns {
				_ = c.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

// startProxyTarget is startProxyBackend for tests that do not stop it early.
func startProxyTarget(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	addr, _ := startProxyBackend(t, handle)
	return addr
}

// proxyEcho writes back everything it reads.
func proxyEcho(c net.Conn) { _, _ = io.Copy(c, c) }

// proxyEchoExposed is proxyEcho that also hands the server side of each
// connection to the test.
func proxyEchoExposed(conns chan<- net.Conn) func(net.Conn) {
	return func(c net.Conn) {
		conns <- c
		proxyEcho(c)
	}
}

func newTestProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := NewProxy(target)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.Close()) })
	return p
}

func proxyDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, proxyWait)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(proxyWait)))
	return c
}

// proxyRoundTrip writes msg and reads back len(msg) bytes.
func proxyRoundTrip(t *testing.T, c net.Conn, msg string) string {
	t.Helper()
	_, err := c.Write([]byte(msg))
	require.NoError(t, err)
	buf := make([]byte, len(msg))
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	return string(buf)
}

// proxyReadFails reads from c and returns the error, which must come
// promptly.
func proxyReadFails(t *testing.T, c net.Conn) error {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(proxyWait)))
	n, err := c.Read(make([]byte, 1))
	require.Zero(t, n, "read data from a connection that should be dead")
	require.Error(t, err)
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "connection still open after %v", proxyWait)
	return err
}

// proxyDialRejected connects to addr, where the connection is expected to be
// accepted and then closed at once, and returns the error seen: from the dial
// itself (the reset can beat the handshake's completion) or from the first
// read.
func proxyDialRejected(t *testing.T, addr string) error {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, proxyWait)
	if err != nil {
		return err
	}
	defer c.Close()
	return proxyReadFails(t, c)
}

func proxyWaitConns(t *testing.T, p *Proxy, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return p.Conns() == n },
		proxyWait, time.Millisecond, "want %d proxied connections, have %d", n, p.Conns())
}

func TestProxyPassesDataBothWaysUnchanged(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, startProxyTarget(t, proxyEcho))
	c := proxyDial(t, p.Addr())

	assert.Equal(t, "ping\n", proxyRoundTrip(t, c, "ping\n"))
	assert.Equal(t, 1, p.Conns())

	// More than many chunks' worth, written while reading, so both
	// directions carry data at once.
	data := make([]byte, 4<<20)
	_, _ = rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		werr <- err
	}()
	got := make([]byte, len(data))
	_, err := io.ReadFull(c, got)
	require.NoError(t, err)
	require.NoError(t, <-werr)
	assert.True(t, bytes.Equal(data, got), "data changed in transit")

	require.NoError(t, c.Close())
	proxyWaitConns(t, p, 0)
}

func TestProxyForwardsHalfClose(t *testing.T) {
	t.Parallel()
	// The backend reads until EOF, then replies and closes.
	p := newTestProxy(t, startProxyTarget(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		_, _ = c.Write(append([]byte("got "), b...))
	}))
	c := proxyDial(t, p.Addr())

	_, err := c.Write([]byte("req"))
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	reply, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.Equal(t, "got req", string(reply))
	proxyWaitConns(t, p, 0)
}

func TestProxyAddsLatencyInBothDirections(t *testing.T) {
	t.Parallel()
	const latency = 50 * time.Millisecond
	p := newTestProxy(t, startProxyTarget(t, proxyEcho))
	p.SetLatency(latency)
	c := proxyDial(t, p.Addr())

	start := time.Now()
	assert.Equal(t, "x", proxyRoundTrip(t, c, "x"))
	rtt := time.Since(start)
	t.Logf("round trip with %v one-way latency: %v", latency, rtt)
	assert.GreaterOrEqual(t, rtt, 2*latency)
	assert.Less(t, rtt, 2*latency+2*time.Second)

	// Lowering the latency must not let new bytes overtake delayed ones.
	p.SetLatency(300 * time.Millisecond)
	received := p.received.Load()
	_, err := c.Write([]byte("1"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return p.received.Load() == received+1 }, proxyWait, time.Millisecond)
	p.SetLatency(0)
	_, err = c.Write([]byte("2"))
	require.NoError(t, err)
	buf := make([]byte, 2)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "12", string(buf))

	p.SetLatency(-time.Second) // treated as zero
	assert.Equal(t, "y", proxyRoundTrip(t, c, "y"))
}

// proxyExpectNothing asserts that nothing can be read from c for d.
func proxyExpectNothing(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(d)))
	n, err := c.Read(make([]byte, 1))
	require.Zero(t, n, "read data that should be held")
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(proxyWait)))
}

func proxyIsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// proxyDropsSYNs reports whether this platform lets a blackhole drop the
// SYNs of new connections (see proxySetBacklog).
func proxyDropsSYNs() bool {
	switch runtime.GOOS {
	case "linux", "freebsd", "openbsd", "netbsd", "darwin":
		return true
	}
	return false
}

// A blackhole holds bytes in both directions, keeps the connection open, and
// delivers everything in order when it lifts: a partition TCP survives.
func TestProxyBlackholeHoldsBothDirectionsAndDeliversInOrderWhenLifted(t *testing.T) {
	t.Parallel()
	p, c, s := echoThroughProxy(t)

	p.Blackhole(true)
	_, err := c.Write([]byte("b")) // client to server: held, so not echoed
	require.NoError(t, err)
	_, err = s.Write([]byte("S")) // server to client: held
	require.NoError(t, err)
	proxyExpectNothing(t, c, 300*time.Millisecond)
	assert.Equal(t, 1, p.Conns(), "the blackhole must keep connections open")

	p.Blackhole(false)
	// Nothing lost, nothing reordered: "S" was on its way first, then the
	// echo of "b".
	buf := make([]byte, 2)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "Sb", string(buf))
	assert.Equal(t, "c", proxyRoundTrip(t, c, "c"))
}

// While blackholed the proxy reads nothing, so a writer blocks once the
// socket buffers are full, as with a peer that acknowledges nothing; when it
// lifts, every byte arrives, in order.
func TestProxyBlackholeBlocksWritersThenDeliversEverything(t *testing.T) {
	t.Parallel()
	type result struct {
		n   int64
		sum [sha256.Size]byte
	}
	got := make(chan result, 1)
	p := newTestProxy(t, startProxyTarget(t, func(c net.Conn) {
		h := sha256.New()
		n, _ := io.Copy(h, c)
		var r result
		r.n = n
		copy(r.sum[:], h.Sum(nil))
		got <- r
	}))
	c := proxyDial(t, p.Addr())
	proxyWaitConns(t, p, 1)

	p.Blackhole(true)
	data := make([]byte, 64<<20) // far more than any socket buffers
	_, _ = rand.Read(data)
	require.NoError(t, c.SetWriteDeadline(time.Time{}))
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		wrote <- err
	}()
	select {
	case err := <-wrote:
		t.Fatalf("64 MiB written through a blackhole (err %v)", err)
	case <-time.After(500 * time.Millisecond):
	}
	assert.LessOrEqual(t, p.received.Load(), int64(proxyChunkSize), "the proxy read during a blackhole")

	p.Blackhole(false)
	select {
	case err := <-wrote:
		require.NoError(t, err)
	case <-time.After(4 * proxyWait):
		t.Fatal("the write did not complete after the blackhole lifted")
	}
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	select {
	case r := <-got:
		assert.Equal(t, int64(len(data)), r.n)
		assert.Equal(t, sha256.Sum256(data), r.sum, "bytes changed, lost or reordered")
	case <-time.After(proxyWait):
		t.Fatal("the target did not get the data")
	}
}

// A blackhole's plug is known by its source address, not by what its dial
// returned: a plug dial cancelled (by the blackhole lifting) just as it
// connects returns an error with its connection already in the accept queue,
// and that connection must not be connected through to the target as a
// client's (it was, once, under load: the target saw a stray empty
// connection). Here a connection from the plug's address stands for it.
func TestProxyClosesAPlugWhateverItsDialReturned(t *testing.T) {
	t.Parallel()
	var targetConns atomic.Int32
	p := newTestProxy(t, startProxyTarget(t, func(net.Conn) { targetConns.Add(1) }))
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: proxyPlugIP}, Timeout: proxyWait}
	c, err := d.Dial("tcp", p.Addr())
	if err != nil {
		t.Skipf("cannot dial from %v here: %v", proxyPlugIP, err)
	}
	defer c.Close()
	assert.ErrorIs(t, proxyReadFails(t, c), io.EOF, "a plug must be closed, not proxied")
	assert.Zero(t, targetConns.Load(), "a plug reached the target")
	assert.Zero(t, p.Conns())

	// The proxy still serves clients.
	var ordinary net.Dialer
	c2, err := ordinary.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c2.Close()
	require.Eventually(t, func() bool { return targetConns.Load() == 1 }, proxyWait, time.Millisecond)
}

// A dial during a blackhole gets no answer (its SYN is dropped) and does not
// reach the target; one still pending when the blackhole lifts completes
// then (at its next SYN retransmission) and is connected through.
func TestProxyBlackholeDialHangsUntilLifted(t *testing.T) {
	t.Parallel()
	if !proxyDropsSYNs() {
		t.Skip("this platform cannot shrink a listening socket's backlog")
	}
	var accepted atomic.Int32
	p := newTestProxy(t, startProxyTarget(t, func(c net.Conn) {
		accepted.Add(1)
		proxyEcho(c)
	}))
	p.Blackhole(true)

	_, err := net.DialTimeout("tcp", p.Addr(), 300*time.Millisecond)
	require.Error(t, err, "a dial completed during a blackhole")
	assert.True(t, proxyIsTimeout(err), "want no answer (a timeout), got %v", err)

	dialed := make(chan net.Conn, 1)
	dialErr := make(chan error, 1)
	go func() {
		c, err := net.DialTimeout("tcp", p.Addr(), 4*proxyWait)
		if err != nil {
			dialErr <- err
			return
		}
		dialed <- c
	}()
	select {
	case c := <-dialed:
		_ = c.Close()
		t.Fatal("a dial completed during a blackhole")
	case err := <-dialErr:
		t.Fatalf("dial during a blackhole: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	assert.Zero(t, accepted.Load(), "the target saw a connection during the blackhole")
	assert.Zero(t, p.Conns())

	p.Blackhole(false)
	select {
	case c := <-dialed:
		t.Cleanup(func() { _ = c.Close() })
		require.NoError(t, c.SetDeadline(time.Now().Add(proxyWait)))
		assert.Equal(t, "x", proxyRoundTrip(t, c, "x"), "connected through after the blackhole")
	case err := <-dialErr:
		t.Fatalf("the pending dial failed: %v", err)
	}
	assert.Equal(t, int32(1), accepted.Load(), "the plug must not reach the target")
	assert.Equal(t, "y", proxyRoundTrip(t, proxyDial(t, p.Addr()), "y"))
}

// ResetAll during a blackhole stands for a connection that did not survive
// the partition: it is reset, and nothing held is delivered.
func TestProxyResetDuringBlackholeKillsHeldData(t *testing.T) {
	t.Parallel()
	p, c, _ := echoThroughProxy(t)

	p.Blackhole(true)
	_, err := c.Write([]byte("lost"))
	require.NoError(t, err)
	p.ResetAll()
	p.Blackhole(false)
	assert.ErrorIs(t, proxyReadFails(t, c), syscall.ECONNRESET)
}

func TestProxyResetAllResetsBothSides(t *testing.T) {
	t.Parallel()
	serverErr := make(chan error, 1)
	p := newTestProxy(t, startProxyTarget(t, func(c net.Conn) {
		_, err := io.Copy(c, c)
		select {
		case serverErr <- err:
		default: // only the first connection reports
		}
	}))
	c := proxyDial(t, p.Addr())
	require.Equal(t, "a", proxyRoundTrip(t, c, "a"))

	p.ResetAll()
	assert.Zero(t, p.Conns())
	assert.ErrorIs(t, proxyReadFails(t, c), syscall.ECONNRESET)
	select {
	case err := <-serverErr:
		assert.ErrorIs(t, err, syscall.ECONNRESET)
	case <-time.After(proxyWait):
		t.Fatal("the server side was not closed")
	}

	assert.Equal(t, "b", proxyRoundTrip(t, proxyDial(t, p.Addr()), "b"), "new connections must work")
}

// RefuseNew is a server that is not running: nothing listens, so a dial is
// refused at once, on the same address it works on again afterwards.
func TestProxyRefuseNewRefusesOnlyNewConnections(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, startProxyTarget(t, proxyEcho))
	old := proxyDial(t, p.Addr())
	require.Equal(t, "a", proxyRoundTrip(t, old, "a"))

	p.RefuseNew(true)
	_, err := net.DialTimeout("tcp", p.Addr(), proxyWait)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED)
	assert.Equal(t, 1, p.Conns())
	assert.Equal(t, "b", proxyRoundTrip(t, old, "b"), "an established connection must keep working")

	p.RefuseNew(false)
	assert.Equal(t, "c", proxyRoundTrip(t, proxyDial(t, p.Addr()), "c"))
}

// A blackhole answers nothing even where nothing listens; when it lifts the
// refusal shows again.
func TestProxyBlackholeHidesARefusal(t *testing.T) {
	t.Parallel()
	if !proxyDropsSYNs() {
		t.Skip("this platform cannot shrink a listening socket's backlog")
	}
	p := newTestProxy(t, startProxyTarget(t, proxyEcho))
	p.RefuseNew(true)
	p.Blackhole(true)
	_, err := net.DialTimeout("tcp", p.Addr(), 300*time.Millisecond)
	assert.True(t, proxyIsTimeout(err), "want no answer (a timeout), got %v", err)
	p.Blackhole(false)
	_, err = net.DialTimeout("tcp", p.Addr(), proxyWait)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED)
	p.RefuseNew(false)
	assert.Equal(t, "c", proxyRoundTrip(t, proxyDial(t, p.Addr()), "c"))
}

// CloseNew is dflockd at its connection cap: the dial succeeds, and the
// connection is closed with a FIN and nothing written; the target never
// hears of it.
func TestProxyCloseNewAcceptsAndClosesOnlyNewConnections(t *testing.T) {
	t.Parallel()
	var accepted atomic.Int32
	p := newTestProxy(t, startProxyTarget(t, func(c net.Conn) {
		accepted.Add(1)
		proxyEcho(c)
	}))
	old := proxyDial(t, p.Addr())
	require.Equal(t, "a", proxyRoundTrip(t, old, "a"))

	p.CloseNew(true)
	c, err := net.DialTimeout("tcp", p.Addr(), proxyWait)
	require.NoError(t, err, "the dial succeeds")
	defer c.Close()
	assert.ErrorIs(t, proxyReadFails(t, c), io.EOF, "then a clean close, nothing written")
	assert.Equal(t, 1, p.Conns())
	assert.Equal(t, "b", proxyRoundTrip(t, old, "b"), "an established connection must keep working")
	assert.Equal(t, int32(1), accepted.Load())
	assert.Equal(t, int64(1), p.TurnedAway(), "the connection it turned away is counted")

	p.CloseNew(false)
	assert.Equal(t, "c", proxyRoundTrip(t, proxyDial(t, p.Addr()), "c"))
	assert.Equal(t, int64(1), p.TurnedAway())
}

func TestProxyResetsClientsWhenTheTargetIsDown(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	target := ln.Addr().String()
	require.NoError(t, ln.Close())

	p := newTestProxy(t, target)
	err = proxyDialRejected(t, p.Addr())
	assert.True(t, errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF), "got %v", err)
	assert.Zero(t, p.Conns())
}

func TestProxyForwardsAResetFromTheServer(t *testing.T) {
	t.Parallel()
	p := newTestProxy(t, startProxyTarget(t, func(c net.Conn) {
		_, _ = c.Read(make([]byte, 1))
		proxyAbort(c)
	}))
	c := proxyDial(t, p.Addr())
	_, err := c.Write([]byte("x"))
	require.NoError(t, err)
	err = proxyReadFails(t, c)
	assert.ErrorIs(t, err, syscall.ECONNRESET)
	proxyWaitConns(t, p, 0)
}

// Not parallel: it checks that Close leaves no goroutine behind, which other
// tests running at the same time would blur.
func TestProxyCloseClosesEverythingAndLeavesNoGoroutines(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	func() {
		addr, stop := startProxyBackend(t, proxyEcho)
		defer stop()
		p, err := NewProxy(addr)
		require.NoError(t, err)
		p.SetLatency(time.Hour) // leave bytes in flight
		var clients []net.Conn
		for range 3 {
			c, err := net.DialTimeout("tcp", p.Addr(), proxyWait)
			require.NoError(t, err)
			defer c.Close()
			_, err = c.Write([]byte("in flight"))
			require.NoError(t, err)
			clients = append(clients, c)
		}
		proxyWaitConns(t, p, 3)
		// Closing a socket with unread data sends a reset; wait until the
		// proxy has read everything, so the clients must see a plain FIN.
		require.Eventually(t, func() bool { return p.received.Load() == 3*int64(len("in flight")) },
			proxyWait, time.Millisecond)

		// A blackhole, with its plug and a held dial, must not leak either.
		p.Blackhole(true)
		if c, err := net.DialTimeout("tcp", p.Addr(), 50*time.Millisecond); err == nil {
			_ = c.Close()
		}

		require.NoError(t, p.Close())
		assert.Zero(t, p.Conns())
		assert.NoError(t, p.Close(), "a second Close")
		for _, c := range clients {
			err := proxyReadFails(t, c)
			assert.ErrorIs(t, err, io.EOF)
		}
		_, err = net.DialTimeout("tcp", p.Addr(), proxyWait)
		assert.ErrorIs(t, err, syscall.ECONNREFUSED)
	}()
	goleak.VerifyNone(t, ignore)
}

// A reset crosses a blackhole no more than bytes do: while it lasts the
// other side hears nothing, and when it lifts the bytes sent before the
// reset arrive first, then the reset.
func TestProxyResetIsHeldByABlackholeBehindTheBytesBeforeIt(t *testing.T) {
	t.Parallel()
	t.Run("held", func(t *testing.T) {
		t.Parallel()
		p, c, s := echoThroughProxy(t)
		p.Blackhole(true)
		proxyAbort(s) // the server resets its side during the partition
		require.NoError(t, c.SetReadDeadline(time.Now().Add(300*time.Millisecond)))
		_, err := c.Read(make([]byte, 1))
		require.ErrorIs(t, err, os.ErrDeadlineExceeded, "the reset crossed the blackhole")
		p.Blackhole(false)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(proxyWait)))
		_, err = c.Read(make([]byte, 1))
		require.True(t, errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF), "after the lift: %v", err)
	})
	t.Run("in order", func(t *testing.T) {
		t.Parallel()
		// The byte is held only if the proxy's read was already under way
		// when the blackhole began (otherwise it stays in the kernel, which
		// may drop it with the reset, as a peer's would): such runs count.
		held := 0
		for range 50 {
			p, c, s := echoThroughProxy(t)
			p.Blackhole(true)
			_, err := s.Write([]byte("S"))
			require.NoError(t, err)
			deadline := time.Now().Add(100 * time.Millisecond)
			for p.received.Load() < 3 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			read := p.received.Load() == 3
			proxyAbort(s)
			p.Blackhole(false)
			if read {
				held++
				require.NoError(t, c.SetReadDeadline(time.Now().Add(proxyWait)))
				n, _ := c.Read(make([]byte, 1))
				require.Equal(t, 1, n, "the byte the proxy held was overtaken by the reset")
			}
			_ = c.Close()
		}
		t.Logf("%d of 50 runs held the byte", held)
	})
}

// echoThroughProxy connects a client through a new proxy to an echo target,
// checks one round trip, and returns the proxy, the client's connection and
// the target's side of it.
func echoThroughProxy(t *testing.T) (p *Proxy, c, s net.Conn) {
	t.Helper()
	serverSide := make(chan net.Conn, 1)
	p = newTestProxy(t, startProxyTarget(t, proxyEchoExposed(serverSide)))
	c = proxyDial(t, p.Addr())
	require.Equal(t, "a", proxyRoundTrip(t, c, "a"))
	return p, c, <-serverSide
}
