//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"bufio"
	"context"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/wire"
)

// closingServer answers pings until kill is closed, then writes `error`
// and closes, as a server's read timeout does (dflockd answers a timed-out
// read with a bare `error` before it closes).
func closingServer(t *testing.T) (addr string, kill func()) {
	t.Helper()
	killed := make(chan struct{})
	addr = fakeServer(t, func(c net.Conn, r *bufio.Reader) {
		go func() {
			<-killed
			_, _ = c.Write([]byte("error\n"))
			_ = c.Close()
		}()
		for {
			cmd, err := readRequest(r)
			if err != nil {
				return
			}
			if cmd == wire.CmdPing.String() {
				select {
				case <-killed:
					return
				default:
					_, _ = c.Write([]byte("ok\n"))
				}
			}
		}
	})
	kill = sync.OnceFunc(func() { close(killed) })
	t.Cleanup(kill) // the handler's writer goroutine ends with the test
	return addr, kill
}

// A line that arrives while no request is on the wire answers nothing,
// even with requests queued to be written: the reader breaks the
// connection instead of taking it for the reply of a request the server
// never saw. (It took it, and the connection's count of requests written
// went negative: breaking the connection then panicked with the
// connection's lock held, and Close hung.)
func TestLineBeforeTheRequestIsWrittenAnswersNothing(t *testing.T) {
	t.Parallel()
	addr, kill := closingServer(t)
	p := newPool(t, Config{Addr: addr, LaneConns: 1})
	lane, c := laneOf(t, p)
	// The batch is queued; before it is written, the server times out.
	setHook(c, func() {
		kill()
		deadline := time.Now().Add(wait)
		for c.Err() == nil && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	})
	type outcome struct {
		r   wire.Reply
		err error
	}
	done := make(chan outcome, 1)
	go lane.SendBatch([]wire.Request{{Cmd: wire.CmdPing}}, func(_ int, r wire.Reply, err error) { done <- outcome{r, err} })
	res := result(t, done, "the batch's callback")
	require.Error(t, res.err, "the `error` (%v) is no reply to a request never written", res.r.Status)
	assert.ErrorIs(t, res.err, wire.ErrConnBroken)
	assert.ErrorIs(t, res.err, errIdleTimeout, "the server's goodbye at its read timeout")
	require.Eventually(t, c.readerExited, wait, time.Millisecond)
}

// The same for a caller reading its own reply, whose request waits for a
// flush in progress (the flush goroutine had written, and every reply to
// that write was read, before the caller queued its request).
func TestOwnReplyBeforeTheRequestIsWrittenAnswersNothing(t *testing.T) {
	t.Parallel()
	addr, kill := closingServer(t)
	p := newPool(t, Config{Addr: addr, LaneConns: 1})
	_, c := laneOf(t, p)
	settle(t, c)
	c.mu.Lock()
	c.flushing = true // a flush goroutine, back from its write any moment
	c.mu.Unlock()
	res := goDo(ctxWait(t), p, wire.Request{Cmd: wire.CmdPing})
	awaitReading(t, c)
	c.mu.Lock()
	onWire := c.onWireLocked()
	c.mu.Unlock()
	require.Zero(t, onWire, "the caller's request waits for the flush")
	kill()
	r := result(t, res, "Do")
	// Never written, the request went out again on a new connection, which
	// this server (killed) closes in its handshake.
	require.Error(t, r.err, "the `error` (%v) is no reply to a request never written", r.r.Status)
	assert.ErrorIs(t, c.Err(), errIdleTimeout, "the `error` broke the connection as unsolicited: the server's goodbye")
	require.Eventually(t, c.readerExited, wait, time.Millisecond)
}

// gateConn holds a Write, once armed, until the test lets it go; the write
// then fails having written nothing (as a write into a socket whose reset
// has arrived does).
type gateConn struct {
	net.Conn
	mu      sync.Mutex
	armed   bool
	blocked chan struct{} // closed when the armed Write starts waiting
	release chan struct{}
}

func (c *gateConn) arm() (blocked <-chan struct{}, release func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.armed = true
	c.blocked = make(chan struct{})
	c.release = make(chan struct{})
	return c.blocked, sync.OnceFunc(func() { close(c.release) })
}

