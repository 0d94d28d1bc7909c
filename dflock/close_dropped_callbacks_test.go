package dflock

import (
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
