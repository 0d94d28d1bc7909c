//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

// Callers read their own replies only where the socket can be probed
// (probe_unix.go).

package pool

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// settle brings c to where a caller finds a connection that was busy a
// moment ago — the reader parked, the turn nobody's — and keeps it there
// until a caller sends: the reader would otherwise read again (watch)
// watchDelay after the last write, a delay a loaded one-CPU machine can
// overrun between two statements of a test. It takes c out of the pool's
// quiet watch, as if the reader had never stood aside; a caller that reads
// its own reply puts it back (finishOwn).
func settle(t *testing.T, c *conn) {
	t.Helper()
	ctx := ctxWait(t)
	for ctx.Err() == nil {
		r, _, _, err := c.do(ctx, &pingReq, "")
		require.NoError(t, err)
		require.Equal(t, wire.StatusOK, r.Status)
		for range 100 {
			if freezeWatch(c) {
				return
			}
			runtime.Gosched()
		}
	}
	t.Fatal("the connection never settled with the turn nobody's")
}

func freezeWatch(c *conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.turn != turnNobody || c.q.n != 0 || !c.aside || c.err != nil {
		return false // not parked, or resumed: the reader is about to watch
	}
	c.aside = false // the watch drops c at its next pass
	// A wake left over from earlier would make the parked reader look at
	// the turn again, and watch since watchDelay has passed.
	select {
	case <-c.wake:
	default:
	}
	return true
}

type doResult struct {
	r     wire.Reply
	owner Owner
	err   error
}

func goDo(ctx context.Context, p *Pool, req wire.Request) <-chan doResult {
	ch := make(chan doResult, 1)
	go func() {
		r, o, err := p.Do(ctx, req)
		ch <- doResult{r, o, err}
	}()
	return ch
}

// awaitTurn waits until c's turn is want (the caller took it or handed it
// off).
func awaitTurn(t *testing.T, c *conn, want turn, msg string) {
	t.Helper()
	require.Eventually(t, func() bool { return turnOf(c) == want }, wait, time.Millisecond, msg)
}

// awaitReading waits until a caller has claimed the turn and queued its
// request: it then reads its own reply (or is about to write it). The turn
// alone is not enough: it is the caller's during the probe already.
func awaitReading(t *testing.T, c *conn) {
	t.Helper()
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.turn == turnCaller && c.q.n > 0
	}, wait, time.Millisecond, "a caller reads its own reply")
}

// waitReadable returns once the peer's bytes or its close have reached c's
// socket, without consuming anything.
// ageLastRead makes the last reply read on c older than probeAfter, as on
// a connection quiet for longer: the next caller claiming the turn probes
// the socket.
func ageLastRead(c *conn) {
	c.mu.Lock()
	c.lastRead = c.p.now() - int64(probeAfter) - 1
	c.mu.Unlock()
}

func waitReadable(t *testing.T, c *conn) {
	t.Helper()
	nc := c.wc.NetConn()
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	rc, err := nc.(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	var b [1]byte
	require.NoError(t, rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK
	}))
}

// A Do on a quiet lane connection is read by its caller: it holds the turn
// while it waits for the reply (the reader is parked), gets its reply, and
// leaves the turn nobody's, so the next caller does the same.
func TestTurnCallerReadsItsOwnReply(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	lane, c := laneOf(t, p)
	for i := range 3 {
		settle(t, c)
		resume := srv.Stall(0)
		done := goDo(ctxWait(t), p, lockReq("own"))
		awaitReading(t, c)
		assert.Equal(t, 1, queued(c))
		resume()
		res := result(t, done, "Do")
		require.NoError(t, res.err)
		require.Equal(t, wire.StatusOK, res.r.Status, "round %d", i)
		assert.Same(t, lane, res.owner)
		assert.NotZero(t, holder(srv, "own"))
		assert.Equal(t, 0, queued(c))
		assert.NotEqual(t, turnCaller, turnOf(c), "the caller passed the turn on")
		r, _, err := p.Do(ctxWait(t), wire.ReleaseRequest("own", res.r.Token, false))
		require.NoError(t, err)
		require.Equal(t, wire.StatusOK, r.Status, "the reply was the grant's own")
	}
	require.NoError(t, lane.Err())
	assert.Zero(t, p.Stats().Broken)
}

// Callers that send while another reads its own reply queue behind it; when
// it has its reply it passes the turn to the reader, which reads theirs,
// each its own.
func TestTurnCallersQueuedBehindAReaderGetTheirReplies(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	lane, c := laneOf(t, p)
	settle(t, c)
	resume := srv.Stall(0)
	defer resume()
	keys := []string{"q-0", "q-1", "q-2", "q-3"}
	var dones []<-chan doResult
	for i, key := range keys {
		dones = append(dones, goDo(ctxWait(t), p, lockReq(key)))
		if i == 0 {
			awaitReading(t, c)
		}
		require.Eventually(t, func() bool { return queued(c) == i+1 }, wait, time.Millisecond)
	}
	resume()
	for i, done := range dones {
		res := result(t, done, "Do")
		require.NoError(t, res.err)
		require.Equal(t, wire.StatusOK, res.r.Status)
		assert.Same(t, lane, res.owner)
		r, _, err := p.Do(ctxWait(t), wire.ReleaseRequest(keys[i], res.r.Token, false))
		require.NoError(t, err)
		assert.Equal(t, wire.StatusOK, r.Status, "%s: the grant was its own", keys[i])
	}
	require.NoError(t, lane.Err())
}

