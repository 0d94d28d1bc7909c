//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// lingerPool is a pool on a server with auto-release off whose keepalive
// breaks a connection after 500 ms without a reply (short enough for the
// tests to wait for, long enough that a loaded one-CPU machine answers its
// pings in time until the test stalls the server), and whose
// OnReleaseLost hands its releases to lost.
func lingerPool(t *testing.T, withLost bool) (*testutil.Server, *Pool, chan wire.Request) {
	t.Helper()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	lost := make(chan wire.Request, 8)
	cfg := Config{Addr: srv.Addr(), LaneConns: 1, KeepAlive: 250 * time.Millisecond}
	if withLost {
		cfg.OnReleaseLost = func(req wire.Request) { lost <- req }
	}
	return srv, newPool(t, cfg), lost
}

// releasedBy sends rel, a release OnReleaseLost was given, and checks that
// the server applied it: the grant was the server's and its token right.
func releasedBy(t *testing.T, p *Pool, srv *testutil.Server, rel wire.Request) {
	t.Helper()
	r, _, err := p.Do(ctxWait(t), rel)
	require.NoError(t, err)
	assert.Equal(t, wire.StatusOK, r.Status, "the release of %q is applied", rel.Key)
	assert.Zero(t, holder(srv, rel.Key))
}

// A server paused past 2×KeepAlive with a try-acquire in flight: the
// keepalive fails the caller at once, but the socket stays open (the
// connection lingers), so that the grant the server makes when it resumes
// and reads the request is read, not sent to a closed socket — where, with
// auto-release off, it would be held by nobody until its lease ran out —
// and goes to OnReleaseLost. The caller waiting was either reading its own
// reply or waiting for the reader; once the reply is read the socket
// closes.
func TestKeepaliveCutLingersForTheGrantOfAPausedServer(t *testing.T) {
	for _, reader := range []string{"caller", "reader"} {
		t.Run(reader, func(t *testing.T) {
			t.Parallel()
			srv, p, lost := lingerPool(t, true)
			_, c := laneOf(t, p)
			settle(t, c)

			resume := srv.Stall(0)
			t.Cleanup(resume)
			ctx, cancel := context.WithCancel(ctxWait(t))
			defer cancel()
			res := goDo(ctx, p, lockReq("k"))
			awaitReading(t, c)
			if reader == "reader" {
				cancel() // the caller gives up: the reader reads the answer
				require.ErrorIs(t, result(t, res, "Do").err, context.Canceled)
				awaitTurn(t, c, turnReader, "the caller hands the turn to the reader")
			}
			require.Eventually(t, func() bool { return c.Err() != nil }, wait, time.Millisecond, "the keepalive breaks it")
			if reader == "caller" {
				err := result(t, res, "Do").err
				require.ErrorIs(t, err, errNoReply, "the caller is failed at once, the server still paused")
			}
			assert.False(t, c.readerExited(), "the connection lingers")
			require.Eventually(t, func() bool { return p.Stats().LingeringConns == 1 }, wait, time.Millisecond,
				"Stats counts the lingering connection")
			assert.Zero(t, p.Stats().LaneConns, "in no other role")
			select {
			case req := <-lost:
				t.Fatalf("a release (%v) before the server resumed", req)
			default:
			}

			resume()
			rel := result(t, lost, "OnReleaseLost, for the grant read as the connection lingered,")
			assert.Equal(t, wire.CmdRelease, rel.Cmd)
			assert.Equal(t, "k", rel.Key)
			require.Eventually(t, c.readerExited, wait, time.Millisecond, "the socket closes once the reply is read")
			assert.Zero(t, p.Stats().LingeringConns)
			releasedBy(t, p, srv, rel)
		})
	}
}

