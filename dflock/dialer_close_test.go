package dflock

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// slowCloseConn is a WithDialer connection whose Close takes its time, as
// an SSH channel's does when its transport stalls, or a wrapper's that
// flushes or logs on Close.
type slowCloseConn struct {
	net.Conn
	delay *atomic.Int64
}

func (c *slowCloseConn) Close() error {
	time.Sleep(time.Duration(c.delay.Load()))
	return c.Conn.Close()
}

// slowCloseDialer wraps the connections to the addresses in slow.
func slowCloseDialer(delay *atomic.Int64, slow ...string) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		for _, s := range slow {
			if s == addr {
				return &slowCloseConn{Conn: nc, delay: delay}, nil
			}
		}
		return nc, nil
	}
}

const slowClose = 3 * time.Second

// A broken connection's leases are reported lost at once, however long the
// user's net.Conn takes to close: the reader that found the break does not
// close it itself (review-cb F2: the lease stayed believed held for the
// whole Close, after the server had handed it to another client).
func TestSlowDialerCloseDoesNotDelayTheLossOfABrokenConnection(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{})
	px, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	var delay atomic.Int64
	c := newClient(t, []string{px.Addr()}, WithDialer(slowCloseDialer(&delay, px.Addr())))
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)

	delay.Store(int64(slowClose))
	t0 := time.Now()
	px.ResetAll()
	select {
	case <-l.Done():
	case <-time.After(slowClose):
		t.Fatal("the loss waited for the user's conn.Close")
	}
	t.Logf("lost %v after the reset", time.Since(t0).Round(time.Millisecond))
	delay.Store(0)
}

// A lease's pinned connection destroyed on the loss notifier does not hold
// up the loss reports of other servers' leases (review-cb F2: OnLeaseLost
// of a lease on a healthy server waited 5.8 s for one server's Close).
func TestSlowDialerCloseDoesNotDelayOtherServersLossReports(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	sa := newServer(t, testutil.Config{})
	sb := newServer(t, testutil.Config{})
	var delay atomic.Int64
	lostB := make(chan time.Time, 1)
	c := newClient(t, []string{sa.Addr(), sb.Addr()}, WithDialer(slowCloseDialer(&delay, sa.Addr())),
		WithHooks(Hooks{OnLeaseLost: func(li LeaseInfo, _ error) {
			if li.Server == sb.Addr() {
				select {
				case lostB <- time.Now():
				default:
				}
			}
		}}))
	holder := newClient(t, []string{sa.Addr(), sb.Addr()})
	var keyA, keyB string
	for i := 0; keyA == "" || keyB == ""; i++ {
		k := fmt.Sprintf("k%d", i)
		switch c.ServerFor(k) {
		case sa.Addr():
			keyA = k
		case sb.Addr():
			keyB = k
		}
	}
	// A lease on A pinned to a wait-pool connection: granted after a wait.
	hl, err := holder.Lock(ctx, keyA)
	require.NoError(t, err)
	got := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, keyA, LeaseTTL(time.Second))
		assert.NoError(t, err)
		got <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(sa, keyA) == 1 }, testTimeout, time.Millisecond)
	require.NoError(t, hl.Release(ctx))
	la := recv(t, ctx, got, "the grant on A")
	require.NotNil(t, la)
	require.NotNil(t, la.h.pinned, "the lease on A is not pinned to a wait-pool connection")
	lb, err := c.Lock(ctx, keyB)
	require.NoError(t, err)

	delay.Store(int64(slowClose))
	resume := sa.Stall(0)
	t.Cleanup(resume)
	<-la.Done() // lost by the clock: the notifier destroys its connection
	t0 := time.Now()
	sb.DropConnections() // lb is lost with B's lane
	<-lb.Done()
	select {
	case at := <-lostB:
		t.Logf("OnLeaseLost for B's lease %v after its connection dropped", at.Sub(t0).Round(time.Millisecond))
	case <-time.After(slowClose):
		t.Fatal("OnLeaseLost for a lease on B waited for A's conn.Close")
	}
	resume()
	delay.Store(0)
}
