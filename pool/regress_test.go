package pool

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A caller whose own request is stuck in a write (the server stopped
// reading, the send buffer is full) returns when its context ends, not
// after writeTimeout; the lane connection survives the caller and breaks
// only when the write itself times out.
func TestLaneDoReturnsPromptlyWhileItsWriteStalls(t *testing.T) {
	t.Parallel()
	const writeTimeout = 2 * time.Second
	srv := newServer(t, testutil.Config{})
	var sd stallDialer
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), Dial: sd.dial, LaneConns: 1, writeTimeout: writeTimeout, OnConnBroken: rec.hook})
	_, lane, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	blocked := sd.conn(0).stall()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	_, c, err := p.Do(ctx, lockReq("stalled-write"))
	elapsed := time.Since(begin)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, wire.ErrConnBroken)
	assert.Same(t, lane, c)
	assert.Less(t, elapsed, writeTimeout/2, "the caller's context is honoured during the write")
	<-blocked
	assert.NoError(t, lane.Err(), "a lane connection is not broken because one caller gave up")

	// The write itself is genuinely stalled: writeTimeout breaks the conn.
	ev := rec.next(t)
	assert.Same(t, lane, ev.c)
	assert.ErrorIs(t, ev.err, wire.ErrConnBroken)
	assert.GreaterOrEqual(t, time.Since(begin), writeTimeout-100*time.Millisecond)
}

// On an exclusive connection a context that ends during the write destroys
// the connection at once.
func TestExclusiveDoReturnsPromptlyWhileItsWriteStalls(t *testing.T) {
	t.Parallel()
	const writeTimeout = 2 * time.Second
	srv := newServer(t, testutil.Config{})
	var sd stallDialer
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), Dial: sd.dial, writeTimeout: writeTimeout, OnConnBroken: rec.hook})
	c, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	defer c.Release()
	sd.conn(0).stall()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	_, err = c.Do(ctx, wire.Request{Cmd: wire.CmdLock, Key: "stalled-exclusive", Timeout: 10})
	elapsed := time.Since(begin)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorIs(t, err, wire.ErrConnBroken)
	assert.Less(t, elapsed, writeTimeout/2)
	require.ErrorIs(t, c.Err(), wire.ErrConnBroken)
	assert.Same(t, c, rec.next(t).c)
	assert.Zero(t, p.Stats().AcquiredConns)
}

// A wait-pool dial that fails while the lane connections are healthy (here:
// the server is at --max-connections) fails that call only; the server is
// not marked down and the lane keeps serving.
func TestFailedWaitPoolDialDoesNotFailTheLaneFast(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{MaxConnections: 2})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 2})
	ctx := ctxWait(t)
	_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return p.Stats().LaneConns == 2 }, wait, 5*time.Millisecond)

	_, err = p.Acquire(ctx)
	require.ErrorIs(t, err, ErrUnavailable, "the third connection is refused")
	assert.Contains(t, err.Error(), srv.Addr())
	assert.NoError(t, p.Err(), "the server is not down: its lane connections are healthy")
	assert.True(t, p.Stats().Up)

	r, _, err := p.Do(ctx, lockReq("free-key"))
	require.NoError(t, err, "try-acquire on a free key goes on the healthy lane")
	assert.Equal(t, wire.StatusOK, r.Status)

	// The next Acquire dials again (no fail-fast) and fails on its own.
	failures := p.Stats().DialFailures
	_, err = p.Acquire(ctx)
	require.ErrorIs(t, err, ErrUnavailable)
	assert.Greater(t, p.Stats().DialFailures, failures)
	assert.NoError(t, p.Err())
}

