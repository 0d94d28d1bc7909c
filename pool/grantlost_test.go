//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// The tests here look at every goroutine's stack, so they are not
// parallel: another test's readers and callers would match.

// blockedIn reports whether some goroutine waits for a mutex that fn
// itself locks (not a function fn calls).
func blockedIn(fn string) bool {
	buf := make([]byte, 1<<20)
	lines := strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n")
	for i, l := range lines {
		// A frame is a function line, then its file line.
		if strings.HasPrefix(l, "sync.(*Mutex).Lock(") && i+2 < len(lines) && strings.Contains(lines[i+2], fn+"(") {
			return true
		}
	}
	return false
}

// waitsOnTheSocket reports whether a goroutine in fn is in a read that
// waits for the network.
func waitsOnTheSocket(fn string) bool {
	buf := make([]byte, 1<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, fn+"(") && strings.Contains(g, "runtime_pollWait") {
			return true
		}
	}
	return false
}

// breakAsTheGrantIsRead holds c.mu while fail (the keepalive's verdict,
// say) queues on it, lets the stalled grant arrive, waits until whoever
// read it (inFn) queues on c.mu behind fail, and lets both go: the
// connection breaks between the grant's read and its delivery.
func breakAsTheGrantIsRead(t *testing.T, c *conn, resume func(), inFn string) {
	t.Helper()
	c.mu.Lock()
	failed := make(chan struct{})
	go func() { c.fail(errNoReply); close(failed) }()
	for !blockedIn("(*conn).fail") {
		time.Sleep(time.Millisecond)
	}
	resume()
	deadline := time.Now().Add(wait)
	for !blockedIn(inFn) {
		if time.Now().After(deadline) {
			c.mu.Unlock()
			t.Fatalf("nobody read the grant (%s)", inFn)
		}
		time.Sleep(time.Millisecond)
	}
	// A goroutine seen in Mutex.Lock may still be spinning, and would take
	// the mutex ahead of fail: let it park in the mutex's queue, behind.
	time.Sleep(10 * time.Millisecond)
	c.mu.Unlock()
	<-failed
}

var reader2fn = map[string]string{"caller": "(*conn).readOwn", "reader": "(*conn).readReplies"}

// A lane grant read, by its caller or by the reader, as the connection
// breaks: the caller gets the connection's error, and the grant, whose
// token was in hand, was dropped — held by nobody on a server with
// auto-release off. It goes to OnReleaseLost, as a grant releaseAbandoned
// cannot send back does (found by review).
func TestGrantReadAsTheLaneBreaksGoesToOnReleaseLost(t *testing.T) {
	for _, reader := range []string{"caller", "reader"} {
		t.Run(reader, func(t *testing.T) {
			srv := newServer(t, testutil.Config{DisableAutoRelease: true})
			lost := make(chan wire.Request, 4)
			p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1,
				OnReleaseLost: func(req wire.Request) { lost <- req }})
			_, c := laneOf(t, p)
			settle(t, c)

			resume := srv.Stall(0)
			t.Cleanup(resume)
			ctx, cancel := context.WithCancel(ctxWait(t))
			defer cancel()
			res := goDo(ctx, p, lockReq("readbreak"))
			awaitReading(t, c)
			inFn := "(*conn).finishOwn"
			if reader == "reader" {
				cancel() // the caller gives up: the reader reads the answer
				require.ErrorIs(t, result(t, res, "Do").err, context.Canceled)
				inFn = "(*conn).readReplies"
			}
			require.Eventually(t, func() bool { return waitsOnTheSocket(reader2fn[reader]) }, wait, time.Millisecond,
				"the %s waits for the answer", reader)
			breakAsTheGrantIsRead(t, c, resume, inFn)
			if reader == "caller" {
				require.Error(t, result(t, res, "Do").err, "the caller gets the connection's error")
			}
			select {
			case req := <-lost:
				assert.Equal(t, "readbreak", req.Key)
				assert.Equal(t, wire.CmdRelease, req.Cmd)
			case <-time.After(wait):
				t.Fatalf("the grant read as the lane broke (held: conn %d) never reached OnReleaseLost", holder(srv, "readbreak"))
			}
		})
	}
}

// The same on a wait-pool connection, whose acquires (dflock's exchange)
// go through Conn.Request and carry no lane key: the grant read as the
// connection broke reached nobody (found by review).
func TestGrantReadAsAWaitConnBreaksGoesToOnReleaseLost(t *testing.T) {
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	lost := make(chan wire.Request, 4)
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1,
		OnReleaseLost: func(req wire.Request) { lost <- req }})
	h, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	c := h.c
	settle(t, c)

	resume := srv.Stall(0)
	t.Cleanup(resume)
	type res struct {
		answered bool
		err      error
	}
	done := make(chan res, 1)
	go func() {
		req := lockReq("waitbreak")
		req.Cmd, req.Limit = wire.CmdSemLock, 2
		_, answered, err := h.Request(ctxWait(t), req, func(int, wire.Reply, error) {})
		done <- res{answered, err}
	}()
	awaitReading(t, c)
	require.Eventually(t, func() bool { return waitsOnTheSocket("(*conn).readOwn") }, wait, time.Millisecond,
		"the caller waits for the answer")
	breakAsTheGrantIsRead(t, c, resume, "(*conn).finishOwn")
	got := result(t, done, "Request")
	require.True(t, got.answered)
	require.Error(t, got.err, "the caller gets the connection's error")
	h.Destroy() // as exchange does with a connection whose request failed
	select {
	case req := <-lost:
		assert.Equal(t, "waitbreak", req.Key)
		assert.Equal(t, wire.CmdSemRelease, req.Cmd)
	case <-time.After(wait):
		t.Fatal("the grant read as the wait-pool connection broke never reached OnReleaseLost")
	}
}

