package dflock

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A server that answers listen and then breaks the connection at once (here
// with a malformed push line right behind the `ok`) makes Listen wait for
// its ctx, the listener redialling and re-listening over and over, whenever
// the break is noticed before the supervisor processes the answer (the hook
// forces that order, which otherwise happens at random: measured 1–9
// redials, up to the ctx). listened fails the waiting Listen calls fast when
// the listen itself meets the break (res.err), so that they do not wait for
// reconnects that may break the same way; it must do the same when the
// `ok` came first (l.cur != lc). (Found in review: it kept them waiting.)
func TestSignalListenAnsweredThenBrokenFailsFast(t *testing.T) {
	var conns atomic.Int64
	addr := testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
		out := "ok\n"
		switch f[0] {
		case "ping":
			conns.Add(1)
		case "listen":
			out = "ok\nsig broken\n"
		}
		_, err := nc.Write([]byte(out))
		return err == nil
	})
	c := newClient(t, []string{addr})
	setListenReplyHook(t, func(l *listener) {
		if l.c != c {
			return
		}
		// Hold the supervisor until the reader has hit the bad push.
		waitFor(context.Background(), testTimeout, func() bool {
			l.mu.RLock()
			defer l.mu.RUnlock()
			return l.cur == nil
		})
	})
	ctx := testCtx(t) // ends only at the test's timeout: what the old code waited for
	start := time.Now()
	sub, err := c.Listen(ctx, "c")
	t.Logf("Listen: %v after %v, %d connections, %d gaps", err, time.Since(start), conns.Load(), c.Snapshot().SignalGaps)
	if sub != nil {
		_ = sub.Close()
	}
	require.Error(t, err, "every connection broke: Listen cannot have succeeded")
	assert.NotErrorIs(t, err, context.DeadlineExceeded, "Listen waited for its ctx")
	assert.ErrorIs(t, err, wire.ErrProtocol)
	assert.ErrorIs(t, err, ErrServerUnavailable, "as a Listen on a server that is down")
}