// On an acquired wait-pool connection too the caller reads its own reply
// (a blocking acquire's, here). When its context, or the pool's Lifetime,
// ends, it returns at once and the connection is destroyed, which
// withdraws the waiter. (Destroy reports the connection's end to
// Config.OnConnBroken on the caller, as it did before callers read.)
func TestTurnWaitPoolCallerGivesUp(t *testing.T) {
	t.Parallel()
	for _, lifetime := range []bool{false, true} {
		name := "context"
		if lifetime {
			name = "lifetime"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{})
			rec := newBrokenRecorder()
			life, end := context.WithCancel(context.Background())
			defer end()
			p := newPool(t, Config{Addr: srv.Addr(), OnConnBroken: rec.hook, Lifetime: life})
			held, _, err := p.Do(ctxWait(t), lockReq("wp"))
			require.NoError(t, err)
			require.Equal(t, wire.StatusOK, held.Status)

			h, err := p.Acquire(ctxWait(t))
			require.NoError(t, err)
			settle(t, h.c)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := h.Do(ctx, wire.Request{Cmd: wire.CmdLock, Key: "wp", Lease: 30, Timeout: 60})
				done <- err
			}()
			awaitReading(t, h.c)
			require.Eventually(t, func() bool { return waiters(srv, "wp") == 1 }, wait, time.Millisecond)
			if lifetime {
				end()
			} else {
				cancel()
			}
			err = result(t, done, "Do")
			if lifetime {
				require.ErrorIs(t, err, ErrClosed)
			} else {
				require.ErrorIs(t, err, context.Canceled)
			}
			require.ErrorIs(t, err, wire.ErrConnBroken)
			ev := rec.next(t)
			assert.Same(t, h, ev.c)
			require.Eventually(t, func() bool { return waiters(srv, "wp") == 0 }, wait, time.Millisecond, "the waiter is withdrawn")
		})
	}
}

// A caller whose context ends while it reads its own reply from a server
// that does not answer returns at once with the context's error, without
// breaking the lane connection: the reader reads the reply when it comes
// and releases the grant nobody is waiting for; the next caller gets its
// own reply, not that one.
func TestTurnCallerCancelledWhileReadingOwnReply(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, OnConnBroken: rec.hook})
	lane, c := laneOf(t, p)
	settle(t, c)
	resume := srv.Stall(0)
	defer resume()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := goDo(ctx, p, lockReq("abandoned-own"))
	awaitReading(t, c)
	cancel()
	res := result(t, done, "the cancelled Do")
	require.ErrorIs(t, res.err, context.Canceled)
	assert.NotErrorIs(t, res.err, wire.ErrConnBroken)
	assert.Same(t, lane, res.owner)
	require.NoError(t, lane.Err(), "a cancelled caller must not break the lane")
	assert.Equal(t, turnReader, turnOf(c), "the caller handed the turn to the reader")
	assert.Equal(t, 1, queued(c), "the abandoned reply is still expected")

	resume()
	require.Eventually(t, func() bool {
		st := srv.Stats()
		return st.Requests["l"] == 1 && st.Requests["r"] == 1 && holder(srv, "abandoned-own") == 0
	}, wait, time.Millisecond, "the late grant is released")
	r, l, err := p.Do(ctxWait(t), lockReq("next"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	assert.Same(t, lane, l)
	r, _, err = p.Do(ctxWait(t), wire.ReleaseRequest("next", r.Token, false))
	require.NoError(t, err)
	assert.Equal(t, wire.StatusOK, r.Status, "the next caller got its own grant, not the stale one")
	require.NoError(t, lane.Err())
	assert.Empty(t, rec.ch)
}

// When the pool's Config.Lifetime ends, every caller waiting for a reply
// returns with an error matching ErrClosed: the one reading its own reply
// (interrupted), those queued behind it (waiting on their reply channels,
// whether their ctx can end or not: the Lifetime ends those waits itself,
// not through a select), and one arriving afterwards. The connection does
// not break.
func TestTurnLifetimeEndsWaits(t *testing.T) {
	t.Parallel()
	srv, p, lane, c, end, resume := stalledLifetimeLane(t)

	reading := goDo(ctxWait(t), p, lockReq("life-1"))
	awaitReading(t, c)
	queuedDo := goDo(ctxWait(t), p, lockReq("life-2"))
	queuedBg := goDo(context.Background(), p, lockReq("life-4"))
	require.Eventually(t, func() bool { return queued(c) == 3 }, wait, time.Millisecond)
	assert.Equal(t, turnCaller, turnOf(c), "the queued callers wait for the first to pass the turn on")
	end()
	for _, ch := range []<-chan doResult{reading, queuedDo, queuedBg} {
		res := result(t, ch, "a Do when Lifetime ended")
		require.ErrorIs(t, res.err, ErrClosed)
		assert.NotErrorIs(t, res.err, wire.ErrConnBroken)
	}
	res := result(t, goDo(ctxWait(t), p, lockReq("life-3")), "a Do after Lifetime ended")
	require.ErrorIs(t, res.err, ErrClosed)
	require.NoError(t, lane.Err())

	resume()
	require.Eventually(t, func() bool {
		return srv.Stats().Requests["r"] == 4 &&
			holder(srv, "life-1") == 0 && holder(srv, "life-2") == 0 && holder(srv, "life-3") == 0 &&
			holder(srv, "life-4") == 0
	}, wait, time.Millisecond, "the four late grants are released")
	require.NoError(t, lane.Err())
}

// partialServer answers pings at once and a release with "o", then, once
// rest is closed, "k\n": a reply whose end comes late.
func partialServer(t *testing.T) (addr string, wrote <-chan struct{}, rest func()) {
	t.Helper()
	w := make(chan struct{})
	r := make(chan struct{})
	addr = fakeServer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			cmd, err := readRequest(br)
			if err != nil {
				return
			}
			if cmd != wire.CmdRelease.String() {
				_, _ = io.WriteString(c, "ok\n")
				continue
			}
			_, _ = io.WriteString(c, "o")
			close(w)
			<-r
			_, _ = io.WriteString(c, "k\n")
		}
	})
	rest = sync.OnceFunc(func() { close(r) })
	t.Cleanup(rest) // before fakeServer's cleanup waits for the handler
	return addr, w, rest
}