func (c *gateConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if !c.armed {
		c.mu.Unlock()
		return c.Conn.Write(b)
	}
	c.armed = false
	blocked, release := c.blocked, c.release
	c.mu.Unlock()
	close(blocked)
	<-release
	return 0, syscall.ECONNRESET
}

type gateDialer struct {
	mu    sync.Mutex
	conns []*gateConn
}

func (d *gateDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	gc := &gateConn{Conn: nc}
	d.mu.Lock()
	d.conns = append(d.conns, gc)
	d.mu.Unlock()
	return gc, nil
}

func (d *gateDialer) conn(i int) *gateConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conns[i]
}

// A line that comes while a write is in progress is matched to a request
// of that write (every request taken for the write counts as on the wire
// meanwhile): here dflockd's `error` of a read timeout, its close not read
// yet. If the write then fails having written nothing, writeQueuedLocked
// must not put back as unwritten (bufN) a request that is no longer queued:
// with bufN > q.n, fail, which the flush goroutine calls next, sliced its
// pending calls at q.n - bufN < 0 and panicked, killing the process.
func TestUnwrittenWriteWhoseRequestAStrayLineAnsweredBreaksCleanly(t *testing.T) {
	t.Parallel()
	stray := make(chan struct{})
	var strayOnce sync.Once
	sendStray := func() { strayOnce.Do(func() { close(stray) }) }
	t.Cleanup(sendStray)
	addr := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
		go func() {
			<-stray
			_, _ = c.Write([]byte("error\n"))
		}()
		for {
			cmd, err := readRequest(r)
			if err != nil {
				return
			}
			if cmd == wire.CmdPing.String() {
				_, _ = c.Write([]byte("ok\n"))
			}
		}
	})
	var gd gateDialer
	p := newPool(t, Config{Addr: addr, Dial: gd.dial, LaneConns: 1})
	_, c := laneOf(t, p) // a wrapped net.Conn: the flush goroutine writes
	blocked, release := gd.conn(0).arm()
	t.Cleanup(release)

	res := goDo(ctxWait(t), p, wire.Request{Cmd: wire.CmdPing})
	result(t, blocked, "the write")
	sendStray()
	// The reader takes the stray line for the ping's reply (a window of
	// one write, known: the line cannot be told from a reply).
	result(t, res, "Do")
	// The write fails having written nothing.
	release()
	require.Eventually(t, func() bool { return c.Err() != nil }, wait, 1e6)
	require.Eventually(t, c.readerExited, wait, 1e6)
	c.mu.Lock()
	defer c.mu.Unlock()
	assert.GreaterOrEqual(t, c.q.n-c.bufN, 0)
}

// dflockd's goodbye at its read timeout (a bare `error` with nothing
// pending) says what to do about it: declare the server's read timeout —
// unless this client wrote nothing for more than twice its keepalive,
// which only a paused process does; the advice would then mislead (found
// by review: a client frozen for 5 s against dflockd -read-timeout 3).
func TestIdleGoodbyeSaysWhetherThisClientWasQuietTooLong(t *testing.T) {
	t.Parallel()
	for _, paused := range []bool{false, true} {
		t.Run(map[bool]string{false: "server's timeout", true: "paused client"}[paused], func(t *testing.T) {
			t.Parallel()
			addr, kill := closingServer(t)
			const ka = time.Hour // no ping in the test's time
			p := newPool(t, Config{Addr: addr, LaneConns: 1, KeepAlive: ka})
			_, c := laneOf(t, p)
			if paused {
				c.mu.Lock()
				c.lastActive = c.p.now() - int64(3*ka) // as after a 3 h pause
				c.mu.Unlock()
			}
			kill()
			require.Eventually(t, func() bool { return c.Err() != nil }, wait, time.Millisecond)
			err := c.Err()
			require.ErrorIs(t, err, wire.ErrConnBroken)
			assert.NotErrorIs(t, err, wire.ErrProtocol)
			assert.ErrorContains(t, err, "closed the connection as idle")
			if paused {
				assert.NotErrorIs(t, err, errIdleTimeout)
				assert.ErrorContains(t, err, "after this client wrote nothing for 3h0m0")
				assert.ErrorContains(t, err, "was this process paused?")
			} else {
				assert.ErrorIs(t, err, errIdleTimeout)
			}
		})
	}
}