// A lane dial that fails marks the server down (the probe re-dials with
// backoff), but a lane connection that is still healthy keeps serving.
func TestFailedLaneDialKeepsTheHealthyLaneServing(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{MaxConnections: 1})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 2})
	ctx := ctxWait(t)
	// Both lane slots dial; the server keeps one connection and refuses
	// the other (which of the two is a race).
	_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err, "a healthy lane connection serves even if the other slot's dial failed")
	require.Eventually(t, func() bool { return p.Stats().DialFailures > 0 }, wait, 5*time.Millisecond)
	assert.Equal(t, 1, p.Stats().LaneConns)
	for range 20 {
		r, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
		require.NoError(t, err)
		require.Equal(t, wire.StatusOK, r.Status)
	}
	assert.NoError(t, p.Err(), "a server with a healthy lane connection is not reported down")
}

// Close does not wait for a caller that holds an acquired connection that
// broke before Close.
func TestCloseDoesNotWaitForABrokenAcquiredConn(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	rec := newBrokenRecorder()
	p, err := New(Config{Addr: srv.Addr(), OnConnBroken: rec.hook})
	require.NoError(t, err)
	c, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	srv.DropConnections()
	assert.Same(t, c, rec.next(t).c)
	require.ErrorIs(t, c.Err(), wire.ErrConnBroken)

	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		c.Release() // let Close finish so the test ends
		<-done
		t.Fatal("Close waited for the caller to release a broken acquired connection")
	}
	assert.Zero(t, p.Stats().AcquiredConns)
	c.Release() // a no-op after Close
	c.Destroy()
	assert.Zero(t, p.Stats().AcquiredConns)
}

// A connection whose keepalive ping cannot be written (the server stopped
// reading it) does not hold up the janitor: the other connections keep
// getting their pings, and the stalled one is broken after 2·KeepAlive
// without an answer.
func TestStalledConnDoesNotDelayOtherKeepalives(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	var sd stallDialer
	rec := newBrokenRecorder()
	p := newPool(t, Config{
		Addr: srv.Addr(), Dial: sd.dial, LaneConns: 1, KeepAlive: 50 * time.Millisecond,
		writeTimeout: 10 * time.Second, OnConnBroken: rec.hook,
	})
	ctx := ctxWait(t)
	_, lane, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	idle, err := p.Acquire(ctx)
	require.NoError(t, err)
	idle.Release()
	blocked := sd.conn(0).stall() // the lane's next write (a ping) blocks
	select {
	case <-blocked:
	case <-time.After(wait):
		t.Fatal("no keepalive ping on the lane")
	}

	// Only the idle connection's pings reach the server now; they keep
	// coming every KeepAlive although the lane's ping is stuck for up to
	// writeTimeout.
	pings := func() int64 { return srv.Stats().Requests["ping"] }
	before := pings()
	require.Eventually(t, func() bool { return pings() >= before+5 }, 3*time.Second, 5*time.Millisecond,
		"the idle connection's keepalive must not wait behind the stalled lane's write")
	ev := rec.next(t)
	assert.Same(t, lane, ev.c)
	assert.ErrorIs(t, ev.err, errNoReply)
	require.NoError(t, idle.Err())
}

// Keepalive arithmetic saturates: with a KeepAlive so long that now+ka or
// 2·ka would wrap around, an idle connection is not pinged and one with a
// reply pending is not declared stalled.
func TestKeepAliveArithmeticSaturates(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, KeepAlive: time.Duration(math.MaxInt64)})
	ctx := ctxWait(t)
	_, lane, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	const ka = math.MaxInt64/2 + 1

	pings := p.Stats().Pings
	now := p.now()
	assert.Greater(t, lane.(*laneConn).c.keepalive(now, ka), now)
	assert.Equal(t, pings, p.Stats().Pings, "an idle connection is not due for a ping")

	resume := srv.Stall(0)
	defer resume()
	done := make(chan error, 1)
	go func() {
		_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
		done <- err
	}()
	require.Eventually(t, func() bool { return lane.(*laneConn).c.inflight.Load() == 1 }, wait, time.Millisecond)
	assert.Equal(t, int64(math.MaxInt64), lane.(*laneConn).c.keepalive(p.now(), ka))
	require.NoError(t, lane.Err(), "a pending reply is not overdue")
	resume()
	require.NoError(t, <-done)
}
