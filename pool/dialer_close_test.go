package pool

import (
	"context"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// slowCloseConn is a Config.Dial wrapper: its Write can be made to block
// (until its write deadline passes), and its Close closes the transport,
// then takes its time (a wrapper that logs or flushes), once; a second
// Close returns at once.
type slowCloseConn struct {
	net.Conn
	block    atomic.Bool
	blocked  chan struct{}
	once     sync.Once
	mu       sync.Mutex
	deadline time.Time
	closed   atomic.Bool
	closing  atomic.Int32 // Closes in progress
}

func (c *slowCloseConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

func (c *slowCloseConn) Write(b []byte) (int, error) {
	if !c.block.Load() {
		return c.Conn.Write(b)
	}
	c.once.Do(func() { close(c.blocked) })
	for {
		c.mu.Lock()
		d := c.deadline
		c.mu.Unlock()
		if !d.IsZero() && time.Now().After(d) {
			return 0, os.ErrDeadlineExceeded
		}
		time.Sleep(time.Millisecond)
	}
}

func (c *slowCloseConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return net.ErrClosed
	}
	c.closing.Add(1)
	defer c.closing.Add(-1)
	err := c.Conn.Close()
	time.Sleep(time.Second)
	return err
}

// slowClosePool returns a pool whose connections are slowCloseConns, a
// wait-pool connection acquired from it, and that connection's wrapper.
// The test closes the pool itself (a cleanup closes it too, for a test
// that fails first).
func slowClosePool(t *testing.T, srv *testutil.Server) (*Pool, *Conn, *slowCloseConn) {
	t.Helper()
	var mu sync.Mutex
	var conns []*slowCloseConn
	p, err := New(Config{Addr: srv.Addr(), DialTimeout: 2 * time.Second, LaneConns: 1,
		OnReleaseLost: func(wire.Request) {},
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			w := &slowCloseConn{Conn: nc, blocked: make(chan struct{})}
			mu.Lock()
			conns = append(conns, w)
			mu.Unlock()
			return w, nil
		}})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	h, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	return p, h, conns[len(conns)-1]
}

// The Close that ends a linger whose cut write sent nothing (so that no
// reply is left to wait for: dropUnsentOrphansLocked) runs apart from the
// flusher, and Pool.Close waits for it (it was not counted, and
// the user's Close ran on after Pool.Close returned).
func TestDroppedOrphansCloseIsWaitedForByPoolClose(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	p, h, w := slowClosePool(t, srv)
	require.False(t, h.c.inline)
	w.block.Store(true)
	h.SendBatch([]wire.Request{lockReq("k")}, func(int, wire.Reply, error) {})
	select {
	case <-w.blocked:
	case <-time.After(wait):
		t.Fatal("the write did not start")
	}
	h.Abandon() // lingers (a written l); the cut stops the write, which wrote nothing
	require.Eventually(t, func() bool { return w.closed.Load() }, wait, time.Millisecond, "closed")
	p.Close()
	require.Zero(t, w.closing.Load(), "Pool.Close returned while the connection's Close still runs")
}

// Pool.Close waits for the Close that ends a linger when the pool closes
// (stopLinger's context.AfterFunc on p.ctx), as for any other.
func TestLingerCloseAtPoolCloseIsWaitedFor(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	p, h, w := slowClosePool(t, srv)
	resume := srv.Stall(0)
	defer resume()
	h.SendBatch([]wire.Request{lockReq("k")}, func(int, wire.Reply, error) {})
	require.Eventually(t, func() bool { h.c.mu.Lock(); defer h.c.mu.Unlock(); return h.c.onWireLocked() == 1 }, wait, time.Millisecond)
	h.Abandon()
	require.Equal(t, 1, p.Stats().LingeringConns)
	require.False(t, w.closed.Load())
	p.Close()
	require.Zero(t, w.closing.Load(), "Pool.Close returned while the connection's Close still runs")
}
