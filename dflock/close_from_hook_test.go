package dflock

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A hook that calls Client.Close (a program that shuts down when it learns
// a lease is lost) runs on the callback goroutine, which Close cannot wait
// for: Close returns without waiting for the callback bound, and the
// reports queued behind the hook (the other leases' losses) still run.
func TestCloseFromHookDoesNotDropQueuedCallbacks(t *testing.T) {
	for _, elsewhere := range []bool{false, true} {
		name := "first Close"
		if elsewhere {
			name = "while a Close elsewhere runs"
		}
		t.Run(name, func(t *testing.T) {
			srv := newServer(t, testutil.Config{})
			var c *Client
			var first atomic.Bool
			var lost atomic.Int64
			hookClosed := make(chan struct{})
			var mu sync.Mutex // the reports come through the network, which the race detector does not see
			var locks []*Lock
			c, err := New([]string{srv.Addr()}, withCallbackWait(time.Hour), WithHooks(Hooks{
				OnLeaseLost: func(LeaseInfo, error) {
					lost.Add(1)
					if !first.CompareAndSwap(false, true) {
						return
					}
					// Every lease lost, so every report queued, before
					// Close: the leases may be on several lanes, whose
					// breaks are seen one after the other, and Close
					// would release those not lost yet.
					mu.Lock()
					ls := locks
					mu.Unlock()
					for _, l := range ls {
						<-l.Done()
					}
					for elsewhere && !c.closing.Load() {
						time.Sleep(time.Millisecond)
					}
					_ = c.Close()
					close(hookClosed)
				},
			}))
			require.NoError(t, err)
			ctx := testCtx(t)
			const n = 5
			for i := range n {
				l, err := c.Lock(ctx, "hook-close-"+string(rune('a'+i)))
				require.NoError(t, err)
				mu.Lock()
				locks = append(locks, l)
				mu.Unlock()
			}
			srv.DropConnections() // every lease lost at once: n reports queued
			outer := make(chan struct{})
			if elsewhere {
				// Once every lease is lost (as the hook waits for) and
				// the hook runs.
				for _, l := range locks {
					<-l.Done()
				}
				require.True(t, waitFor(ctx, testTimeout, func() bool { return lost.Load() >= 1 }))
				go func() { _ = c.Close(); close(outer) }()
			} else {
				close(outer)
			}
			// withCallbackWait(time.Hour): a Close that waited for the
			// hook calling it, or dropped the rest, would not get here
			// with every report run before the test's timeout.
			for what, ch := range map[string]chan struct{}{"Close from the hook": hookClosed, "Close elsewhere": outer} {
				select {
				case <-ch:
				case <-ctx.Done():
					t.Fatalf("%s did not return", what)
				}
			}
			require.True(t, waitFor(ctx, testTimeout, func() bool {
				return lost.Load() == n || c.Snapshot().CallbacksDropped > 0
			}))
			assert.Zero(t, c.Snapshot().CallbacksDropped, "callbacks dropped")
			assert.EqualValues(t, n, lost.Load(), "losses reported")
			// The dispatcher exits once the hook has returned (goleak).
			require.NoError(t, c.Close())
		})
	}
}
