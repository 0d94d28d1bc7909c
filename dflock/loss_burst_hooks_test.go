package dflock

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// One broken connection loses all its leases at once: more than the
// callback queue holds (4096) at the 10,000 leases per Client the
// scheduler is built for. Every loss must still reach OnLeaseLost (and be
// logged), however quick the hook: loss reports have a queue of their own.
func TestEveryLossOfABurstReachesOnLeaseLost(t *testing.T) {
	t.Parallel()
	for _, withLogger := range []bool{false, true} {
		t.Run(fmt.Sprintf("logger=%v", withLogger), func(t *testing.T) {
			const n = 10000
			srv := newServer(t, testutil.Config{MaxLocks: 2 * n})
			var called atomic.Int64
			opts := []Option{WithLaneConns(1), WithHooks(Hooks{OnLeaseLost: func(LeaseInfo, error) { called.Add(1) }})}
			if withLogger {
				opts = append(opts, WithLogger(slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))))
			}
			c := newClient(t, []string{srv.Addr()}, opts...)
			ctx := testCtx(t)

			locks := make([]*Lock, n)
			var wg sync.WaitGroup
			var firstErr atomic.Value
			const workers = 32
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < n; i += workers {
						l, err := c.TryLock(ctx, fmt.Sprintf("burst.%d", i), LeaseTTL(time.Minute))
						if err != nil || l == nil {
							firstErr.CompareAndSwap(nil, fmt.Sprintf("key %d: %v", i, err))
							return
						}
						locks[i] = l
					}
				}()
			}
			wg.Wait()
			require.Nil(t, firstErr.Load())

			srv.DropConnections() // the one lane connection, owner of every lease
			for _, l := range locks {
				select {
				case <-l.Done():
				case <-ctx.Done():
					t.Fatal("a lease was not reported lost")
				}
			}
			ok := assert.Eventually(t, func() bool { return called.Load() == n }, testTimeout, 10*time.Millisecond)
			if !ok {
				t.Errorf("OnLeaseLost was called %d times for %d leases lost (Snapshot: CallbacksDropped %d)",
					called.Load(), n, c.Snapshot().CallbacksDropped)
			}
			assert.Zero(t, c.Snapshot().CallbacksDropped)
		})
	}
}
