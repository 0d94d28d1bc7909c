//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A blocking acquire read by its caller leaves the quiet watch
// (resumeIfQuiet: turnCaller); once it is granted, the connection, which
// now owns a lease and sits idle, must be watched again, so that the
// server closing it is noticed within watchDelay (docs/leases.md).
func TestGrantedBlockingWaitIsWatchedAgain(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr()})
	other, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	held, err := other.Do(ctxWait(t), lockReq("busy"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, held.Status)

	var h *Conn
	var done chan error
	claimed := false
	for attempt := 0; attempt < 20 && !claimed; attempt++ {
		if h != nil {
			h.Destroy()
			<-done
		}
		h, err = p.Acquire(ctxWait(t))
		require.NoError(t, err)
		done = make(chan error, 1)
		go func(h *Conn) {
			if _, err := h.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing}); err != nil {
				done <- err
				return
			}
			r, err := h.Do(ctxWait(t), wire.Request{Cmd: wire.CmdLock, Key: "busy", Lease: 30, Timeout: 5})
			if err == nil && r.Status != wire.StatusOK {
				err = errUnsolicited
			}
			done <- err
		}(h)
		require.Eventually(t, func() bool { return waiters(srv, "busy") == 1 }, wait, time.Millisecond)
		h.c.mu.Lock()
		claimed = h.c.turn == turnCaller
		h.c.mu.Unlock()
	}
	require.True(t, claimed, "the blocked caller reads its own reply")
	time.Sleep(10 * time.Millisecond) // the watch has let the connection go
	h.c.mu.Lock()
	require.False(t, h.c.aside, "the watch keeps a connection whose caller reads")
	h.c.mu.Unlock()

	// The grant: h's connection owns "busy" now, and goes quiet.
	other.Destroy() // releases "busy" on the server
	require.NoError(t, <-done)
	time.Sleep(20 * time.Millisecond) // long past watchDelay: the reader watches

	srv.DropConnections()
	start := time.Now()
	require.Eventually(t, func() bool { return h.Err() != nil }, time.Second, 100*time.Microsecond,
		"the close of an idle connection owning a lease went unnoticed")
	t.Logf("close noticed after %v", time.Since(start))
	h.Destroy()
}
