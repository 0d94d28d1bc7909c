//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"bufio"
	"net"
	"sync"
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
	assert.ErrorIs(t, res.err, wire.ErrProtocol)
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
	assert.ErrorIs(t, c.Err(), wire.ErrProtocol, "the `error` broke the connection as unsolicited")
	require.Eventually(t, c.readerExited, wait, time.Millisecond)
}