// A reply that begins to arrive without its end is handed to the reader
// (the caller cannot wait for the rest with a read that its context can
// interrupt without losing the line): a cancel still returns at once, and
// without one the caller gets the whole reply.
func TestTurnPartialReplyGoesToTheReader(t *testing.T) {
	t.Parallel()
	relReq := wire.ReleaseRequest("k", "t", false)
	for _, cancelled := range []bool{true, false} {
		name := "completes"
		if cancelled {
			name = "cancelled"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			addr, wrote, rest := partialServer(t)
			rec := newBrokenRecorder()
			p := newPool(t, Config{Addr: addr, LaneConns: 1, OnConnBroken: rec.hook})
			lane, c := laneOf(t, p)
			settle(t, c)
			ctx, cancel := context.WithCancel(ctxWait(t))
			defer cancel()
			done := goDo(ctx, p, relReq)
			result(t, wrote, "the server's half reply")
			awaitTurn(t, c, turnReader, "the caller hands a partial reply to the reader")
			if cancelled {
				cancel()
				res := result(t, done, "the cancelled Do")
				require.ErrorIs(t, res.err, context.Canceled)
				assert.NotErrorIs(t, res.err, wire.ErrConnBroken)
				rest()
			} else {
				rest()
				res := result(t, done, "Do")
				require.NoError(t, res.err)
				assert.Equal(t, wire.StatusOK, res.r.Status)
			}
			require.Eventually(t, func() bool { return queued(c) == 0 }, wait, time.Millisecond)
			r, l, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
			require.NoError(t, err)
			assert.Equal(t, wire.StatusOK, r.Status)
			assert.Same(t, lane, l)
			require.NoError(t, lane.Err())
			assert.Empty(t, rec.ch)
		})
	}
}

// A lane connection the server closed while it was quiet (the reader
// parked, not yet watching) is found by the next caller's probe before
// anything is sent: the reader breaks it — so Config.OnConnBroken runs
// there, once, never on the caller — and the request goes out on a new
// lane connection, without an error.
func TestTurnServerClosedQuietLane(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	rec := newBrokenRecorder()
	returned := make(chan struct{})
	hook := func(o Owner, err error) {
		<-returned // holds the caller forever if it runs on the caller
		rec.hook(o, err)
	}
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, OnConnBroken: hook})
	lane, c := laneOf(t, p)
	settle(t, c)
	srv.DropConnections()
	waitReadable(t, c) // the close reached the socket; the reader did not look
	require.NoError(t, lane.Err())
	ageLastRead(c)

	done := goDo(ctxWait(t), p, lockReq("after-close"))
	var res doResult
	select {
	case res = <-done:
		close(returned)
	case <-time.After(wait):
		close(returned)
		t.Fatal("Do did not return: OnConnBroken ran on the caller?")
	}
	require.NoError(t, res.err, "the unsent request goes to a new lane connection")
	assert.Equal(t, wire.StatusOK, res.r.Status)
	assert.NotSame(t, lane, res.owner)
	assert.NotZero(t, holder(srv, "after-close"))

	ev := rec.next(t)
	assert.Same(t, lane, ev.c)
	assert.ErrorIs(t, ev.err, io.EOF)
	assert.ErrorIs(t, ev.err, ErrUnavailable)
	require.ErrorIs(t, lane.Err(), wire.ErrConnBroken)
	assert.EqualValues(t, 1, p.Stats().Broken)
	assert.EqualValues(t, 1, srv.Stats().Requests["l"], "sent once")
}