// The same for a grant read for a request sent with SendBatch — a ticket's
// withdrawing `w key 0` (dflock's sendOn) — which carried no key (found by
// review).
func TestWithdrawGrantReadAsTheConnBreaksGoesToOnReleaseLost(t *testing.T) {
	srv, p, lost := slowReleaseLostPool(t) // AwaitReader waits for the slow hand-off
	ctx := ctxWait(t)
	h1, err := p.Acquire(ctx)
	require.NoError(t, err)
	r, err := h1.Do(ctx, lockReq("wd"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	h2, err := p.Acquire(ctx)
	require.NoError(t, err)
	q, err := h2.Do(ctx, wire.Request{Cmd: wire.CmdEnqueue, Key: "wd", Lease: 30})
	require.NoError(t, err)
	require.Equal(t, wire.StatusQueued, q.Status)
	rr, err := h1.Do(ctx, wire.ReleaseRequest("wd", r.Token, false))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, rr.Status)
	c := h2.c
	settle(t, c)

	resume := srv.Stall(0)
	t.Cleanup(resume)
	done := make(chan error, 1)
	h2.SendBatch([]wire.Request{{Cmd: wire.CmdWait, Key: "wd"}}, func(_ int, _ wire.Reply, err error) { done <- err })
	require.Eventually(t, func() bool { return waitsOnTheSocket("(*conn).readReplies") }, wait, time.Millisecond,
		"the reader waits for the answer")
	breakAsTheGrantIsRead(t, c, resume, "(*conn).readReplies")
	require.Error(t, result(t, done, "SendBatch"), "the withdraw gets the connection's error")
	h2.Destroy() // as withdraw does
	// A background job that destroyed its connection waits for the reader
	// (dflock's inBackground): the grant is handed on by then, while the
	// job still counts as running for Close.
	h2.AwaitReader(wait)
	select {
	case req := <-lost:
		assert.Equal(t, "wd", req.Key)
		assert.Equal(t, wire.CmdRelease, req.Cmd)
	default:
		t.Fatalf("the grant read for w as the connection broke had not reached OnReleaseLost when AwaitReader returned (held by conn %d)", holder(srv, "wd"))
	}
}

// SettleLanes, which Close runs before it stops the work that sends
// releases, returned as soon as a lane connection was broken; its reader
// could still hold a grant read as fail emptied the queue, on its way to
// OnReleaseLost, which then came after Close had stopped sending. It now
// waits for a broken lane's reader to exit (found by review).
func TestSettleLanesWaitsForTheReaderOfABrokenLane(t *testing.T) {
	srv, p, lost := slowReleaseLostPool(t) // SettleLanes waits for the slow hand-off
	_, c := laneOf(t, p)
	settle(t, c)

	resume := srv.Stall(0)
	t.Cleanup(resume)
	ctx, cancel := context.WithCancel(ctxWait(t))
	res := goDo(ctx, p, lockReq("settlebreak"))
	awaitReading(t, c)
	cancel() // the caller gives up (Close's cancellation): the reader reads the answer
	require.ErrorIs(t, result(t, res, "Do").err, context.Canceled)
	require.Eventually(t, func() bool { return waitsOnTheSocket("(*conn).readReplies") }, wait, time.Millisecond,
		"the reader waits for the answer")
	breakAsTheGrantIsRead(t, c, resume, "(*conn).readReplies")
	p.SettleLanes(time.Now().Add(wait))
	select {
	case req := <-lost:
		assert.Equal(t, "settlebreak", req.Key)
		assert.Equal(t, wire.CmdRelease, req.Cmd)
	default:
		t.Fatalf("SettleLanes returned before the grant read as the lane broke reached OnReleaseLost (held by conn %d)", holder(srv, "settlebreak"))
	}
}

// slowReleaseLostPool is a pool with one lane connection to a server with
// auto-release off, whose OnReleaseLost takes 50 ms before it hands each
// release on to lost: a slow hand-off that whatever waits for it must
// outlast.
func slowReleaseLostPool(t *testing.T) (*testutil.Server, *Pool, chan wire.Request) {
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	lost := make(chan wire.Request, 4)
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1,
		OnReleaseLost: func(req wire.Request) {
			time.Sleep(50 * time.Millisecond)
			lost <- req
		}})
	return srv, p, lost
}