// Every request written before the cut is an orphan: pipelined grants on
// a wait-pool connection (a ticket's e, a semaphore's sl) all reach
// OnReleaseLost, in order, whatever came between them.
func TestLingeringConnHandsOnEveryGrantItHadAskedFor(t *testing.T) {
	t.Parallel()
	srv, p, lost := lingerPool(t, true)
	ctx := ctxWait(t)
	h, err := p.Acquire(ctx)
	require.NoError(t, err)
	defer h.Destroy()
	settle(t, h.c)

	resume := srv.Stall(0)
	t.Cleanup(resume)
	errs := make(chan error, 3)
	h.SendBatch([]wire.Request{
		{Cmd: wire.CmdEnqueue, Key: "a", Lease: 30},
		{Cmd: wire.CmdPing},
		{Cmd: wire.CmdSemLock, Key: "b", Limit: 2, Lease: 30},
	}, func(_ int, _ wire.Reply, err error) { errs <- err })
	for range 3 {
		assert.ErrorIs(t, result(t, errs, "SendBatch"), errNoReply)
	}
	resume()
	a := result(t, lost, "OnReleaseLost, for the enqueue's grant,")
	b := result(t, lost, "OnReleaseLost, for the semaphore's grant,")
	assert.Equal(t, []string{"a", "b"}, []string{a.Key, b.Key})
	assert.Equal(t, []wire.Command{wire.CmdRelease, wire.CmdSemRelease}, []wire.Command{a.Cmd, b.Cmd})
	require.Eventually(t, h.c.readerExited, wait, time.Millisecond, "the socket closes once the replies are read")
	releasedBy(t, p, srv, a)
	r, _, err := p.Do(ctx, b)
	require.NoError(t, err)
	assert.Equal(t, wire.StatusOK, r.Status)
}

// A lingering connection ends with the pool: Close does not wait for a
// server that never resumes (goleak checks that nothing is left) — whether
// the cut found a caller reading its own reply or the reader goroutine
// reading (which then lingers on in its read, not yet in linger).
func TestLingeringConnEndsWithThePool(t *testing.T) {
	for _, reader := range []string{"caller", "reader"} {
		t.Run(reader, func(t *testing.T) {
			t.Parallel()
			srv, p, _ := lingerPool(t, true)
			_, c := laneOf(t, p)
			settle(t, c)
			resume := srv.Stall(0)
			t.Cleanup(resume)
			ctx, cancel := context.WithCancel(ctxWait(t))
			defer cancel()
			res := goDo(ctx, p, lockReq("k"))
			awaitReading(t, c)
			if reader == "reader" {
				cancel()
				require.ErrorIs(t, result(t, res, "Do").err, context.Canceled)
				awaitTurn(t, c, turnReader, "the caller hands the turn to the reader")
				require.Eventually(t, func() bool { return c.Err() != nil }, wait, time.Millisecond, "the keepalive breaks it")
			} else {
				require.ErrorIs(t, result(t, res, "Do").err, errNoReply)
			}
			require.False(t, c.readerExited(), "the connection lingers")
			closed := make(chan struct{})
			go func() { p.Close(); close(closed) }()
			result(t, closed, "Close")
			assert.True(t, c.readerExited())
			assert.Zero(t, p.Stats().LingeringConns)
		})
	}
}

// Without an owner to release a grant elsewhere (no OnReleaseLost), and for
// a cut with nothing grant-bearing in flight, the socket closes at once, as
// for any other break.
func TestKeepaliveCutClosesAtOnceWithNothingToWaitFor(t *testing.T) {
	for name, tc := range map[string]struct {
		withLost bool
		req      wire.Request
	}{
		"no OnReleaseLost": {false, lockReq("k")},
		"no grant":         {true, wire.Request{Cmd: wire.CmdPing}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv, p, _ := lingerPool(t, tc.withLost)
			_, c := laneOf(t, p)
			resume := srv.Stall(0)
			t.Cleanup(resume)
			_, _, err := p.Do(ctxWait(t), tc.req)
			require.ErrorIs(t, err, errNoReply)
			require.Eventually(t, c.readerExited, wait, time.Millisecond, "closed while the server is still paused")
		})
	}
}

