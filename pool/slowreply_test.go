package pool

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A reply that is still arriving is progress: a large `stats` reply
// (Query allows up to 64 MiB through dflock.WithMaxStatsReply) that takes
// longer than 2×KeepAlive to cross the network — bytes arrive all along —
// must not be taken for a stalled server. The keepalive counted only whole
// replies as progress, so it broke the connection with "no reply for
// 2×KeepAlive (server stalled or unreachable)", an ErrUnavailable (found
// by review).
func TestQuerySlowLargeReplyIsNotAStall(t *testing.T) {
	t.Parallel()
	const ka = 100 * time.Millisecond
	addr := testutil.ServeRequests(t, func(nc net.Conn, req [3]string) bool {
		switch req[0] {
		case "ping":
			_, err := nc.Write([]byte("ok\n"))
			return err == nil
		case "stats":
			// 60 chunks of 4 KiB, one every 10 ms: 600 ms, 6×KeepAlive,
			// with bytes arriving every tenth of a keepalive.
			if _, err := nc.Write([]byte(`ok {"locks":[`)); err != nil {
				return false
			}
			chunk := []byte(strings.Repeat(" ", 4096))
			for range 60 {
				time.Sleep(10 * time.Millisecond)
				if _, err := nc.Write(chunk); err != nil {
					return false
				}
			}
			_, err := nc.Write([]byte("]}\n"))
			return err == nil
		}
		return false
	})
	p := newPool(t, Config{Addr: addr, KeepAlive: ka})
	begin := time.Now()
	r, err := p.Query(ctxWait(t), wire.Request{Cmd: wire.CmdStats}, 1<<20)
	require.NoError(t, err, "after %v", time.Since(begin))
	require.Greater(t, len(r.Text), 60*4096)
}