// The trade documented at probeAfter: within probeAfter of the last reply
// the caller does not probe, so a close the server made in that window
// fails the request (with the close's error, found by the reader; nothing
// reached the server) rather than sending it on another connection. The
// next request goes to a new connection.
func TestTurnServerCloseWithinProbeAfterFailsTheRequest(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, OnConnBroken: rec.hook})
	lane, c := laneOf(t, p)
	settle(t, c)
	srv.DropConnections()
	waitReadable(t, c)
	c.mu.Lock()
	// As if a reply had just been read, for as long as the test takes: a
	// reading of now would leave the Do below 1 ms (probeAfter) to claim
	// the turn, which a loaded machine does not always manage.
	c.lastRead = c.p.now() + int64(time.Hour)
	c.mu.Unlock()

	_, owner, err := p.Do(ctxWait(t), lockReq("within"))
	require.ErrorIs(t, err, wire.ErrConnBroken)
	assert.ErrorIs(t, err, ErrUnavailable)
	assert.Same(t, lane, owner)
	assert.Same(t, lane, rec.next(t).c)
	assert.Zero(t, holder(srv, "within"))

	r, owner, err := p.Do(ctxWait(t), lockReq("within"))
	require.NoError(t, err)
	assert.Equal(t, wire.StatusOK, r.Status)
	assert.NotSame(t, lane, owner)
}

// Owner.Request: answered on an idle lane connection (also while its
// caller reads the reply itself); with a context that has ended it is
// still sent and late gets the answer, exactly once; on a broken
// connection it is answered with the error.
func TestTurnOwnerRequest(t *testing.T) {
	t.Parallel()
	type lateCall struct {
		r   wire.Reply
		err error
	}
	type fixture struct {
		srv   *testutil.Server
		p     *Pool
		c     *conn
		owner Owner
		rel   wire.Request // releases the lease granted on owner
		late  func(int, wire.Reply, error)
		calls chan lateCall
		n     atomic.Int32 // late calls
		// OnConnBroken waits until returned is called (at the latest at
		// cleanup), so that a call returning before that shows that it
		// did not run on the caller.
		returned func()
	}
	setup := func(t *testing.T, key string) *fixture {
		f := &fixture{srv: newServer(t, testutil.Config{}), calls: make(chan lateCall, 4)}
		ret := make(chan struct{})
		f.returned = sync.OnceFunc(func() { close(ret) })
		f.p = newPool(t, Config{Addr: f.srv.Addr(), LaneConns: 1, OnConnBroken: func(Owner, error) { <-ret }})
		t.Cleanup(f.returned) // before the pool's Close, which breaks the lane
		r, owner, err := f.p.Do(ctxWait(t), lockReq(key))
		require.NoError(t, err)
		require.Equal(t, wire.StatusOK, r.Status)
		require.NotZero(t, holder(f.srv, key))
		f.owner, f.c = owner, owner.(*laneConn).c
		f.rel = wire.ReleaseRequest(key, r.Token, false)
		f.late = func(_ int, r wire.Reply, err error) {
			f.n.Add(1)
			f.calls <- lateCall{r, err}
		}
		return f
	}

	type reqResult struct {
		r        wire.Reply
		answered bool
		err      error
	}
	goRequest := func(ctx context.Context, f *fixture) <-chan reqResult {
		ch := make(chan reqResult, 1)
		go func() {
			r, answered, err := f.owner.Request(ctx, f.rel, f.late)
			ch <- reqResult{r, answered, err}
		}()
		return ch
	}

	t.Run("answered", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "req-answered")
		settle(t, f.c)
		r, answered, err := f.owner.Request(ctxWait(t), f.rel, f.late)
		require.NoError(t, err)
		assert.True(t, answered)
		assert.Equal(t, wire.StatusOK, r.Status)
		assert.Zero(t, holder(f.srv, "req-answered"))
		assert.Zero(t, f.n.Load())
	})

	t.Run("answered while the caller reads", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "req-reads")
		settle(t, f.c)
		resume := f.srv.Stall(0)
		defer resume()
		done := goRequest(ctxWait(t), f)
		awaitReading(t, f.c)
		resume()
		res := result(t, done, "Request")
		require.NoError(t, res.err)
		assert.True(t, res.answered)
		assert.Equal(t, wire.StatusOK, res.r.Status)
		assert.Zero(t, holder(f.srv, "req-reads"))
		assert.Zero(t, f.n.Load())
	})

	for _, tc := range []struct {
		name   string
		during bool // the context ends while the caller reads, not before
	}{{"ended context", false}, {"context ends while the caller reads", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := setup(t, "req-late")
			settle(t, f.c)
			resume := f.srv.Stall(0)
			defer resume()
			ctx, cancel := context.WithCancel(context.Background())
			if !tc.during {
				cancel()
			}
			defer cancel()
			done := goRequest(ctx, f)
			if tc.during {
				awaitReading(t, f.c)
				cancel()
			}
			res := result(t, done, "Request")
			require.ErrorIs(t, res.err, context.Canceled)
			assert.False(t, res.answered)
			resume()
			lc := result(t, f.calls, "late")
			require.NoError(t, lc.err)
			assert.Equal(t, wire.StatusOK, lc.r.Status)
			assert.Zero(t, holder(f.srv, "req-late"), "sent although the context had ended")
			// A second late call would come from the reader before it
			// reads the next reply.
			_, _, err := f.p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
			require.NoError(t, err)
			assert.EqualValues(t, 1, f.n.Load())
			require.NoError(t, f.owner.Err())
		})
	}

	t.Run("broken before", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "req-broken")
		settle(t, f.c)
		f.srv.DropConnections()
		waitReadable(t, f.c)
		ageLastRead(f.c) // found by the probe: nothing is sent
		res := result(t, goRequest(ctxWait(t), f), "Request (OnConnBroken ran on the caller?)")
		f.returned()
		assert.True(t, res.answered)
		require.ErrorIs(t, res.err, wire.ErrConnBroken)
		assert.Equal(t, wire.Reply{}, res.r)
		assert.Zero(t, f.n.Load())
	})

	t.Run("breaks while the caller reads", func(t *testing.T) {
		t.Parallel()
		f := setup(t, "req-breaks")
		settle(t, f.c)
		resume := f.srv.Stall(0)
		defer resume()
		done := goRequest(ctxWait(t), f)
		awaitReading(t, f.c)
		f.srv.DropConnections()
		res := result(t, done, "Request (OnConnBroken ran on the caller?)")
		f.returned()
		assert.True(t, res.answered)
		require.ErrorIs(t, res.err, wire.ErrConnBroken)
		assert.Zero(t, f.n.Load())
		require.ErrorIs(t, f.owner.Err(), wire.ErrConnBroken)
	})
}

