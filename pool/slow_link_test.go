package pool

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// slowReader reads at most 2 KiB per 10 ms while slow is set: a server
// behind a slow link, which keeps reading and answering.
type slowReader struct {
	net.Conn
	slow *atomic.Bool
}

func (c slowReader) Read(p []byte) (int, error) {
	if c.slow.Load() {
		time.Sleep(10 * time.Millisecond)
		p = p[:min(len(p), 2048)]
	}
	return c.Conn.Read(p)
}

// A write larger than the link carries in writeTimeout does not break the
// connection while the server reads it steadily: the deadline bounds a
// write that makes no progress (review-sig2 F1: a re-listen of 2,000
// patterns, or a burst of long Emits, was cut at 5 s on every connection
// although the server was answering).
func TestLargeWriteToASlowButReadingServerDoesNotBreakTheConnection(t *testing.T) {
	t.Parallel()
	var slow atomic.Bool
	var answered atomic.Int64
	addr := testutil.ServeRaw(t, func(nc net.Conn) {
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4096)
		}
		testutil.AnswerRequests(slowReader{nc, &slow}, func(nc net.Conn, req [3]string) bool {
			reply := "ok\n"
			if req[0] == "signal" {
				answered.Add(1)
				reply = "ok 0\n"
			}
			_, err := nc.Write([]byte(reply))
			return err == nil
		})
	})
	dial := func(ctx context.Context, network, a string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, a)
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetWriteBuffer(4096)
		}
		return nc, err
	}
	const writeTimeout = 2 * time.Second
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: addr, Dial: dial, LaneConns: 1, writeTimeout: writeTimeout, OnConnBroken: rec.hook})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A wait-pool connection: the lane refuses lines this long.
	conn, err := p.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	slow.Store(true)

	// 240 signals of 1 KiB each in one write: ~6 s at the server's pace
	// (tiny socket buffers on both sides, ~40 KB/s), 3× writeTimeout; each
	// 16 KiB takes well under it.
	reqs := make([]wire.Request, 240)
	for i := range reqs {
		reqs[i] = wire.Request{Cmd: wire.CmdSignal, Key: "ch", Arg: strings.Repeat("x", 1024)}
	}
	done := make(chan error, len(reqs))
	before := answered.Load()
	start := time.Now()
	conn.SendBatch(reqs, func(_ int, _ wire.Reply, err error) { done <- err })
	for range reqs {
		select {
		case err := <-done:
			require.NoError(t, err, "a connection the server was reading was broken as stalled")
		case <-ctx.Done():
			t.Fatalf("%d of %d answered", answered.Load()-before, len(reqs))
		}
	}
	t.Logf("%d KB written and answered in %v (writeTimeout %v)", len(reqs)*1030/1000, time.Since(start).Round(10*time.Millisecond), writeTimeout)
	require.NoError(t, conn.Err())
	select {
	case ev := <-rec.ch:
		t.Fatalf("connection broken: %v", ev.err)
	default:
	}
}
