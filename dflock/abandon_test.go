package dflock

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// awaitWaiters waits until the server shows n waiters for the lock key, or
// fails when ctx ends.
func awaitWaiters(t *testing.T, ctx context.Context, srv *testutil.Server, key string, n int) {
	t.Helper()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for lockWaiters(srv, key) != n {
		select {
		case <-ctx.Done():
			t.Fatalf("the server never showed %d waiter(s) for %q (now %d)", n, key, lockWaiters(srv, key))
		case <-tick.C:
		}
	}
}

// Servers before v1.15 keep a waiter whose connection closed queued until
// its own timeout runs out. A Lock that gives up must therefore never have
// sent such a server a wait longer than legacyWaitChunk: the abandoned
// waiter leaves the server's queue within that, whatever the caller's
// deadline (none, or a long one) was: advancing the server's clock by the
// chunk removes it.
func TestAbandonedWaiterLeavesLegacyServerWithinTheChunk(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Version: testutil.V1_10, Clock: clk})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	h, err := c.Lock(ctx, "k")
	require.NoError(t, err)

	for _, opts := range [][]AcquireOption{nil, {AcquireTimeout(time.Hour)}} {
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := c.Lock(wctx, "k", opts...)
			done <- err
		}()
		awaitWaiters(t, ctx, srv, "k", 1)
		cancel()
		assert.True(t, errors.Is(<-done, context.Canceled))
		// The server still lists the waiter (it does not watch for peer
		// close); it must drop it once the chunk it was sent ends.
		// (Both rounds advance 20 s in all: less than the holder's 33 s
		// lease and the 23 s read timeout, which nothing renews here.)
		clk.Advance(legacyWaitChunk)
		awaitWaiters(t, ctx, srv, "k", 0)
	}
	require.NoError(t, h.Release(ctx))
}

// On servers that answer ping (v1.14+) waits are not shortened, so FIFO
// order holds across waits longer than legacyWaitChunk: waiters queued in
// order are granted in that order.
func TestLongWaitsKeepFIFOOnModernServers(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Clock: clk})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	h, err := c.Lock(ctx, "fifo")
	require.NoError(t, err)

	// The waiters' context has no deadline, so that they send the server
	// no timeout of their own shorter than the 20.5 s the clock will pass;
	// the test's own deadline still ends them.
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()

	const n = 4
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			l, err := c.Lock(wctx, "fifo")
			if !assert.NoError(t, err) {
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			assert.NoError(t, l.Release(ctx))
		})
		awaitWaiters(t, ctx, srv, "fifo", i+1)
	}
	// Hold past two legacy chunks on the server's clock: a chunked wait
	// would have re-joined. (20.5 s: less than the holder's 33 s lease and
	// the 23 s read timeout, which nothing renews here.)
	clk.Advance(2*legacyWaitChunk + 500*time.Millisecond)
	require.NoError(t, h.Release(ctx))
	wg.Wait()
	assert.Equal(t, []int{0, 1, 2, 3}, order)
}