// A malformed reply that its caller read fails the call and breaks the
// connection, on the reader: Config.OnConnBroken does not run on the
// caller.
func TestTurnMalformedOwnReplyBreaksOnTheReader(t *testing.T) {
	t.Parallel()
	addr := fakeServer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			cmd, err := readRequest(br)
			if err != nil {
				return
			}
			reply := "ok\n"
			if cmd == wire.CmdRelease.String() {
				reply = "what?\n"
			}
			if _, err := io.WriteString(c, reply); err != nil {
				return
			}
		}
	})
	rec := newBrokenRecorder()
	returned := make(chan struct{})
	release := sync.OnceFunc(func() { close(returned) })
	t.Cleanup(release)
	hook := func(o Owner, err error) {
		<-returned // holds the caller forever if it runs on the caller
		rec.hook(o, err)
	}
	p := newPool(t, Config{Addr: addr, LaneConns: 1, OnConnBroken: hook})
	lane, c := laneOf(t, p)
	settle(t, c)
	res := result(t, goDo(ctxWait(t), p, wire.ReleaseRequest("k", "t", false)), "Do (OnConnBroken ran on the caller?)")
	release()
	require.ErrorIs(t, res.err, wire.ErrConnBroken)
	require.ErrorIs(t, res.err, wire.ErrProtocol)
	assert.Same(t, lane, res.owner)
	ev := rec.next(t)
	assert.Same(t, lane, ev.c)
	assert.ErrorIs(t, ev.err, wire.ErrProtocol)
}

// The reader watches a connection quiet for watchDelay — also after a
// caller read the last reply itself — so that a server closing it is
// noticed (and reported) without any request.
func TestTurnReaderWatchesAfterQuiet(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, OnConnBroken: rec.hook})
	lane, c := laneOf(t, p)
	settle(t, c)
	resume := srv.Stall(0)
	done := goDo(ctxWait(t), p, wire.Request{Cmd: wire.CmdPing})
	awaitReading(t, c)
	resume()
	require.NoError(t, result(t, done, "Do").err)

	awaitTurn(t, c, turnReader, "the reader watches once the connection is quiet")
	srv.DropConnections()
	ev := rec.next(t)
	assert.Same(t, lane, ev.c)
	assert.ErrorIs(t, ev.err, ErrUnavailable)
	require.ErrorIs(t, lane.Err(), wire.ErrConnBroken)
}

