package dflock

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// The hook calls still queued behind a stuck hook when Close gives up
// waiting for it will never run: they are counted as dropped by the time
// Close returns, so that Snapshot after Close (and the dflockotel counter
// fed by it) gives the final figures. (Found by review: they were counted
// only when, if ever, the stuck hook returned.)
func TestCallbacksCloseGaveUpOnAreCountedWhenCloseReturns(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	unblock := make(chan struct{})
	t.Cleanup(func() { close(unblock) })
	started := make(chan struct{}, 1)
	c, err := New([]string{srv.Addr()}, withCallbackWait(50*time.Millisecond), WithHooks(Hooks{
		OnDial: func(DialInfo) {
			select {
			case started <- struct{}{}:
			default:
			}
			<-unblock // a hook stuck on something the program tears down later
		},
	}))
	require.NoError(t, err)
	ctx := testCtx(t)

	// Each Stats dials a query connection: one OnDial each. The first
	// blocks the callback goroutine; the rest wait in the queue.
	const queued = 5
	for range queued + 1 {
		_, err := c.Stats(ctx)
		require.NoError(t, err)
	}
	<-started
	require.NoError(t, c.Close())

	s := c.Snapshot()
	t.Logf("after Close: CallbacksDropped=%d", s.CallbacksDropped)
	assert.GreaterOrEqual(t, s.CallbacksDropped, int64(queued),
		"hook calls Close gave up on (they will never run) are not counted once Close has returned")
}

// So are the loss reports of a batch the dispatcher had taken whose first
// OnLeaseLost is stuck: they were off both queues, and Close's count missed
// them (found by review: 1 dropped of 20).
func TestLossReportsBehindAStuckOnLeaseLostAreCountedWhenCloseReturns(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	gate := make(chan struct{})
	unblock := make(chan struct{})
	t.Cleanup(func() { close(unblock) })
	lossStarted := make(chan struct{}, 1)
	var dialOnce sync.Once
	c, err := New([]string{srv.Addr()}, withCallbackWait(50*time.Millisecond), WithLaneConns(1), WithHooks(Hooks{
		OnDial: func(DialInfo) { dialOnce.Do(func() { <-gate }) }, // holds the dispatcher until the losses are queued
		OnLeaseLost: func(LeaseInfo, error) {
			select {
			case lossStarted <- struct{}{}:
			default:
			}
			<-unblock // stuck on something the program tears down later
		},
	}))
	require.NoError(t, err)
	ctx := testCtx(t)
	const n = 20
	for i := range n {
		_, err := c.TryLock(ctx, "k"+strconv.Itoa(i))
		require.NoError(t, err)
	}
	srv.DropConnections()
	require.Eventually(t, func() bool {
		c.disp.lossMu.Lock()
		defer c.disp.lossMu.Unlock()
		return len(c.disp.losses) == n
	}, testTimeout, time.Millisecond, "the losses were not all queued")
	close(gate) // the dispatcher takes the n losses as one batch; the first sticks
	recv(t, ctx, lossStarted, "the first OnLeaseLost")
	require.NoError(t, c.Close())
	s := c.Snapshot()
	assert.Equal(t, int64(n), s.Lost)
	// (Other hooks, a redial's OnDial, may be dropped too.)
	assert.GreaterOrEqual(t, s.CallbacksDropped, int64(n-1),
		"the loss reports Close gave up on (all but the stuck one) are counted once Close has returned")
}
