package pool

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// countingScriptServer answers ping with ok and every other request with answer's
// bytes (nil drops the connection). It counts accepted connections.
func countingScriptServer(t *testing.T, answer func(nc net.Conn, n int, req [3]string) bool) (string, *atomic.Int32) {
	t.Helper()
	var conns atomic.Int32
	var reqs atomic.Int32
	addr := testutil.ServeRaw(t, func(nc net.Conn) {
		conns.Add(1)
		testutil.AnswerRequests(nc, func(nc net.Conn, req [3]string) bool {
			if req[0] == "ping" {
				_, err := nc.Write([]byte("ok\n"))
				return err == nil
			}
			return answer(nc, int(reqs.Add(1))-1, req)
		})
	})
	return addr, &conns
}

// Replies split at every byte boundary, with CRLF endings and a push before
// them, are read whole and matched.
func TestLaneReplySplitAtEveryByte(t *testing.T) {
	t.Parallel()
	const reply = "sig a.b some payload\r\nok tok123 30\r\n"
	addr, _ := countingScriptServer(t, func(nc net.Conn, n int, req [3]string) bool {
		i := n % len(reply)
		if _, err := nc.Write([]byte(reply[:i])); err != nil {
			return false
		}
		time.Sleep(time.Millisecond)
		_, err := nc.Write([]byte(reply[i:]))
		return err == nil
	})
	p := newPool(t, Config{Addr: addr, LaneConns: 1})
	for i := 0; i < len(reply)+1; i++ {
		r, _, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdLock, Key: "k", Timeout: 0})
		require.NoError(t, err, "split at %d", i)
		require.Equal(t, "tok123", r.Token)
		require.EqualValues(t, 30, r.Lease)
	}
}

// A malformed reply to a lane try-lock is a clear protocol error, the
// connection is broken (never reused), and the next request goes out on a
// fresh connection.
func TestLaneMalformedRepliesBreakTheConn(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{
		"ok tok +30", "ok tok -30", "ok tok 0x1e", "ok tok 99999999999999999999",
		"ok tok 9223372036854775808", "ok\x00 tok 30", "OK tok 30", "acquired tok 30",
		"queued", "wat", "", " ok tok 30", "ok  tok 30", "ok tok", "ok t\x00k 30",
		"ok " + strings.Repeat("t", 300) + " 30", "sig",
	} {
		t.Run(strings.ToValidUTF8(bad, "?"), func(t *testing.T) {
			t.Parallel()
			addr, conns := countingScriptServer(t, func(nc net.Conn, n int, req [3]string) bool {
				line := "ok good 30\n"
				if n == 0 {
					line = bad + "\n"
				}
				_, err := nc.Write([]byte(line))
				return err == nil
			})
			rec := newBrokenRecorder()
			p := newPool(t, Config{Addr: addr, LaneConns: 1, OnConnBroken: rec.hook})
			req := wire.Request{Cmd: wire.CmdLock, Key: "k"}
			_, o, err := p.Do(ctxWait(t), req)
			require.ErrorIs(t, err, wire.ErrProtocol)
			require.ErrorIs(t, err, wire.ErrConnBroken)
			require.Error(t, o.Err())
			rec.next(t)
			r, o2, err := p.Do(ctxWait(t), req)
			require.NoError(t, err)
			require.Equal(t, "good", r.Token)
			require.NotSame(t, o, o2)
			require.EqualValues(t, 2, conns.Load())
		})
	}
}

// A server that answers half a line and stalls: a wait-pool caller's ctx is
// honoured at once and the connection does not go back to the pool.
func TestWaitConnHalfLineThenStallHonoursCtx(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	addr, conns := countingScriptServer(t, func(nc net.Conn, n int, req [3]string) bool {
		if n == 0 {
			_, _ = nc.Write([]byte("ok to"))
			<-release
			return false
		}
		_, err := nc.Write([]byte("ok good 30\n"))
		return err == nil
	})
	t.Cleanup(func() { close(release) })
	p := newPool(t, Config{Addr: addr, LaneConns: 1})
	h, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	_, err = h.Do(ctx, wire.Request{Cmd: wire.CmdLock, Key: "k", Timeout: 5})
	el := time.Since(begin)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, el, time.Second)
	require.Error(t, h.Err())
	h.Release()
	h2, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	defer h2.Release()
	require.NotSame(t, h.c, h2.c)
	r, err := h2.Do(ctxWait(t), wire.Request{Cmd: wire.CmdLock, Key: "k", Timeout: 5})
	require.NoError(t, err)
	require.Equal(t, "good", r.Token)
	require.GreaterOrEqual(t, conns.Load(), int32(2))
}