// A lingering connection reads replies only while they can be trusted: a
// line that does not parse as the oldest orphan's reply ends the linger, as
// it would break a live connection, and a grant-looking line after it is
// not taken for the next orphan's (a hostile or broken server).
func TestLingerStopsAtALineItCannotParse(t *testing.T) {
	t.Parallel()
	cut := make(chan struct{})
	closed := make(chan struct{})
	addr := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
		for { // pings answered until the first lock, then nothing
			cmd, err := readRequest(r)
			if err != nil {
				return
			}
			if cmd != wire.CmdPing.String() {
				break
			}
			_, _ = io.WriteString(c, "ok\n")
		}
		<-cut // the keepalive gave up on both: a garbage line, then a grant
		_, _ = io.WriteString(c, "what?\nok tok-b 30\n")
		_, _ = io.Copy(io.Discard, r)
		close(closed)
	})
	release := sync.OnceFunc(func() { close(cut) })
	t.Cleanup(release) // before the server's: its handler may wait on cut
	lost := make(chan wire.Request, 2)
	p := newPool(t, Config{Addr: addr, LaneConns: 1, KeepAlive: 100 * time.Millisecond,
		OnReleaseLost: func(req wire.Request) { lost <- req }})
	lane, c := laneOf(t, p)
	errs := make(chan error, 2)
	lane.SendBatch([]wire.Request{lockReq("a"), lockReq("b")}, func(_ int, _ wire.Reply, err error) { errs <- err })
	for range 2 {
		assert.ErrorIs(t, result(t, errs, "SendBatch"), errNoReply)
	}
	require.False(t, c.readerExited(), "the connection lingers for the two replies")
	release()
	result(t, closed, "the socket's close, at the unparsable line,")
	require.Eventually(t, c.readerExited, wait, time.Millisecond)
	select {
	case req := <-lost:
		t.Fatalf("a release (%v) for a line read after one that did not parse", req)
	default:
	}
	assert.Zero(t, p.Stats().LingeringConns)
}

// A connection a caller found desynchronised (failWith: its own reply did
// not parse, the line consumed) does not linger when the keepalive breaks
// it before the reader could: the replies that follow cannot be matched.
func TestKeepaliveCutOfADesynchronisedConnDoesNotLinger(t *testing.T) {
	t.Parallel()
	srv, p, lost := lingerPool(t, true)
	_, c := laneOf(t, p)
	settle(t, c)
	resume := srv.Stall(0)
	t.Cleanup(resume)
	res := goDo(ctxWait(t), p, lockReq("k"))
	awaitReading(t, c)
	c.mu.Lock()
	c.failWith = errors.New("a reply that did not parse") // as finishOwn records it
	c.mu.Unlock()
	require.ErrorIs(t, result(t, res, "Do").err, errNoReply)
	require.Eventually(t, c.readerExited, wait, time.Millisecond, "closed while the server is still paused")
	assert.Empty(t, lost, "nothing handed on from a connection that could not be trusted")
}

