package pool

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// heldConn is a Config.Dial wrapper whose reads, or writes, can be
// held back, as a process frozen or starved of CPU holds its reader or its
// flusher back: replies then wait in the socket, unread, or requests never
// reach it. It embeds the *net.TCPConn, so that the socket can still be
// looked at (socketPending, socketSendIdle).
type heldConn struct {
	*net.TCPConn
	hold      atomic.Bool // reads
	holdWrite atomic.Bool
	reached   chan struct{} // closed when a read or write first waits at the gate
	once      sync.Once
	open      chan struct{} // closed to let reads and writes through again
}

func (c *heldConn) Read(b []byte) (int, error) {
	if c.hold.Load() {
		c.once.Do(func() { close(c.reached) })
		<-c.open
	}
	return c.TCPConn.Read(b)
}

func (c *heldConn) Write(b []byte) (int, error) {
	if c.holdWrite.Load() {
		c.once.Do(func() { close(c.reached) })
		<-c.open
	}
	return c.TCPConn.Write(b)
}

// behindKA is these tests' keepalive: short, so that the janitor looks
// often, but not so short that a keepalive ping sent just before a test
// holds the connection back goes unanswered for 2×KeepAlive on a loaded
// machine, a genuine stall (20 ms was, once, under make test).
const behindKA = 50 * time.Millisecond

// heldConnPool returns a pool with the given keepalive whose connections
// are heldConns, a wait-pool connection acquired from it, and that
// connection's wrapper, which lets everything through at cleanup.
func heldConnPool(t *testing.T, ka time.Duration) (*Pool, *Conn, *heldConn) {
	t.Helper()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, KeepAlive: ka,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &heldConn{TCPConn: nc.(*net.TCPConn), reached: make(chan struct{}), open: make(chan struct{})}, nil
		}})
	h, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	w := h.c.wc.NetConn().(*heldConn)
	t.Cleanup(func() {
		select {
		case <-w.open:
		default:
			close(w.open)
		}
	})
	return p, h, w
}

// heldReadPool is heldConnPool with the connection's reads already held
// back: the replies to requests sent from now on stay in the socket.
func heldReadPool(t *testing.T, ka time.Duration) (*Pool, *Conn, *heldConn) {
	t.Helper()
	p, h, w := heldConnPool(t, ka)
	w.hold.Store(true)
	// A read already under way when the hold began returns the first
	// reply; the reads after it wait.
	first := make(chan error, 1)
	h.SendBatch([]wire.Request{pingReq}, func(_ int, _ wire.Reply, err error) { first <- err })
	select {
	case <-w.reached:
	case <-time.After(wait):
		t.Fatal("the reader never read again")
	}
	return p, h, w
}

// Replies waiting unread in the socket are not a stalled server: a client
// frozen or starved of CPU past 2×KeepAlive, whose janitor runs before its
// reader, once broke the connection ("no reply for 2×KeepAlive") and lost
// every lease on it although the server had answered (found by review).
func TestKeepaliveSparesAConnectionWhoseRepliesWaitUnread(t *testing.T) {
	t.Parallel()
	if !pendingCountable {
		t.Skip("the socket's unread bytes cannot be counted here")
	}
	const ka = behindKA
	p, h, w := heldReadPool(t, ka)
	answered := make(chan error, 1)
	h.SendBatch([]wire.Request{lockReq("k")}, func(_ int, r wire.Reply, err error) {
		if err == nil && r.Status != wire.StatusOK {
			err = fmt.Errorf("not granted: %+v", r)
		}
		answered <- err
	})
	require.Eventually(t, func() bool { return socketPending(w.TCPConn) }, wait, time.Millisecond, "the reply never reached the socket")
	// Ten keepalives: the janitor found the connection silent for
	// 2×KeepAlive over and over.
	time.Sleep(10 * ka)
	require.NoError(t, h.Err(), "the keepalive broke a connection whose replies wait unread")
	close(w.open)
	select {
	case err := <-answered:
		require.NoError(t, err)
	case <-time.After(wait):
		t.Fatal("the reply was never read")
	}
	assert.Zero(t, p.Stats().Broken)
	h.Release()
}

// A reader that does not read at all, though, is not spared for ever: the
// keepalive's break is what frees the callers waiting on the connection.
func TestKeepaliveBreaksAConnectionWhoseRepliesStayUnread(t *testing.T) {
	t.Parallel()
	if !pendingCountable {
		t.Skip("the socket's unread bytes cannot be counted here")
	}
	const ka = behindKA
	_, h, w := heldReadPool(t, ka)
	start := time.Now()
	answered := make(chan error, 1)
	h.SendBatch([]wire.Request{lockReq("k")}, func(_ int, _ wire.Reply, err error) { answered <- err })
	require.Eventually(t, func() bool { return socketPending(w.TCPConn) }, wait, time.Millisecond, "the reply never reached the socket")
	select {
	case err := <-answered:
		require.ErrorIs(t, err, errNoReply)
		assert.GreaterOrEqual(t, time.Since(start), stuckClientAfter, "broken before the grace for unread replies ran out")
	case <-time.After(stuckClientAfter + wait):
		t.Fatal("never broken")
	}
	h.Destroy()
}

// A write under way that has not reached the kernel (its flusher frozen or
// starved between taking the requests and the system call) is not a
// stalled server either; one blocked on a server that stopped reading,
// which fills the socket's buffers, is
// (TestLingerOutlivesTheWriteTimeoutOfAWriteBlockedAtTheCut).
func TestKeepaliveSparesAConnectionWhoseWriteHasNotReachedTheKernel(t *testing.T) {
	t.Parallel()
	if !pendingCountable {
		t.Skip("the socket's send queue cannot be looked at here")
	}
	const ka = behindKA
	p, h, w := heldConnPool(t, ka)
	w.holdWrite.Store(true)
	answered := make(chan error, 1)
	h.SendBatch([]wire.Request{lockReq("k")}, func(_ int, r wire.Reply, err error) {
		if err == nil && r.Status != wire.StatusOK {
			err = fmt.Errorf("not granted: %+v", r)
		}
		answered <- err
	})
	select {
	case <-w.reached:
	case <-time.After(wait):
		t.Fatal("the write never began")
	}
	time.Sleep(10 * ka)
	require.NoError(t, h.Err(), "the keepalive broke a connection whose write had not reached the kernel")
	close(w.open)
	select {
	case err := <-answered:
		require.NoError(t, err)
	case <-time.After(wait):
		t.Fatal("never answered")
	}
	assert.Zero(t, p.Stats().Broken)
	h.Release()
}
