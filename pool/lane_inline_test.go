package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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

// laneOf returns the connection behind lane.
func laneOf(t *testing.T, p *Pool) (*laneConn, *conn) {
	t.Helper()
	_, owner, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	lane := owner.(*laneConn)
	return lane, lane.c
}

// setHook installs c.beforeInlineWrite.
func setHook(c *conn, hook func()) {
	c.mu.Lock()
	c.beforeInlineWrite = hook
	c.mu.Unlock()
}

func turnOf(c *conn) turn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.turn
}

func queued(c *conn) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.q.n
}

// A lone sender on a TCP connection (Do, or SendBatch as releases and
// renewals use it) writes its own request; on a net.Conn that is not a
// kernel socket (here a wrapper, as a user's Dial may return) it never does,
// since nothing then proves that the write cannot block.
func TestInlineWriteOnlyOnIdleKernelSockets(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	for _, tc := range []struct {
		name   string
		dial   func(ctx context.Context, network, addr string) (net.Conn, error)
		inline int64
	}{
		{"tcp", nil, 11},
		{"wrapped", (&stallDialer{}).dial, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, Config{Addr: srv.Addr(), Dial: tc.dial, LaneConns: 1})
			lane, c := laneOf(t, p)
			var inline atomic.Int64
			setHook(c, func() { inline.Add(1) })
			writes := p.Stats().Writes
			for range 10 {
				r, _, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
				require.NoError(t, err)
				require.Equal(t, wire.StatusOK, r.Status)
			}
			done := make(chan error, 2)
			lane.SendBatch([]wire.Request{{Cmd: wire.CmdPing}, {Cmd: wire.CmdPing}}, func(_ int, _ wire.Reply, err error) {
				done <- err
			})
			require.NoError(t, <-done)
			require.NoError(t, <-done)
			assert.Equal(t, tc.inline, inline.Load())
			assert.EqualValues(t, 11, p.Stats().Writes-writes)
		})
	}
}

// Senders that arrive while a caller is about to write inline ride on its
// write (or, if they make it too long to be sure of the send buffer, on one
// write of the flush goroutine) and get their own replies.
func TestInlineWriteCarriesConcurrentSenders(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		arg  int // signal payload; 30 senders × 250 bytes is over maxInlineWrite
	}{
		{"inline", 0},
		{"handed to the flusher", 250},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{})
			p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
			_, c := laneOf(t, p)
			release := make(chan struct{})
			var once sync.Once
			setHook(c, func() { once.Do(func() { <-release }) })
			before := p.Stats()

			const senders = 30
			ctx := ctxWait(t)
			errs := make(chan error, senders+1)
			do := func(i int) {
				key := fmt.Sprintf("inline-%d", i)
				var r wire.Reply
				var err error
				if tc.arg > 0 {
					r, _, err = p.Do(ctx, wire.Request{Cmd: wire.CmdSignal, Key: key, Arg: strings.Repeat("x", tc.arg)})
				} else {
					r, _, err = p.Do(ctx, lockReq(key))
					if err == nil && holder(srv, key) == 0 {
						err = fmt.Errorf("%s: granted but not held", key)
					}
				}
				if err == nil && r.Status != wire.StatusOK {
					err = fmt.Errorf("%s: %v", key, r.Status)
				}
				errs <- err
			}
			go do(0) // writes inline, and waits in the hook
			require.Eventually(t, func() bool { return queued(c) == 1 }, wait, time.Millisecond)
			for i := 1; i <= senders; i++ {
				go do(i)
			}
			require.Eventually(t, func() bool { return queued(c) == senders+1 }, wait, time.Millisecond)
			close(release)
			for range senders + 1 {
				require.NoError(t, <-errs)
			}
			st := p.Stats()
			assert.EqualValues(t, senders+1, st.Requests-before.Requests)
			assert.EqualValues(t, 1, st.Writes-before.Writes, "every sender rides on one write")
		})
	}
}