// A line the server sends while nothing is pending breaks the (idle) lane
// connection; it is never matched to a later request.
func TestLaneUnsolicitedLineBreaksTheConn(t *testing.T) {
	t.Parallel()
	addr, _ := countingScriptServer(t, func(nc net.Conn, n int, req [3]string) bool {
		if n == 0 {
			_, err := nc.Write([]byte("ok first 30\n"))
			if err != nil {
				return false
			}
			time.Sleep(20 * time.Millisecond)
			_, err = nc.Write([]byte("ok stray 30\n"))
			return err == nil
		}
		_, err := nc.Write([]byte("ok good 30\n"))
		return err == nil
	})
	p := newPool(t, Config{Addr: addr, LaneConns: 1})
	req := wire.Request{Cmd: wire.CmdLock, Key: "k"}
	r, o, err := p.Do(ctxWait(t), req)
	require.NoError(t, err)
	require.Equal(t, "first", r.Token)
	require.Eventually(t, func() bool { return o.Err() != nil }, wait, time.Millisecond, "the stray line breaks the lane")
	r, _, err = p.Do(ctxWait(t), req)
	require.NoError(t, err)
	require.Equal(t, "good", r.Token)
}

// EndWrites under concurrent writers and a reader (-race): later writes fail
// with ErrConnBroken without breaking reads.
func TestEndWritesWithConcurrentWritersAndReader(t *testing.T) {
	t.Parallel()
	addr := testutil.ServeRequests(t, func(nc net.Conn, req [3]string) bool {
		_, err := nc.Write([]byte("ok\n"))
		return err == nil
	})
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	wc := wire.NewConn(nc, wire.ConnOptions{})
	defer wc.Close()
	var wg sync.WaitGroup
	var wrote atomic.Int32
	var mu sync.Mutex // one writer at a time, as documented
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				mu.Lock()
				err := wc.WriteRequests(wire.Request{Cmd: wire.CmdPing})
				mu.Unlock()
				if err != nil {
					if !errors.Is(err, wire.ErrConnBroken) {
						t.Errorf("write: %v", err)
					}
					return
				}
				wrote.Add(1)
			}
		}()
	}
	time.Sleep(time.Millisecond)
	wc.EndWrites()
	wg.Wait()
	require.NoError(t, wc.Err())
	n := int(wrote.Load())
	_ = wc.SetReadDeadline(time.Now().Add(wait))
	for i := 0; i < n; i++ {
		r, err := wc.ReadReply(wire.CmdPing)
		require.NoError(t, err, "reply %d of %d", i, n)
		require.Equal(t, wire.StatusOK, r.Status)
	}
	require.ErrorIs(t, wc.WriteRequests(wire.Request{Cmd: wire.CmdPing}), wire.ErrConnBroken)
	require.NoError(t, wc.Err())
}

// Requests that would inject a second command are refused before anything
// is written, naming the argument.
func TestRequestValidationNamesTheArgument(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k", 257)
	for _, tc := range []struct {
		req wire.Request
		arg string
	}{
		{wire.Request{Cmd: wire.CmdLock, Key: "a b"}, "key"},
		{wire.Request{Cmd: wire.CmdLock, Key: "a\nping\n_\n"}, "key"},
		{wire.Request{Cmd: wire.CmdLock, Key: "a\r"}, "key"},
		{wire.Request{Cmd: wire.CmdLock, Key: "a\t"}, "key"},
		{wire.Request{Cmd: wire.CmdLock, Key: long}, "key"},
		{wire.Request{Cmd: wire.CmdLock, Key: ""}, "key"},
		{wire.Request{Cmd: wire.CmdRelease, Key: "k", Token: "t 5"}, "token"},
		{wire.Request{Cmd: wire.CmdRenew, Key: "k", Token: "t\n"}, "token"},
		{wire.Request{Cmd: wire.CmdRenew, Key: "k", Token: "t\u00a05"}, "token"},
		{wire.Request{Cmd: wire.CmdRenew, Key: "k", Token: long}, "token"},
		{wire.Request{Cmd: wire.CmdListen, Key: "a b"}, "pattern"},
		{wire.Request{Cmd: wire.CmdListen, Key: "a.>.b"}, "pattern"},
		{wire.Request{Cmd: wire.CmdListen, Key: "a", Arg: "g\nx"}, "group"},
		{wire.Request{Cmd: wire.CmdListen, Key: "a", Arg: long}, "group"},
		{wire.Request{Cmd: wire.CmdSignal, Key: "a*", Arg: "x"}, "channel"},
		{wire.Request{Cmd: wire.CmdSignal, Key: "a", Arg: "x\ny"}, "payload"},
		{wire.Request{Cmd: wire.CmdAuth, Arg: "s\nx"}, "secret"},
		{wire.Request{Cmd: wire.Command(200)}, "command"},
	} {
		err := tc.req.Validate()
		var ae *wire.ArgError
		require.ErrorAs(t, err, &ae, "%q", tc.req)
		require.Equal(t, tc.arg, ae.Arg, "%q", tc.req)
	}
	// The pool's own framing check: nothing reaches the server.
	var got atomic.Int32
	addr, _ := countingScriptServer(t, func(nc net.Conn, n int, req [3]string) bool {
		got.Add(1)
		_, err := nc.Write([]byte("ok\n"))
		return err == nil
	})
	p := newPool(t, Config{Addr: addr, LaneConns: 1})
	_, _, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdRelease, Key: "k\nping\n_", Token: "t"})
	var ae *wire.ArgError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, "key", ae.Arg)
	_, _, err = p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdRelease, Key: "k", Token: "t\nping\n_"})
	require.ErrorAs(t, err, &ae)
	require.Equal(t, "token", ae.Arg)
	_, _, err = p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdRelease, Key: "k", Token: "t"})
	require.NoError(t, err)
	require.EqualValues(t, 1, got.Load())
}