// A line the server sends unasked on a quiet lane connection (here a second
// reply to one request) must not be taken for the reply to the next
// request: that request gets the server's own answer to it. Before callers
// read their own replies the reader was always reading, found the stray
// line with nothing pending and broke the connection, and the next request
// went to a new one. Now the stray line waits, unread, while the reader
// stands aside after activity; it came with the reply, so the next caller
// finds it buffered when it claims the turn, breaks the connection (on the
// reader) and the request goes to a new one. (It once handed the turn to
// the reader but enqueued its request first, and the reader matched the
// stray line to it.)
func TestTurnStrayLineIsNotTheNextReply(t *testing.T) {
	t.Parallel()
	var releases atomic.Int32
	addr := fakeServer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			cmd, err := readRequest(br)
			if err != nil {
				return
			}
			switch {
			case cmd != wire.CmdRelease.String():
				_, _ = io.WriteString(c, "ok\n")
			case releases.Add(1) == 1:
				_, _ = io.WriteString(c, "ok\nok\n") // one reply too many
			default:
				_, _ = io.WriteString(c, "error\n")
			}
		}
	})
	p := newPool(t, Config{Addr: addr, LaneConns: 1})
	_, c := laneOf(t, p)
	settle(t, c)
	r, _, err := p.Do(ctxWait(t), wire.ReleaseRequest("k", "t1", false))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	require.True(t, freezeWatch(c), "the caller read its reply; the reader stands aside")

	r, _, err = p.Do(ctxWait(t), wire.ReleaseRequest("k", "t2", false))
	require.NoError(t, err, "the request goes to a new connection, unsent on the one with the stray line")
	assert.Equal(t, wire.StatusError, r.Status, "the reply to the second release is the server's answer to it, not the stray line")
}

// tlsServer answers every request "ok" over TLS; drop closes the
// connections open so far as a Go server does, with a close_notify alert
// before the FIN.
func tlsServer(t *testing.T, certs *testutil.TLSCerts) (addr string, drop func()) {
	return tlsFakeServer(t, certs, nil, func(c *tls.Conn, _ net.Conn, br *bufio.Reader) {
		for {
			if _, err := readRequest(br); err != nil {
				return
			}
			if _, err := io.WriteString(c, "ok\n"); err != nil {
				return
			}
		}
	})
}

// tlsFakeServer is fakeServer over TLS: handle serves each connection, c
// over under, the accepted TCP connection as wrap (if not nil) wrapped it
// to shape how records leave. drop closes the connections open so far with
// a close_notify alert before the FIN, as a Go server does.
func tlsFakeServer(t *testing.T, certs *testutil.TLSCerts, wrap func(net.Conn) net.Conn,
	handle func(c *tls.Conn, under net.Conn, br *bufio.Reader)) (addr string, drop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	drop = func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
		conns = nil
	}
	t.Cleanup(func() { _ = ln.Close(); drop(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			under, err := ln.Accept()
			if err != nil {
				return
			}
			if wrap != nil {
				under = wrap(under)
			}
			c := tls.Server(under, certs.ServerConfig())
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c, under, bufio.NewReader(c))
			}()
		}
	}()
	return ln.Addr().String(), drop
}

// As TestTurnServerClosedQuietLane, over TLS: a Go server closing a TLS
// connection sends a close_notify alert before its FIN, so the probe sees
// bytes, not yet the close; an alert record must count as the close (it
// was taken for bytes for the reader, and the request was written on the
// closing connection and failed with it). Under TLS 1.3 (crypto/tls's
// default) every record after the handshake, the alert included, has the
// outer type application_data, and the close must not be reported as a
// protocol violation either (errStrayBytes; it was, until review found it).
func TestTurnServerClosedQuietTLSLane(t *testing.T) {
	t.Parallel()
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	addr, drop := tlsServer(t, certs)
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: addr, TLS: certs.ClientConfig(), LaneConns: 1, OnConnBroken: rec.hook})
	lane, c := laneOf(t, p)
	settle(t, c)
	drop()
	waitReadable(t, c) // the alert (and FIN) reached the socket; the reader did not look
	require.NoError(t, lane.Err())
	ageLastRead(c)

	r, owner, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err, "nothing was answered on the closed connection: the request belongs on a new one")
	assert.Equal(t, wire.StatusOK, r.Status)
	assert.NotSame(t, lane, owner)
	ev := rec.next(t)
	assert.Same(t, lane, ev.c)
	assert.NotErrorIs(t, ev.err, errStrayBytes, "a close_notify is not a protocol violation: %v", ev.err)
	assert.True(t, errors.Is(ev.err, errTLSRecord) || errors.Is(ev.err, errTLSAlert) || errors.Is(ev.err, io.EOF),
		"the break reads as the server's close: %v", ev.err)
}

// A caller that claims the turn probes the socket without the lock held;
// another goroutine may meanwhile queue a request on the same connection
// (the turn is taken, so it waits for the reader) and write it, and its
// reply may be in the socket by the time the probe looks. Those bytes are
// that request's reply, not stray ones: the connection must not break, and
// both requests are answered on it. (The probe once took them for stray
// bytes and broke the connection: seen once under load in the headline
// benchmark's warm-up, 64 goroutines on freshly dialled lanes.)
// Under TLS 1.3 those replies are application-data records, which the
// probe of an idle connection takes for the server's close_notify
// (errTLSRecord): the same rule applies.
func TestTurnProbeLeavesRepliesOfRequestsQueuedMeanwhile(t *testing.T) {
	t.Parallel()
	t.Run("tcp", func(t *testing.T) { t.Parallel(); testProbeLeavesQueuedReplies(t, false) })
	t.Run("tls", func(t *testing.T) { t.Parallel(); testProbeLeavesQueuedReplies(t, true) })
}

