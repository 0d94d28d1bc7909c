package pool

import (
	"bytes"
	"context"
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

func TestListenerReceivesPushesAndSurvivesCancelledCallers(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{ReadTimeout: time.Second})
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), KeepAlive: 200 * time.Millisecond, OnConnBroken: rec.hook})
	ctx := ctxWait(t)

	pushes := make(chan wire.Push, 16)
	broken := make(chan error, 1)
	lc, err := p.DialListener(ctx, func(m wire.Push) { pushes <- m }, func(err error) { broken <- err })
	require.NoError(t, err)
	r, err := lc.Do(ctx, wire.Request{Cmd: wire.CmdListen, Key: "a.>"})
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	assert.Equal(t, 1, p.Stats().ListenerConns)

	// A caller that gives up does not break the shared connection.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = lc.Do(cctx, wire.Request{Cmd: wire.CmdListen, Key: "b"})
	require.ErrorIs(t, err, context.Canceled)
	require.NoError(t, lc.Err())

	// Idle for more than the server's read timeout: the janitor's pings
	// keep it open.
	time.Sleep(1500 * time.Millisecond) // time-based behaviour under test
	r, _, err = p.Do(ctx, wire.Request{Cmd: wire.CmdSignal, Key: "a.b", Arg: "hello"})
	require.NoError(t, err)
	assert.Equal(t, int64(1), r.Count)
	select {
	case m := <-pushes:
		assert.Equal(t, wire.Push{Channel: "a.b", Payload: "hello"}, m)
	case <-ctx.Done():
		t.Fatal("no push")
	}
	require.NoError(t, lc.Err())

	// Close closes it and reports the break once.
	p.Close()
	select {
	case err := <-broken:
		assert.True(t, errors.Is(err, ErrClosed))
	case <-ctx.Done():
		t.Fatal("onBroken not called")
	}
	require.ErrorIs(t, lc.Err(), wire.ErrConnBroken)
	assert.Zero(t, p.Stats().ListenerConns)
}

func TestListenerDialFailsFastWhileDown(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr()})
	require.NoError(t, srv.Stop())
	_, err := p.DialListener(ctxWait(t), func(wire.Push) {}, nil)
	require.ErrorIs(t, err, ErrUnavailable)
	_, err = p.DialListener(ctxWait(t), func(wire.Push) {}, nil)
	require.ErrorIs(t, err, ErrUnavailable)
}

// gatedTCP holds each Read while its gate is set, until that gate closes,
// and sets the gate itself (to trip) once a read has brought the bytes
// tripOn; the socket under it stays reachable (SyscallConn), as a dialled
// one is.
type gatedTCP struct {
	*net.TCPConn
	gate   *atomic.Pointer[chan struct{}]
	tripOn []byte
	trip   *chan struct{}
}

func (c *gatedTCP) Read(b []byte) (int, error) {
	if g := c.gate.Load(); g != nil {
		<-*g
	}
	n, err := c.TCPConn.Read(b)
	if c.trip != nil && bytes.Contains(b[:n], c.tripOn) {
		c.gate.CompareAndSwap(nil, c.trip)
	}
	return n, err
}

// Unread counts a push that has reached the socket while the reader has
// not got round to reading it (a reader held up on a loaded machine): a
// queue-group withdrawal that took such a connection for quiet closed it
// with the push in its receive buffer, and the job was lost uncounted.
func TestListenerUnreadCountsBytesTheReaderHasNotRead(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the bytes a socket holds unread are counted on Linux only")
	}
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	// The listener's reader is held once it has read the push "first".
	var gate atomic.Pointer[chan struct{}]
	g := make(chan struct{})
	open := sync.OnceFunc(func() { gate.Store(nil); close(g) })
	var d net.Dialer
	var gated atomic.Bool // only the listener's connection
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil || !gated.CompareAndSwap(false, true) {
			return nc, err
		}
		return &gatedTCP{TCPConn: nc.(*net.TCPConn), gate: &gate, tripOn: []byte("sig ch first\n"), trip: &g}, nil
	}
	p := newPool(t, Config{Addr: srv.Addr()})
	lp := newPool(t, Config{Addr: srv.Addr(), Dial: dial})
	t.Cleanup(open) // before the pools' Close, which a held reader would hold
	ctx := ctxWait(t)
	pushes := make(chan wire.Push, 1)
	lc, err := lp.DialListener(ctx, func(m wire.Push) { pushes <- m }, nil)
	require.NoError(t, err)
	r, err := lc.Do(ctx, wire.Request{Cmd: wire.CmdListen, Key: "ch"})
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)

	emit := func(payload string) {
		r, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdSignal, Key: "ch", Arg: payload})
		require.NoError(t, err)
		require.Equal(t, int64(1), r.Count)
	}
	emit("first")
	select {
	case m := <-pushes:
		require.Equal(t, "first", m.Payload)
	case <-ctx.Done():
		t.Fatal("no push")
	}
	require.False(t, lc.Unread())

	emit("job")
	require.Eventually(t, lc.Unread, wait, time.Millisecond, "a push in the socket's receive buffer is not counted")
	require.Empty(t, pushes)

	open()
	select {
	case m := <-pushes:
		require.Equal(t, "job", m.Payload)
	case <-ctx.Done():
		t.Fatal("no push")
	}
	require.Eventually(t, func() bool { return !lc.Unread() }, wait, time.Millisecond)
	lc.Destroy()
}