// A connection the keepalive cut lingers "until all are in, or for at most
// a minute, or until the pool closes" (docs/architecture.md), even if a
// write was blocked on the stalled server when the cut came: that write's
// timeout must not end the reading (found by review: it broke the
// wire.Conn, both deadlines forced into the past, and the grant the
// resumed server made for a request written before went to a closed
// socket, held by nobody).
func TestLingerOutlivesTheWriteTimeoutOfAWriteBlockedAtTheCut(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	lost := make(chan wire.Request, 4)
	// The cut (about two KeepAlives after the stall) comes after the
	// flush began its write, and well before its timeout, even on a
	// loaded one-CPU machine.
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, KeepAlive: 500 * time.Millisecond, writeTimeout: 4 * time.Second,
		OnReleaseLost: func(req wire.Request) { lost <- req }})
	bigKey := strings.Repeat("x", 16<<20) // more than the socket buffers take: the write blocks
	ctx := ctxWait(t)
	h, err := p.Acquire(ctx)
	require.NoError(t, err)
	defer h.Destroy()
	settle(t, h.c) // pings until the turn is nobody's: one write each
	writes := h.c.nwrite.Load()

	resume := srv.Stall(0)
	t.Cleanup(resume)
	errs := make(chan error, 2)
	h.SendBatch([]wire.Request{
		{Cmd: wire.CmdLock, Key: "a", Lease: 30},
		{Cmd: wire.CmdLock, Key: bigKey, Lease: 30},
	}, func(_ int, _ wire.Reply, err error) { errs <- err })
	for range 2 {
		require.ErrorIs(t, result(t, errs, "SendBatch"), errNoReply)
	}
	require.Equal(t, 1, p.Stats().LingeringConns, "the cut connection lingers")
	require.Equal(t, writes+1, h.c.nwrite.Load(), "the batch's write had begun before the cut")
	time.Sleep(4 * time.Second) // past the write timeout, far within lingerFor
	assert.False(t, h.c.readerExited(), "the linger ended with the write's timeout, the server still stalled")
	resume()
	select {
	case rel := <-lost:
		assert.Equal(t, "a", rel.Key)
	case <-time.After(2 * time.Second):
		t.Fatalf("the grant of a, made when the server resumed, never reached OnReleaseLost (held by conn %d)", holder(srv, "a"))
	}
}

// The keepalive's cut "fails their callers at once" (docs/leases.md), even
// a caller whose request sits in a write blocked on the stalled server: it
// waits for that write's verdict (call.verdict), so the linger, which
// keeps the socket open, must cut the write short, or the caller is held
// until the write's own timeout (found by review).
func TestKeepaliveCutFailsACallerInABlockedWriteAtOnce(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	// Slower than lingerPool's keepalive, so that the cut comes after the
	// flush began its write (as in the test above); the write's own
	// timeout far beyond the 2 s allowed below.
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, KeepAlive: 250 * time.Millisecond, writeTimeout: 8 * time.Second,
		OnReleaseLost: func(wire.Request) {}})
	bigKey := strings.Repeat("x", 16<<20) // more than the socket buffers take: the write blocks
	h, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	defer h.Destroy()
	settle(t, h.c)
	writes := h.c.nwrite.Load()

	resume := srv.Stall(0)
	t.Cleanup(resume)
	// A request that reaches the stalled server whole, so that the cut
	// connection lingers for its reply: the blocked write's, cut short,
	// is not waited for (TestLingerEndsOnceWhatReachedTheServerIsAnswered).
	h.SendBatch([]wire.Request{{Cmd: wire.CmdLock, Key: "a", Lease: 30}}, func(int, wire.Reply, error) {})
	require.Eventually(t, func() bool { return h.c.nwrite.Load() == writes+1 }, wait, time.Millisecond)
	res := make(chan error, 1)
	go func() {
		// No deadline of its own: the keepalive is what bounds the wait.
		_, err := h.Do(context.Background(), wire.Request{Cmd: wire.CmdLock, Key: bigKey, Lease: 30})
		res <- err
	}()
	require.Eventually(t, func() bool { return h.c.Err() != nil }, wait, time.Millisecond, "the keepalive cuts the stalled connection")
	cut := time.Now()
	require.Equal(t, 1, p.Stats().LingeringConns, "the cut connection lingers (its socket stays open)")
	select {
	case err := <-res:
		require.ErrorIs(t, err, errNoReply)
	case <-time.After(2 * time.Second):
		err := <-res
		t.Fatalf("the caller was failed only %v after the keepalive's cut (the blocked write's timeout), not at once: %v",
			time.Since(cut).Round(100*time.Millisecond), err)
	}
}

