package pool

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// DialListener's doc: "a connection whose replies stop for 2·KeepAlive is
// broken"; errNoReply: "no reply for 2×KeepAlive". Bytes read count as
// progress on the pending requests only while a line is still arriving:
// counting every byte (as the first version of that did), a listener
// connection whose server keeps pushing `sig` lines but never answers its
// requests (its listen, the keepalive ping) was never found stalled, and a
// Do with a context without deadline waited forever (found by review). The
// same when the server's writes of its pushes do not end on a line
// boundary (a bufio.Writer flushing a full buffer, a proxy re-chunking):
// every look then found the start of the next push "still arriving" (found
// by review of the first fix).
func TestListenerPushesAreNoProgressOnUnansweredRequests(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run(fmt.Sprintf("split=%v", split), func(t *testing.T) { testPushesAreNoProgress(t, split) })
	}
}

func testPushesAreNoProgress(t *testing.T, split bool) {
	const ka = 200 * time.Millisecond
	addr := testutil.ServeRaw(t, func(nc net.Conn) {
		stop := make(chan struct{})
		defer close(stop)
		n := 0
		testutil.AnswerRequests(nc, func(nc net.Conn, req [3]string) bool {
			n++
			if n == 1 { // the handshake's ping
				_, err := nc.Write([]byte("ok\n"))
				return err == nil
			}
			if n == 2 {
				// From now on: pushes only, no reply to anything.
				go func() {
					tk := time.NewTicker(ka / 4)
					defer tk.Stop()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						case <-tk.C:
						}
						line := fmt.Sprintf("sig a.b %d\n", i)
						if split { // the end of one push and the start of the next
							line = fmt.Sprintf("b %d\nsig a.", i)
							if i == 0 {
								line = "sig a."
							}
						}
						if _, err := nc.Write([]byte(line)); err != nil {
							return
						}
					}
				}()
			}
			return true
		})
	})
	p := newPool(t, Config{Addr: addr, KeepAlive: ka})
	ctx := ctxWait(t)
	lc, err := p.DialListener(ctx, func(wire.Push) {}, nil)
	require.NoError(t, err)
	dctx, cancel := context.WithTimeout(context.Background(), 30*ka)
	defer cancel()
	start := time.Now()
	_, err = lc.Do(dctx, wire.Request{Cmd: wire.CmdListen, Key: "a.>"})
	took := time.Since(start)
	t.Logf("Do returned after %v: %v", took, err)
	require.ErrorIs(t, err, wire.ErrConnBroken, "the unanswered listen is found stalled, not left to the caller's context")
	// Two keepalives, three at worst; the slack is for a loaded machine
	// (5 was overrun by 2.5 ms under four test processes on two CPUs).
	require.Less(t, took, 10*ka, "found within two keepalives (three at worst), with slack for a loaded machine")
}
