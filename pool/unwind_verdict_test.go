//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A Request (a release) whose caller unwinds through ctx.Done in
// await's verdict select (the connection cut while the write carrying the
// request was under way) must still give late its outcome: dflock's
// sendRelease waits for it (awaitRelease) and Close waits for that.
func TestRequestUnwindingAtTheVerdictStillTellsLate(t *testing.T) {
	t.Parallel()
	for k := int64(1); k <= 8; k++ {
		srv := newServer(t, testutil.Config{DisableAutoRelease: true})
		p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, KeepAlive: 250 * time.Millisecond, writeTimeout: 8 * time.Second,
			OnReleaseLost: func(wire.Request) {}})
		bigKey := strings.Repeat("x", 16<<20)
		h, err := p.Acquire(ctxWait(t))
		require.NoError(t, err)
		settle(t, h.c)
		writes := h.c.nwrite.Load()
		resume := srv.Stall(0)
		h.SendBatch([]wire.Request{{Cmd: wire.CmdLock, Key: "a", Lease: 30}}, func(int, wire.Reply, error) {})
		require.Eventually(t, func() bool { return h.c.nwrite.Load() == writes+1 }, wait, time.Millisecond)
		late := make(chan error, 1)
		ret := make(chan any, 1)
		ctx := &kthCallCtx{Context: context.Background(), k: k}
		go func() {
			defer func() { ret <- recover() }()
			_, answered, _ := h.Request(ctx, wire.ReleaseRequest(bigKey, "tok", false), func(_ int, _ wire.Reply, err error) { late <- err })
			if answered {
				late <- nil // the caller got the outcome
			}
		}()
		p0 := <-ret
		select {
		case <-late:
		case <-time.After(3 * time.Second):
			t.Errorf("k=%d (panic %v): the release's outcome never reached late (nor the caller); unwound at:\n%s", k, p0, ctx.where)
		}
		resume()
		h.Destroy()
		if !ctx.hit.Load() {
			t.Logf("k=%d not reached: done", k)
			break
		}
	}
}
