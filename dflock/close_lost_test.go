package dflock

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Close releases every held lease. One whose release Close finds refused —
// the server had already expired it while the client's clock (a pause, a
// suspended VM) hid the loss — was lost, not released: the Close doc says
// a Release after Close "reports how the lease ended", and leases.md says a
// lease whose release finds it already gone counts as lost (Release returns
// ErrLockLost, Snapshot counts it in Losses, Hooks.OnLeaseLost runs). When
// Close sends that release instead of Release, all three say "released".
func TestReleaseAfterCloseThatFoundTheLeaseExpiredReportsTheLoss(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srvClk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Clock: srvClk, ReadTimeout: -1})
	cliClk := testutil.NewManualClock(time.Now().Round(0)) // the client's scheduler does not see the pause
	var hooks atomic.Int64
	c, err := New(addrsOf(srv), withClock(cliClk), WithHooks(Hooks{OnLeaseLost: func(LeaseInfo, error) { hooks.Add(1) }}))
	require.NoError(t, err)
	l, err := c.TryLock(ctx, "exp", LeaseTTL(30*time.Second))
	require.NoError(t, err)
	s, err := c.TrySemaphore(ctx, "sem", 2, LeaseTTL(30*time.Second))
	require.NoError(t, err)

	srvClk.Advance(40 * time.Second) // both leases expire on the server
	require.Eventually(t, func() bool { return heldTotal(srv) == 0 }, 5*time.Second, time.Millisecond)

	require.NoError(t, c.Close()) // Close sends the releases; the server refuses both
	lerr, serr := l.Release(ctx), s.Release(ctx)
	t.Logf("Release after Close: lock %v, semaphore %v; Snapshot Lost %d Released %d; OnLeaseLost calls %d",
		lerr, serr, c.Snapshot().Lost, c.Snapshot().Released, hooks.Load())
	assert.ErrorIs(t, lerr, ErrLockLost, "the lock had expired on the server before Close's release")
	assert.ErrorIs(t, serr, ErrLockLost, "the slot had expired on the server before Close's release")
	assert.Equal(t, int64(2), c.Snapshot().Lost, "losses found by Close's releases are losses")
	assert.Equal(t, int64(2), hooks.Load(), "OnLeaseLost for each lease found lost")
}
