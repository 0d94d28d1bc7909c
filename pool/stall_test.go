package pool

import (
	"context"
	"net"
	"os"
	"sync"
	"time"
)

// stallDialer dials real TCP connections and wraps each in a stallConn, so
// that a test can make one connection's writes block the way a write to a
// server that stopped reading does once the socket's send buffer is full:
// until the write deadline passes or the connection is closed.
type stallDialer struct {
	mu    sync.Mutex
	conns []*stallConn
}

func (d *stallDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	sc := &stallConn{Conn: nc, changed: make(chan struct{}), closed: make(chan struct{})}
	d.mu.Lock()
	d.conns = append(d.conns, sc)
	d.mu.Unlock()
	return sc, nil
}

// conn returns the i-th connection dialled (in dial order).
func (d *stallDialer) conn(i int) *stallConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conns[i]
}

type stallConn struct {
	net.Conn
	mu        sync.Mutex
	stalled   bool
	deadline  time.Time     // write deadline
	changed   chan struct{} // closed and replaced when the deadline changes
	closed    chan struct{}
	closeOnce sync.Once
	blocked   chan struct{} // closed when a stalled Write starts blocking
}

// stall makes every later Write block until its deadline passes or the
// connection is closed; nothing is written. It returns a channel that is
// closed when the first stalled Write starts blocking.
func (c *stallConn) stall() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stalled = true
	c.blocked = make(chan struct{})
	return c.blocked
}

func (c *stallConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if !c.stalled {
		c.mu.Unlock()
		return c.Conn.Write(b)
	}
	select {
	case <-c.blocked:
	default:
		close(c.blocked)
	}
	for {
		dl, changed := c.deadline, c.changed
		c.mu.Unlock()
		var expired <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			expired = t.C
		}
		select {
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		case <-c.closed:
			return 0, net.ErrClosed
		case <-changed:
		}
		if t != nil {
			t.Stop()
		}
		c.mu.Lock()
	}
}

func (c *stallConn) setWriteDeadline(t time.Time) {
	c.mu.Lock()
	c.deadline = t
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

func (c *stallConn) SetDeadline(t time.Time) error {
	c.setWriteDeadline(t)
	return c.Conn.SetDeadline(t)
}

func (c *stallConn) SetWriteDeadline(t time.Time) error {
	c.setWriteDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *stallConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}
