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

// docs/leases.md: "When the keepalive gives up on a connection whose
// requests went unanswered for 2×KeepAlive, it fails their callers at once
// (ErrServerUnavailable, "no reply for 2×KeepAlive") but the connection
// lingers". A caller whose request sits in a write still under way when
// the connection breaks waits for that write's verdict (call.verdict); the
// cut connection lingers with its socket open, so the write blocked on the
// stalled server must be cut short by the linger, or the caller, failed by
// the cut, is held until the write's own timeout (found by review).
func TestKeepaliveCutFailsACallerInABlockedWriteAtOnce(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	const ka = 250 * time.Millisecond
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, KeepAlive: ka, writeTimeout: 8 * time.Second,
		OnReleaseLost: func(wire.Request) {}})
	bigKey := strings.Repeat("x", 16<<20) // more than the socket buffers take: the write blocks
	h, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	defer h.Destroy()
	settle(t, h.c)

	resume := srv.Stall(0)
	t.Cleanup(resume)
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