// Abandon (and Pool.Close) racing with requests in flight on an acquired
// connection: every batch callback runs exactly once, Do returns, nothing
// panics or races, and the lingering reader ends once everything written is
// answered.
func TestAbandonUnderConcurrentUse(t *testing.T) {
	t.Parallel()
	for round := range 20 {
		addr, _ := countingScriptServer(t, func(nc net.Conn, n int, req [3]string) bool {
			if n%3 == 0 {
				time.Sleep(200 * time.Microsecond)
			}
			line := "ok\n"
			if req[0] == "l" {
				line = "ok tok-" + req[1] + " 30\n"
			}
			if n%5 == 0 {
				line = "sig a.b x\n" + line
			}
			_, err := nc.Write([]byte(line))
			return err == nil
		})
		var lost atomic.Int32
		p := newPool(t, Config{Addr: addr, LaneConns: 1, OnReleaseLost: func(wire.Request) { lost.Add(1) }})
		h, err := p.Acquire(ctxWait(t))
		require.NoError(t, err)
		var wg sync.WaitGroup
		var calls [3][64]atomic.Int32
		for g := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 64 {
					switch (i + g) % 3 {
					case 0:
						h.SendBatch([]wire.Request{{Cmd: wire.CmdLock, Key: "k", Timeout: 0}}, func(int, wire.Reply, error) {
							calls[g][i].Add(1)
						})
					case 1:
						ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i)*20*time.Microsecond)
						_, _, _, _ = h.c.do(ctx, &wire.Request{Cmd: wire.CmdLock, Key: "k"}, "")
						cancel()
						calls[g][i].Add(1)
					case 2:
						_, answered, _ := h.Request(context.Background(), wire.Request{Cmd: wire.CmdRelease, Key: "k", Token: "t"}, func(int, wire.Reply, error) {
							calls[g][i].Add(1)
						})
						if answered {
							calls[g][i].Add(1)
						}
					}
				}
			}()
		}
		time.Sleep(time.Duration(round) * 100 * time.Microsecond)
		h.Abandon()
		wg.Wait()
		select {
		case <-h.ReaderDone():
		case <-time.After(wait):
			t.Fatalf("round %d: reader still lingering", round)
		}
		deadline := time.Now().Add(wait)
		for g := range 3 {
			for i := range 64 {
				for calls[g][i].Load() == 0 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				require.EqualValues(t, 1, calls[g][i].Load(), "round %d g %d i %d", round, g, i)
			}
		}
		p.Close()
	}
}

// A listener takes a push line of exactly 64 KiB (the largest a v1.15+
// server writes) and breaks, with ErrLineTooLong, on a longer one; pushes
// interleaved with its replies reach onPush in order.
func TestListenerPushAtTheLineCap(t *testing.T) {
	t.Parallel()
	for _, extra := range []int{0, 1} {
		ch := "a.b"
		payload := strings.Repeat("p", wire.MaxLongArg-5-len(ch)+extra)
		addr, _ := countingScriptServer(t, func(nc net.Conn, n int, req [3]string) bool {
			_, err := nc.Write([]byte("sig " + ch + " x\nsig " + ch + " " + payload + "\nok\n"))
			return err == nil
		})
		p := newPool(t, Config{Addr: addr, LaneConns: 1})
		pushes := make(chan wire.Push, 4)
		broken := make(chan error, 1)
		lc, err := p.DialListener(ctxWait(t), func(m wire.Push) { pushes <- m }, func(err error) { broken <- err })
		require.NoError(t, err)
		_, err = lc.Do(ctxWait(t), wire.Request{Cmd: wire.CmdListen, Key: "a.>"})
		require.Equal(t, "x", result(t, pushes, "push").Payload)
		if extra == 0 {
			require.NoError(t, err)
			require.Len(t, result(t, pushes, "push").Payload, len(payload))
		} else {
			require.ErrorIs(t, err, wire.ErrLineTooLong)
			require.ErrorIs(t, result(t, broken, "onBroken"), wire.ErrConnBroken)
		}
	}
}