func testProbeLeavesQueuedReplies(t *testing.T, useTLS bool) {
	cfg, pcfg := testutil.Config{}, Config{LaneConns: 1}
	if useTLS {
		certs, err := testutil.NewTLSCerts()
		require.NoError(t, err)
		cfg.TLS, pcfg.TLS = certs.ServerConfig(), certs.ClientConfig()
	}
	srv := newServer(t, cfg)
	rec := newBrokenRecorder()
	pcfg.Addr, pcfg.OnConnBroken = srv.Addr(), rec.hook
	p := newPool(t, pcfg)
	lane, c := laneOf(t, p)
	settle(t, c)
	ageLastRead(c) // so that the next claim probes
	ctx := ctxWait(t)
	other := make(chan doResult, 1)
	c.mu.Lock()
	c.beforeProbe = func() {
		c.mu.Lock()
		c.beforeProbe = nil
		c.mu.Unlock()
		go func() {
			r, o, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
			other <- doResult{r, o, err}
		}()
		// Its reply is in the socket before the probe looks.
		require.Eventually(t, func() bool { return queued(c) == 1 }, wait, time.Millisecond)
		waitReadable(t, c)
	}
	c.mu.Unlock()

	r, owner, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	assert.Equal(t, wire.StatusOK, r.Status)
	assert.Same(t, lane, owner, "answered on the same connection, not a new one")
	o := result(t, other, "the other Do")
	require.NoError(t, o.err)
	assert.Equal(t, wire.StatusOK, o.r.Status)
	assert.Same(t, lane, o.owner)
	require.NoError(t, lane.Err(), "the connection is not broken")
	assert.Empty(t, rec.ch, "nothing reported broken")
}

// An ended context reports so at once, whatever the timing: a request
// whose reply is read and delivered before its caller looks is still not
// answered, and late receives the reply. (The caller used to wait like any
// other, and one descheduled after queueing its request could find the
// reply there: seen once as a failure of dflock's
// TestReleaseWithEndedContextStillReleases.)
func TestOwnerRequestWithEndedContextIsNeverAnswered(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	lane, c := laneOf(t, p)
	resume := srv.Stall(0)
	defer resume()
	// A batch ahead keeps the turn the reader's, as on a busy lane.
	batch := make(chan error, 1)
	lane.SendBatch([]wire.Request{{Cmd: wire.CmdPing}}, func(_ int, _ wire.Reply, err error) { batch <- err })
	// The caller is descheduled once its request is queued, until the
	// reader has read and delivered every reply.
	c.afterRequestSent = func() {
		resume()
		require.Eventually(t, func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.q.n == 0
		}, wait, time.Millisecond)
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	late := make(chan wire.Reply, 1)
	_, answered, err := lane.Request(ended, wire.Request{Cmd: wire.CmdPing}, func(_ int, r wire.Reply, err error) {
		assert.NoError(t, err)
		late <- r
	})
	assert.False(t, answered)
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, wire.StatusOK, result(t, late, "late").Status)
	require.NoError(t, result(t, batch, "the batch"))
}

// A caller reading its own reply whose connection a write broke with a
// timeout (the flush goroutine's write to a server that stopped reading,
// past Config's write timeout) returns with the break. The broken
// wire.Conn's error wraps the write's os.ErrDeadlineExceeded, which the
// caller took for its own interrupted wait: it cleared the deadline and
// waited again, spinning until its context ended.
func TestTurnCallerReturnsWhenAWriteTimeoutBreaksTheConn(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	lane, c := laneOf(t, p)
	settle(t, c)
	resume := srv.Stall(0)
	defer resume()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := goDo(ctx, p, lockReq("write-timeout"))
	awaitReading(t, c)
	// Its own request written, too: the caller that claimed the turn
	// writes it itself first, and the past deadline below must not cut
	// that write (the request would count as unsent, and Do would retry
	// it on a fresh dial to the stalled server).
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.bufN == 0 && !c.flushing
	}, wait, time.Millisecond, "the caller's request written")
	require.NoError(t, c.wc.SetWriteDeadline(time.Unix(1, 0)))
	werr := c.wc.WriteRequests(pingReq)
	require.ErrorIs(t, werr, os.ErrDeadlineExceeded)
	res := result(t, done, "the Do whose connection broke")
	require.ErrorIs(t, res.err, wire.ErrConnBroken)
	assert.NoError(t, ctx.Err())
	require.Eventually(t, func() bool { return lane.Err() != nil }, wait, time.Millisecond, "the lane is failed")
}