// A lingering connection reads the replies to what reached the server, and
// no more: the requests of a write the cut stopped short never arrive, so
// the linger must not wait for their replies until lingerFor (found by a
// flaky TestAbandonUnderConcurrentUse: a reader still lingering 5 s after
// everything that left had been answered).
func TestLingerEndsOnceWhatReachedTheServerIsAnswered(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	lost := make(chan wire.Request, 1)
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, writeTimeout: 8 * time.Second,
		OnReleaseLost: func(req wire.Request) { lost <- req }})
	h, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	defer h.Destroy()
	settle(t, h.c)
	writes := h.c.nwrite.Load()

	// More than the socket buffers take: the write blocks on the stalled
	// server, and the cut stops it part of the way.
	const n = 64 << 10
	key := strings.Repeat("k", 250)
	reqs := make([]wire.Request, n)
	for i := range reqs {
		reqs[i] = wire.Request{Cmd: wire.CmdLock, Key: key, Lease: 30}
	}
	resume := srv.Stall(0)
	t.Cleanup(resume)
	h.SendBatch(reqs, func(int, wire.Reply, error) {})
	require.Eventually(t, func() bool { return h.c.nwrite.Load() == writes+1 }, wait, time.Millisecond,
		"the batch's write begins")
	h.Abandon()
	require.Equal(t, 1, p.Stats().LingeringConns, "the abandoned connection lingers")
	resume()
	select {
	case rel := <-lost:
		assert.Equal(t, key, rel.Key, "the grant to the first request reaches OnReleaseLost")
	case <-time.After(wait):
		t.Fatal("the grant to the first request never reached OnReleaseLost")
	}
	select {
	case <-h.ReaderDone():
	case <-time.After(wait):
		t.Fatalf("the linger still waits for replies to requests that never reached the server (it answered %d of %d)",
			srv.Stats().Requests["l"], n)
	}
	assert.Less(t, srv.Stats().Requests["l"], int64(n), "the cut stopped the write short")
	assert.Equal(t, 0, p.Stats().LingeringConns)
}

// The same when the server answered the first requests of the cut write
// before the cut: those count among what the write sent, and the linger
// must not wait for as many replies again (found by review of the fix
// above: the answered ones were subtracted twice, and the linger waited a
// minute for that many replies).
func TestLingerEndsWhenTheCutWritesFirstRequestsWereAnswered(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, writeTimeout: 8 * time.Second,
		OnReleaseLost: func(wire.Request) {}})
	h, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	defer h.Destroy()
	settle(t, h.c)
	writes := h.c.nwrite.Load()

	// The server answers the batch's first requests, then stalls long
	// before it has read the whole write, which blocks.
	const n, stallAt = 64 << 10, 2000
	key := strings.Repeat("k", 250)
	reqs := make([]wire.Request, n)
	for i := range reqs {
		reqs[i] = wire.Request{Cmd: wire.CmdLock, Key: key, Lease: 30}
	}
	var once sync.Once
	resumed := make(chan func(), 1)
	h.SendBatch(reqs, func(i int, _ wire.Reply, err error) {
		if i == stallAt {
			once.Do(func() { resumed <- srv.Stall(0) })
		}
	})
	var resume func()
	select {
	case resume = <-resumed:
	case <-time.After(wait):
		t.Fatal("no reply to the batch's first requests")
	}
	t.Cleanup(resume)
	require.Equal(t, writes+1, h.c.nwrite.Load(), "one write")
	h.c.mu.Lock()
	writing := h.c.writing
	h.c.mu.Unlock()
	require.Equal(t, n, writing, "the batch's write is under way")
	h.Abandon()
	require.Equal(t, 1, p.Stats().LingeringConns, "the abandoned connection lingers")
	resume()
	select {
	case <-h.ReaderDone():
	case <-time.After(wait):
		h.c.mu.Lock()
		left := len(h.c.orphans)
		h.c.mu.Unlock()
		t.Fatalf("the linger still waits for %d replies (the server answered %d of %d)", left, srv.Stats().Requests["l"], n)
	}
	assert.Less(t, srv.Stats().Requests["l"], int64(n), "the cut stopped the write short")
	assert.Equal(t, 0, p.Stats().LingeringConns)
}
