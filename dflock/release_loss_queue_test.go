package dflock

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Hooks.OnLeaseLost is called also for a lease that Release finds the
// server no longer held, and its calls have a queue of their own, so a
// burst of losses is reported whole: the losses Release finds
// (held.lostAtRelease) go to the loss queue too, not the ordinary one,
// which drops past 4096 behind a slow hook.
func TestLossesFoundByReleaseUseTheLossQueue(t *testing.T) {
	t.Parallel()
	const n = 6000
	srvClk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Clock: srvClk, ReadTimeout: -1, MaxLocks: 2 * n})
	cliClk := testutil.NewManualClock(time.Now().Round(0)) // the client's scheduler does not see the pause
	unblock := make(chan struct{})
	var unblockOnce sync.Once
	release := func() { unblockOnce.Do(func() { close(unblock) }) }
	t.Cleanup(release)
	var calls atomic.Int64
	c := newClient(t, []string{srv.Addr()}, withClock(cliClk), WithLaneConns(1), WithHooks(Hooks{OnLeaseLost: func(LeaseInfo, error) {
		<-unblock // a slow hook (blocked while the burst is found)
		calls.Add(1)
	}}))
	ctx := testCtx(t)
	locks := make([]*Lock, n)
	var wg sync.WaitGroup
	const workers = 32
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				l, err := c.TryLock(ctx, fmt.Sprintf("k.%d", i), LeaseTTL(time.Minute))
				if err != nil || l == nil {
					t.Errorf("TryLock %d: %v", i, err)
					return
				}
				locks[i] = l
			}
		})
	}
	wg.Wait()
	require.False(t, t.Failed())

	srvClk.Advance(2 * time.Minute) // every lease expires on the server; the client's clock did not move
	require.Eventually(t, func() bool { return heldTotal(srv) == 0 }, 10*time.Second, time.Millisecond)

	var lost atomic.Int64
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				if err := locks[i].Release(ctx); err != nil {
					lost.Add(1)
				}
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(n), lost.Load(), "every Release found its lease lost")
	dropped := c.Snapshot().CallbacksDropped
	release()
	require.Eventually(t, func() bool { return calls.Load()+dropped >= n }, 20*time.Second, 10*time.Millisecond)
	t.Logf("OnLeaseLost calls %d of %d losses found by Release; CallbacksDropped %d", calls.Load(), n, dropped)
	require.Equal(t, int64(n), calls.Load(), "a burst of losses found by Release is reported whole, as the Hooks doc says of OnLeaseLost")
}