// A caller that queues its request while another, claiming the turn,
// probes the socket waits for the reader like any other; when the pool's
// Lifetime ends then, its wait ends too (ErrClosed), although the turn is
// a caller's and its call is first in the queue. (The Lifetime once took
// the first call of a queue whose turn was a caller's for that caller's,
// and left this one waiting for a reply the stalled server never sent.)
func TestTurnLifetimeEndsAWaitQueuedDuringAProbe(t *testing.T) { // not parallel: looks for its waiter in every goroutine's stack
	srv, p, _, c, end, resume := stalledLifetimeLane(t)
	ageLastRead(c) // so that the next claim probes

	queuedDo := make(chan (<-chan doResult), 1)
	ended := make(chan struct{})
	letProbe := sync.OnceFunc(func() { close(ended) })
	defer letProbe()
	c.mu.Lock()
	c.beforeProbe = func() {
		c.mu.Lock()
		c.beforeProbe = nil
		c.mu.Unlock()
		queuedDo <- goDo(context.Background(), p, lockReq("probe-window"))
		require.Eventually(t, func() bool { return queued(c) == 1 }, wait, time.Millisecond)
		assert.Equal(t, turnCaller, turnOf(c), "the prober holds the turn")
		require.Eventually(t, func() bool { return waitingInAwait() }, wait, time.Millisecond,
			"the queued caller waits for its reply")
		end()
		<-ended
	}
	c.mu.Unlock()

	prober := goDo(context.Background(), p, wire.Request{Cmd: wire.CmdPing})
	q := <-queuedDo
	res := result(t, q, "a Do queued during a probe when Lifetime ended")
	require.ErrorIs(t, res.err, ErrClosed)
	letProbe()
	res = result(t, prober, "the prober's Do after Lifetime ended")
	require.ErrorIs(t, res.err, ErrClosed)
	resume()
	require.Eventually(t, func() bool { return holder(srv, "probe-window") == 0 }, wait, time.Millisecond,
		"the late grant is released")
}

// waitingInAwait reports whether a goroutine is blocked in conn.await,
// waiting for the reader to deliver its reply.
func waitingInAwait() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if (strings.Contains(g, "[chan receive") || strings.Contains(g, "[select")) &&
			strings.Contains(g, "pool.(*conn).await(") {
			return true
		}
	}
	return false
}

// A call whose wait the pool's Lifetime ended, before its caller started
// waiting, carries the token that ended it until that caller takes it; the
// reader, which hands the late reply to the call's late callback, must not
// recycle the call meanwhile: the next request to get it would find the
// token and take it for the end of its own wait.
func TestTurnLifetimeEndedCallIsNotRecycledWithItsToken(t *testing.T) {
	t.Parallel()
	_, p, lane, c, end, resume := stalledLifetimeLane(t)

	var cl *call
	sent := make(chan struct{})
	proceed := make(chan struct{})
	letGo := sync.OnceFunc(func() { close(proceed) })
	defer letGo()
	c.afterRequestSent = func() { // set before the one request that runs it
		c.mu.Lock()
		cl = c.q.at(c.q.n - 1)
		c.mu.Unlock()
		close(sent)
		<-proceed
	}
	// The first caller reads its own reply; the second waits for the
	// reader, and is held after queueing its request, before it waits.
	reading := goDo(ctxWait(t), p, lockReq("recycle-1"))
	awaitReading(t, c)
	type reqResult struct {
		answered bool
		err      error
	}
	held := make(chan reqResult, 1)
	late := make(chan wire.Reply, 1)
	go func() {
		_, answered, err := lane.Request(context.Background(), lockReq("recycle-2"), func(_ int, r wire.Reply, _ error) { late <- r })
		held <- reqResult{answered, err}
	}()
	result(t, sent, "the held caller's request")
	end()
	res := result(t, reading, "the caller reading its own reply when Lifetime ended")
	require.ErrorIs(t, res.err, ErrClosed)
	resume()
	assert.Equal(t, wire.StatusOK, result(t, late, "the late reply").Status)
	assert.False(t, cl.state.Load() == stateWaiting && len(cl.done) > 0,
		"the call went back to the pool with the Lifetime's token in it")
	letGo()
	hr := result(t, held, "the held caller after Lifetime ended")
	assert.False(t, hr.answered)
	require.ErrorIs(t, hr.err, ErrClosed)
}

// stalledLifetimeLane starts a server and a pool with one lane connection,
// settled, whose Config.Lifetime end ends; the server is stalled (it reads
// requests and answers none) until resume. Both are also undone at cleanup.
func stalledLifetimeLane(t *testing.T) (srv *testutil.Server, p *Pool, lane *laneConn, c *conn, end context.CancelFunc, resume func()) {
	t.Helper()
	srv = newServer(t, testutil.Config{})
	life, end := context.WithCancel(context.Background())
	t.Cleanup(end)
	p = newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, Lifetime: life})
	lane, c = laneOf(t, p)
	settle(t, c)
	resume = srv.Stall(0)
	t.Cleanup(resume)
	return srv, p, lane, c, end, resume
}
