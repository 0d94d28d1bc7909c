package pool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// requireServerBreak checks the error of a break the server (or the network)
// caused: ErrUnavailable and wire.ErrConnBroken, naming the server.
func requireServerBreak(t *testing.T, err error, addr string, msgAndArgs ...any) {
	t.Helper()
	require.ErrorIs(t, err, ErrUnavailable, msgAndArgs...)
	require.ErrorIs(t, err, wire.ErrConnBroken, msgAndArgs...)
	assert.Contains(t, err.Error(), addr, msgAndArgs...)
}

// allWritten reports whether c has n requests in flight, all written (a
// request still queued when the connection breaks is sent again elsewhere:
// on one CPU the flush goroutine may not have run yet).
func allWritten(c *conn, n int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.q.n == n && c.onWireLocked() == n && !c.flushing
}

// writtenState describes what allWritten looks at, for a failure message.
func writtenState(c *conn) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("in flight %d, on the wire %d, flushing %v, err %v", c.q.n, c.onWireLocked(), c.flushing, c.err)
}

// A connection reset by the server's side reaches callers through every path
// that can notice it first — a lane Do waiting for its reply, a wait-pool
// exchange, SendBatch callbacks, a listener's onBroken, OnConnBroken — and
// every one of them matches ErrUnavailable while still wrapping the network
// error.
func TestServerResetMatchesErrUnavailableOnEveryPath(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	proxy, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: proxy.Addr(), LaneConns: 1, OnConnBroken: rec.hook})
	ctx := ctxWait(t)

	_, lane, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	// Every request must be on the wire at the reset: the lane's pace
	// would hold later ones back behind the first unanswered one unless
	// its last measurement says pipeline (on a loaded machine, not
	// always).
	lnc := lane.(*laneConn).c
	lnc.mu.Lock()
	lnc.oneBatch = false
	lnc.mu.Unlock()
	excl, err := p.Acquire(ctx)
	require.NoError(t, err)
	defer excl.Release()
	listenerBroken := make(chan error, 1)
	lc, err := p.DialListener(ctx, func(wire.Push) {}, func(err error) { listenerBroken <- err })
	require.NoError(t, err)
	defer lc.Destroy()

	// Nothing gets through any more, so every request stays in flight
	// until the reset.
	proxy.Blackhole(true)
	laneErr := make(chan error, 1)
	go func() {
		_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
		laneErr <- err
	}()
	exclErr := make(chan error, 1)
	go func() {
		_, err := excl.Do(ctx, wire.Request{Cmd: wire.CmdLock, Key: "k", Timeout: 30})
		exclErr <- err
	}()
	batchErrs := make(chan error, 2)
	lane.SendBatch([]wire.Request{{Cmd: wire.CmdPing}, {Cmd: wire.CmdPing}}, func(_ int, _ wire.Reply, err error) {
		batchErrs <- err
	})
	var last atomic.Value // what the condition last saw, for the failure message
	if !assert.Eventually(t, func() bool {
		last.Store("lane " + writtenState(lane.(*laneConn).c) + "; exclusive " + writtenState(excl.c))
		return allWritten(lane.(*laneConn).c, 3) && allWritten(excl.c, 1)
	}, wait, 5*time.Millisecond) {
		t.Fatalf("precondition: every request is written and in flight: %v", last.Load())
	}

	proxy.ResetAll()
	err = <-laneErr
	requireServerBreak(t, err, proxy.Addr(), "lane Do")
	assert.ErrorIs(t, err, syscall.ECONNRESET, "the network error is still wrapped")
	requireServerBreak(t, <-exclErr, proxy.Addr(), "wait-pool exchange")
	requireServerBreak(t, <-batchErrs, proxy.Addr(), "SendBatch")
	requireServerBreak(t, <-batchErrs, proxy.Addr(), "SendBatch")
	requireServerBreak(t, <-listenerBroken, proxy.Addr(), "listener")
	for range 3 {
		requireServerBreak(t, rec.next(t).err, proxy.Addr(), "OnConnBroken")
	}
	requireServerBreak(t, lane.Err(), proxy.Addr(), "Conn.Err")
}

