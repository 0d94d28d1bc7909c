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

	h, done := blockingWaitReadByCaller(t, p, srv, "busy", 5)
	require.Eventually(t, func() bool {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		return !h.c.aside
	}, wait, time.Millisecond, "the watch keeps a connection whose caller reads")

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