// A connection that breaks while a caller is about to write inline writes
// nothing more, and the caller's request, which never left, goes out on a
// new lane connection (Pool.Do). The reader must be watching the quiet
// connection for that (otherwise the caller finds the break by reading its
// own reply: turn_test.go).
func TestInlineWriterSendsAgainAfterTheBreak(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, OnConnBroken: rec.hook})
	lane, c := laneOf(t, p)
	require.Eventually(t, func() bool { return turnOf(c) == turnReader }, wait, time.Millisecond,
		"the reader watches a connection quiet for watchDelay")
	release := make(chan struct{})
	setHook(c, func() { <-release })
	writes := p.Stats().Writes

	type outcome struct {
		r     wire.Reply
		owner Owner
		err   error
	}
	done := make(chan outcome, 1)
	go func() {
		r, owner, err := p.Do(ctxWait(t), lockReq("inline-break"))
		done <- outcome{r, owner, err}
	}()
	require.Eventually(t, func() bool { return queued(c) == 1 }, wait, time.Millisecond)
	srv.DropConnections()
	assert.Same(t, lane, rec.next(t).c)
	close(release)
	res := <-done
	require.NoError(t, res.err, "the request never left: a new lane connection carries it")
	assert.Equal(t, wire.StatusOK, res.r.Status)
	assert.NotSame(t, lane, res.owner)
	assert.Equal(t, writes+1, p.Stats().Writes, "one write: the new connection's; nothing on the broken one")
	assert.NotZero(t, holder(srv, "inline-break"))
}

// A write that fails on the caller's goroutine breaks the connection with
// the write's error, reported by the reader (the failed write interrupts
// its read), not by the caller: Config.OnConnBroken must not run on a
// sender, which may be the renewal scheduler. The write wrote nothing, so
// the caller's request goes out on a new lane connection.
func TestInlineWriteFailureBreaksOnTheReaderAndSendsAgain(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	rec := newBrokenRecorder()
	returned := make(chan struct{})
	hook := func(o Owner, err error) {
		<-returned // blocks the caller forever if it runs on the caller
		rec.hook(o, err)
	}
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, OnConnBroken: hook})
	lane, c := laneOf(t, p)
	// Shutting down the sending side makes the write fail (EPIPE) and
	// leaves the reader blocked in its read until the write's failure
	// interrupts it.
	setHook(c, func() { _ = c.wc.NetConn().(*net.TCPConn).CloseWrite() })

	type outcome struct {
		r     wire.Reply
		owner Owner
		err   error
	}
	done := make(chan outcome, 1)
	go func() {
		r, owner, err := p.Do(ctxWait(t), lockReq("inline-write-fails"))
		done <- outcome{r, owner, err}
	}()
	var res outcome
	select {
	case res = <-done:
		close(returned)
	case <-time.After(wait):
		close(returned)
		t.Fatal("OnConnBroken ran on the caller")
	}
	require.NoError(t, res.err, "nothing was written: a new lane connection carries the request")
	assert.Equal(t, wire.StatusOK, res.r.Status)
	assert.NotSame(t, lane, res.owner)
	// The write's own error — unless the reader saw the server close first:
	// the server answers the half-close by closing, and whichever failure
	// the reader notices first is the connection's.
	writeOrEOF := func(err error) bool { return errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) }
	ev := rec.next(t)
	assert.Same(t, lane, ev.c)
	assert.Truef(t, writeOrEOF(ev.err), "neither the write's error nor EOF: %v", ev.err)
	require.ErrorIs(t, c.Err(), wire.ErrConnBroken)
}

// On a server that stopped reading, callers keep returning when their
// contexts end although their requests pile up: only a caller whose
// connection has every earlier request answered writes inline, so none of
// them is ever the one stuck in a write (the lane holds the rest back until
// the first is answered). Afterwards the lane has not broken and, once the
// server reads again, serves every request in order.
func TestInlineWriteNeverHoldsACallerOnAStalledServer(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	// A small send buffer (still a kernel socket) fills sooner.
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			err = nc.(*net.TCPConn).SetWriteBuffer(4096)
		}
		return nc, err
	}
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), Dial: dial, LaneConns: 1, writeTimeout: time.Hour, OnConnBroken: rec.hook})
	lane, c := laneOf(t, p)
	resume := srv.Stall(0)
	defer resume()

	req := wire.Request{Cmd: wire.CmdSignal, Key: strings.Repeat("k", 200), Arg: strings.Repeat("x", 250)}
	stalled := func() bool { // ~150 requests wait to be written
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.buf) >= 64<<10
	}
	for i := 0; !stalled(); i++ {
		require.Less(t, i, 20000, "the socket's buffers never filled")
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
			defer cancel()
			_, _, err := p.Do(ctx, req)
			done <- err
		}()
		select {
		case err := <-done:
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.NotErrorIs(t, err, wire.ErrConnBroken)
		case <-time.After(wait):
			t.Fatalf("request %d: the caller is held by a write to the stalled server", i)
		}
	}
	require.NoError(t, lane.Err())

	resume()
	r, l, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	assert.Equal(t, wire.StatusOK, r.Status)
	assert.Same(t, lane, l)
	assert.Zero(t, p.Stats().Broken)
	select {
	case ev := <-rec.ch:
		t.Fatalf("the lane broke: %v", ev.err)
	default:
	}
}