// A call made right after the server went away matches ErrUnavailable,
// whether its own write or read notices the dead connection, or the lane
// redials and fails.
func TestCallRightAfterServerStopMatchesErrUnavailable(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	ctx := ctxWait(t)
	_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	excl, err := p.Acquire(ctx)
	require.NoError(t, err)
	defer excl.Release()

	require.NoError(t, srv.Stop())
	_, _, err = p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	requireServerBreakOrDown(t, err, srv.Addr())
	_, err = excl.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	requireServerBreak(t, err, srv.Addr())
}

func requireServerBreakOrDown(t *testing.T, err error, addr string) {
	t.Helper()
	require.ErrorIs(t, err, ErrUnavailable)
	assert.Contains(t, err.Error(), addr)
}

// A keepalive that finds a connection stalled breaks it with an error that
// matches ErrUnavailable; so does a write that times out (a request it did
// not write goes out on another connection).
func TestStallAndWriteTimeoutMatchErrUnavailable(t *testing.T) {
	t.Parallel()
	t.Run("keepalive", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, testutil.Config{})
		rec := newBrokenRecorder()
		p := newPool(t, Config{Addr: srv.Addr(), KeepAlive: 50 * time.Millisecond, LaneConns: 1, OnConnBroken: rec.hook})
		_, lane, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
		require.NoError(t, err)
		defer srv.Stall(0)() // the server stops reading: the next ping is never answered
		ev := rec.next(t)
		assert.Same(t, lane, ev.c)
		assert.ErrorIs(t, ev.err, errNoReply)
		requireServerBreak(t, ev.err, srv.Addr())
	})
	t.Run("write timeout", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, testutil.Config{})
		var sd stallDialer
		rec := newBrokenRecorder()
		p := newPool(t, Config{Addr: srv.Addr(), Dial: sd.dial, LaneConns: 1, writeTimeout: 50 * time.Millisecond,
			KeepAlive: time.Hour, OnConnBroken: rec.hook})
		_, lane, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
		require.NoError(t, err)
		sd.conn(0).stall()
		_, owner, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
		// The write timed out having written nothing: the request went
		// out again on a new lane connection.
		require.NoError(t, err)
		assert.NotSame(t, lane, owner)
		ev := rec.next(t)
		assert.Same(t, lane, ev.c)
		requireServerBreak(t, ev.err, srv.Addr())
		require.ErrorIs(t, ev.err, os.ErrDeadlineExceeded, "the timeout is wrapped")
	})
}

// A grant whose token the client could not send back breaks the connection
// (the server releases the grant with it) with a protocol error that
// matches ErrUnavailable.
func TestHostileGrantTokenBreaksTheConn(t *testing.T) {
	t.Parallel()
	closed := make(chan struct{})
	addr := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
		if _, err := readRequest(r); err != nil { // handshake ping
			return
		}
		_, _ = io.WriteString(c, "ok\n")
		if _, err := readRequest(r); err != nil {
			return
		}
		_, _ = io.WriteString(c, "ok tok\u00a0en 33\n")
		_, _ = io.Copy(io.Discard, r)
		close(closed) // the client closed the connection
	})
	p := newPool(t, Config{Addr: addr, LaneConns: 1})
	_, _, err := p.Do(ctxWait(t), lockReq("k"))
	requireServerBreak(t, err, addr)
	require.ErrorIs(t, err, wire.ErrProtocol)
	assert.Contains(t, err.Error(), "grant token")
	select {
	case <-closed:
	case <-time.After(wait):
		t.Fatal("the connection that carried the hostile grant stayed open")
	}
}

