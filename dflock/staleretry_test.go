package dflock

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// idleWaitConn leaves c (through px) with an idle wait-pool connection that
// has carried a blocking Lock: holder holds key, c waits for it on the wait
// pool, gets it, releases it.
func idleWaitConn(t *testing.T, srv *testutil.Server, c, holder *Client, key string) {
	t.Helper()
	ctx := testCtx(t)
	h, err := holder.Lock(ctx, key)
	require.NoError(t, err)
	got := make(chan error, 1)
	go func() {
		l, err := c.Lock(ctx, key)
		if err == nil {
			err = l.Release(ctx)
		}
		got <- err
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, key) == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, h.Release(ctx))
	require.NoError(t, <-got)
	require.Eventually(t, func() bool { return c.servers[0].pool.Stats().IdleConns > 0 }, time.Second, time.Millisecond)
}

// A Lock that has been waiting on the server for a while (the server has
// queued it) when its connection is reset fails, as it does on a freshly
// dialled connection: it is not a request sent on an idle connection the
// server had closed, although its connection came from the idle ones, and
// sent again it would lose its place in the queue and hide the outage.
func TestMidWaitBreakIsNotRetriedAsStale(t *testing.T) {
	t.Parallel()
	for _, reused := range []bool{false, true} {
		name := "fresh"
		if reused {
			name = "reused"
		}
		t.Run(name, func(t *testing.T) {
			srv := newServer(t, testutil.Config{})
			px := newProxy(t, srv.Addr())
			holder := newClient(t, addrsOf(srv))
			c := newClient(t, []string{px.Addr()})
			ctx := testCtx(t)
			if reused {
				idleWaitConn(t, srv, c, holder, "k")
			}
			h, err := holder.Lock(ctx, "k")
			require.NoError(t, err)
			defer h.Release(ctx)
			got := make(chan error, 1)
			go func() {
				l, err := c.Lock(ctx, "k")
				if err == nil {
					_ = l.Release(ctx)
				}
				got <- err
			}()
			// The Lock is queued on the server for a good while.
			require.Eventually(t, func() bool { return lockWaiters(srv, "k") == 1 }, 5*time.Second, time.Millisecond)
			time.Sleep(2 * staleWindow)
			px.ResetAll() // the wait's connection breaks mid-wait
			select {
			case err := <-got:
				require.Error(t, err)
				require.True(t, errors.Is(err, ErrServerUnavailable), "%v", err)
			case <-time.After(time.Second):
				waiters := 0
				for _, l := range srv.Stats().Locks {
					if l.Key == "k" {
						waiters = l.Waiters
					}
				}
				t.Fatalf("Lock on a %s connection reset after waiting 2 × staleWindow did not fail: still waiting after 1 s (server waiters of k: %d) — it was sent again as if the connection had been stale", name, waiters)
			}
		})
	}
}
