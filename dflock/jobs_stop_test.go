package dflock

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// rawLockOnOwnConn takes key on a connection of its own and closes it: with
// auto-release off the server keeps the lock, held by nobody.
func rawLockOnOwnConn(t *testing.T, addr, key string) (token string, held bool) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer nc.Close()
	wc := wire.NewConn(nc, wire.ConnOptions{MaxLine: 4096})
	require.NoError(t, wc.WriteRequests(wire.Request{Cmd: wire.CmdLock, Key: key, Timeout: 0, Lease: 30}))
	r, err := wc.ReadReply(wire.CmdLock)
	require.NoError(t, err)
	return r.Token, r.Status == wire.StatusOK
}

// A release sent aside while Close's jobs are stopping — before Close's
// release deadline, by a job still running (settleLate giving a grant
// back, releaseOn falling back, the pool's OnReleaseLost on a reader) — is
// sent: the flushAside job it needs may start while a job runs.
func TestReleaseAsideByARunningJobWhileCloseStopsTheJobsIsSent(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	c := newClient(t, addrsOf(srv))
	tok, ok := rawLockOnOwnConn(t, srv.Addr(), "k")
	require.True(t, ok)

	// A background job still running when Close's jobs.stop begins (a
	// settleLate waiting for its late answer, say).
	unblock := make(chan struct{})
	require.True(t, c.jobs.start(func(ctx context.Context) {
		select {
		case <-unblock:
		case <-ctx.Done():
		}
	}))
	stopped := make(chan struct{})
	go func() { c.jobs.stop(time.Now().Add(5 * time.Second)); close(stopped) }()
	require.Eventually(t, func() bool {
		c.jobs.mu.Lock()
		defer c.jobs.mu.Unlock()
		return c.jobs.stopped
	}, time.Second, time.Millisecond)

	// That job now gives the grant back aside, well before the deadline.
	c.releaseAside(c.servers[0], wire.ReleaseRequest("k", tok, false))
	time.Sleep(300 * time.Millisecond)
	close(unblock)
	<-stopped

	_, got := rawLockOnOwnConn(t, srv.Addr(), "k")
	require.True(t, got, "the release sent aside 4.7 s before Close's deadline was never sent: the lock is held by nobody")
}
