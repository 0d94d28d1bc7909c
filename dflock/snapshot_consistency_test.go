package dflock

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Every Snapshot and every Stats adds up while leases come and go: no more
// leases ended (released or lost) than acquired, no more grants than
// acquisitions, no server losing more than it tracked, and no lease counted
// both held and released (a release between the two loads was). A
// dashboard that subtracts must never see a negative count.
func TestSnapshotAndStatsNeverEndMoreThanAcquired(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, []string{srv.Addr()})
	ops, stop := churnLocks(t, c, func(g int) string {
		return "snap-" + string(rune('a'+g%4)) // half contend: both grant paths
	})
	defer stop()
	for i := 0; i < 50000 || ops.Load() < 200; i++ {
		s := c.Snapshot()
		require.LessOrEqual(t, int64(s.Held)+s.Released+s.Lost, s.Acquired, "snapshot %d: %+v", i, s)
		ss := s.Servers[0]
		require.GreaterOrEqual(t, ss.LeasesHeld, 0)
		require.LessOrEqual(t, int64(ss.LeasesHeld)+ss.Releases+ss.Losses, s.Acquired, "snapshot %d: %+v", i, ss)
		if i%10 == 0 {
			st := c.localStats(Stats{Servers: make([]ServerStats, 1)})
			cs := st.Client
			require.LessOrEqual(t, int64(cs.Held)+cs.Released+cs.Lost, cs.Acquired, "stats %d: %+v", i, cs)
			require.LessOrEqual(t, cs.LaneGrants+cs.WaitGrants, cs.Acquired, "stats %d: %+v", i, cs)
		}
	}
	stop() // idempotent: the deferred call finds the goroutines gone
	s := c.Snapshot()
	require.Equal(t, s.Acquired, s.Released+s.Lost, "all released at the end: %+v", s)
	st := c.localStats(Stats{Servers: make([]ServerStats, 1)})
	require.Equal(t, st.Client.Acquired, st.Client.LaneGrants+st.Client.WaitGrants)
}

// A server's connection counts by role never add up to more wait-pool
// connections than the cap while connections are taken and given back: one
// changing hands is counted in neither role, never in both (found by
// review: Idle 1 + InUse 2 with a cap of 2).
func TestSnapshotConnCountsNeverExceedTheWaitPoolCap(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv), WithMaxConnsPerServer(2), withoutLaneFastPath())
	ops, stop := churnLocks(t, c, func(g int) string { return "conns-" + string(rune('a'+g)) })
	defer stop()
	for i := 0; i < 50000 || ops.Load() < 200; i++ {
		cc := c.Snapshot().Servers[0].Conns
		require.LessOrEqual(t, cc.Idle+cc.InUse+cc.Pinned, 2, "reading %d: %+v", i, cc)
	}
}

// churnLocks runs 8 goroutines that Lock and Release key(g) until stop,
// which waits for them; ops counts their rounds.
func churnLocks(t *testing.T, c *Client, key func(g int) string) (ops *atomic.Int64, stop func()) {
	ctx := testCtx(t)
	ops = new(atomic.Int64)
	var done atomic.Bool
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			k := key(g)
			for !done.Load() {
				l, err := c.Lock(ctx, k)
				if err != nil {
					return
				}
				_ = l.Release(ctx)
				ops.Add(1)
			}
		})
	}
	return ops, func() { done.Store(true); wg.Wait() }
}