// Breaks the client makes do not claim the server is unavailable: a wait
// withdrawn because the caller's context ended, Destroy, Release of a pinned
// connection, and Close.
func TestLocalBreaksDoNotMatchErrUnavailable(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	rec := newBrokenRecorder()
	p, err := New(Config{Addr: srv.Addr(), LaneConns: 1, OnConnBroken: rec.hook})
	require.NoError(t, err)
	ctx := ctxWait(t)
	held, _, err := p.Do(ctx, lockReq("held"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, held.Status)

	localOnly := func(err error, what string) {
		t.Helper()
		require.ErrorIs(t, err, wire.ErrConnBroken, what)
		assert.NotErrorIs(t, err, ErrUnavailable, what)
	}

	withdrawn, err := p.Acquire(ctx)
	require.NoError(t, err)
	short, cancel := context.WithCancel(ctx)
	defer cancel()
	waitErr := make(chan error, 1)
	go func() {
		_, err := withdrawn.Do(short, wire.Request{Cmd: wire.CmdLock, Key: "held", Timeout: 30})
		waitErr <- err
	}()
	require.Eventually(t, func() bool { return waiters(srv, "held") == 1 }, wait, 5*time.Millisecond)
	cancel()
	err = <-waitErr
	require.ErrorIs(t, err, context.Canceled)
	localOnly(err, "withdrawn wait")
	localOnly(withdrawn.Err(), "withdrawn wait: Conn.Err")
	localOnly(rec.next(t).err, "withdrawn wait: OnConnBroken")

	destroyed, err := p.Acquire(ctx)
	require.NoError(t, err)
	destroyed.Destroy()
	localOnly(destroyed.Err(), "Destroy")
	localOnly(rec.next(t).err, "Destroy: OnConnBroken")

	pinned, err := p.Acquire(ctx)
	require.NoError(t, err)
	pinned.Pin()
	pinned.Release()
	localOnly(pinned.Err(), "Release of a pinned conn")
	localOnly(rec.next(t).err, "Release: OnConnBroken")

	out, err := p.Acquire(ctx)
	require.NoError(t, err)
	p.Close()
	for range 2 { // the lane and out
		ev := rec.next(t)
		localOnly(ev.err, "Close")
		assert.ErrorIs(t, ev.err, ErrClosed)
	}
	_, err = out.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.True(t, errors.Is(err, ErrClosed))
	assert.NotErrorIs(t, err, ErrUnavailable)
}

// A failed lane dial marks the server down although other connections
// live (a server at its connection cap refuses one more): new dials then
// wait for the probe, but Acquire still takes an idle connection at hand
// rather than failing fast. With none idle it fails fast, without dialling.
func TestAcquireWhileDownTakesAnIdleConn(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	var refuse atomic.Bool
	var dials atomic.Int64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		if refuse.Load() {
			return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	p := newPool(t, Config{Addr: srv.Addr(), Dial: dial, LaneConns: 1})
	ctx := ctxWait(t)
	_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	h, err := p.Acquire(ctx)
	require.NoError(t, err)
	h.Release() // idle, healthy

	refuse.Store(true)
	p.lanes[0].conn.Load().c.fail(errors.New("test: lane broken"))
	_, _, err = p.Do(ctx, wire.Request{Cmd: wire.CmdPing}) // its redial is refused
	require.ErrorIs(t, err, ErrUnavailable)
	require.Error(t, p.usable(), "the failed lane dial marked the server down")

	h, err = p.Acquire(ctx)
	require.NoError(t, err, "Acquire failed fast with an idle connection at hand")
	r, err := h.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)

	before := dials.Load()
	_, err = p.Acquire(ctx) // none idle now
	require.ErrorIs(t, err, ErrUnavailable)
	// The probe may dial meanwhile (it backs off from ≥ 50 ms), Acquire not.
	assert.LessOrEqual(t, dials.Load()-before, int64(1))
	h.Release()
}
