//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A reply line over the cap, read by the caller itself (own) or by the
// reader: the call fails with the connection's error (no panic, no hang),
// the lane is reported broken once, and the next Do runs on a new lane.
func TestOverlongReplyBreaksTheLaneCleanly(t *testing.T) {
	for _, own := range []bool{true, false} {
		t.Run(fmt.Sprintf("own=%v", own), func(t *testing.T) {
			long := "ok " + strings.Repeat("t", 300) + " 30\n"
			var n atomic.Int32
			addr := testutil.ServeRequests(t, func(nc net.Conn, req [3]string) bool {
				var err error
				switch {
				case req[0] == "ping":
					_, err = nc.Write([]byte("ok\n"))
				case req[0] == "l" && n.Add(1) == 1:
					_, err = nc.Write([]byte(long))
				case req[0] == "l":
					_, err = nc.Write([]byte("ok tok 30\n"))
				default:
					return false
				}
				return err == nil
			})
			rec := newBrokenRecorder()
			p := newPool(t, Config{Addr: addr, LaneConns: 1, OnConnBroken: rec.hook, maxReplyLine: 128})
			lane, c := laneOf(t, p)
			if own {
				settle(t, c)
			} else {
				c.mu.Lock()
				c.lastActive = 0 // the reader watches: it reads the reply
				c.mu.Unlock()
				c.wakeReader()
				awaitTurn(t, c, turnReader, "the reader watches")
			}
			_, owner, err := p.Do(ctxWait(t), lockReq("k"))
			require.ErrorIs(t, err, wire.ErrConnBroken)
			assert.Same(t, lane, owner)
			ev := rec.next(t)
			assert.Same(t, lane, ev.c)
			r, owner, err := p.Do(ctxWait(t), lockReq("k"))
			require.NoError(t, err)
			assert.Equal(t, "tok", r.Token)
			assert.NotSame(t, lane, owner)
			assert.Equal(t, int32(0), c.inflight.Load())
		})
	}
}
