package pool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// Conn.Release and Conn.Destroy end the acquisition exactly once; later
// calls are no-ops. A Destroy (or Do) after Release must therefore leave
// the connection alone: it is back in the pool, and the next Acquire may
// hold it, with a lock granted on it.
func TestDestroyAfterReleaseLeavesReusedConnAlone(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), MaxConns: 1})
	ctx := ctxWait(t)

	a, err := p.Acquire(ctx)
	require.NoError(t, err)
	a.Release()

	b, err := p.Acquire(ctx)
	require.NoError(t, err)
	require.Same(t, a.c, b.c, "MaxConns 1: the released connection is reused")
	r, err := b.Do(ctx, lockReq("wait-reuse"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	b.Pin()
	id := holder(srv, "wait-reuse")
	require.NotZero(t, id)

	a.Destroy() // documented as a no-op: a's acquisition has ended
	_, err = a.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.ErrorIs(t, err, ErrClosed, "Do on an ended acquisition sends nothing")

	require.NoError(t, b.Err(), "another caller's Destroy-after-Release broke b's connection")
	_, err = b.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	require.Equal(t, id, holder(srv, "wait-reuse"), "b's lock was released by the server")
	b.Unpin()
	b.Destroy()
}

// Close with the wait pool full and callers queued for a connection: every
// queued caller fails with ErrClosed, and Close does not hang.
func TestCloseFailsQueuedAcquires(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), MaxConns: 1})
	ctx := ctxWait(t)
	held, err := p.Acquire(ctx)
	require.NoError(t, err)
	_, err = held.Do(ctx, lockReq("wait-close"))
	require.NoError(t, err)
	held.Pin()

	const n = 6
	errs := make(chan error, n)
	for range n {
		go func() {
			h, err := p.Acquire(ctx)
			if err == nil {
				h.Release()
			}
			errs <- err
		}()
	}
	// puddle exposes no count of queued callers; some may still be on
	// their way into Acquire when Close starts, which must fail them too.
	time.Sleep(20 * time.Millisecond)
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	result(t, done, "Close")
	for range n {
		require.ErrorIs(t, result(t, errs, "Acquire"), ErrClosed)
	}
}
