package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An uncontended Lock+Release costs the client two allocations: the token
// string (read from the reply), and the held lease with its handle and the
// scheduler's Lease inside it (renew.Scheduler.TrackInto). The server runs in another process (as in
// BenchmarkLockRelease), so that AllocsPerRun, which counts the whole
// process, counts the client alone. Each cut this pins — acquire options
// applied only when given, the handle inside held, held itself as the loss
// handler, the scheduler's Lease inside held, the release's batch inside
// held and its waiter pooled, Done made on first use, an idle owner's
// index entry kept — shows up here as one more allocation if undone.
func TestLockReleaseAllocations(t *testing.T) { // not parallel: AllocsPerRun counts the process's allocations
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items at random, which allocates")
	}
	addr := startServerProcess(t, []string{"-exit-on-eof"})
	c := newClient(t, []string{addr})
	measure := func(ctx context.Context) float64 {
		lockRelease := func() { // AllocsPerRun calls it on this goroutine: require works
			l, err := c.Lock(ctx, "allocs")
			require.NoError(t, err)
			require.NoError(t, l.Release(ctx))
		}
		for range 10 { // connections dialled, pools and buffers warm
			lockRelease()
		}
		return testing.AllocsPerRun(200, lockRelease)
	}

	// A ctx that cannot end, as in the benchmark: a broken Lock or Release
	// that hangs on it would hide every other test's result behind this
	// one (it runs first, alone), so a watchdog ends the run instead.
	watchdog := time.AfterFunc(testTimeout, func() { panic("TestLockReleaseAllocations hung") })
	defer watchdog.Stop()
	assert.LessOrEqual(t, measure(context.Background()), 2.0, "allocations per uncontended Lock+Release")
	// A ctx that can end costs each of Lock and Release the watch that
	// interrupts its caller's read of its own reply when ctx ends
	// (context.AfterFunc: 2 allocations). Neither merges ctx with the
	// Client's lifetime any more (c.opContext, 7 allocations, is left to
	// the wait path): the pool watches that itself (pool.Config.Lifetime).
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	assert.LessOrEqual(t, measure(ctx), 6.0, "allocations per uncontended Lock+Release with a deadline")
	require.Equal(t, int64(422), c.stats.laneGrants.Load(), "every lock granted on the control lane, uncontended")

	// A key found held a moment ago goes straight to the wait pool: a
	// blocking l on a wait-pool connection and the release on it cost two
	// more (the connection's handle, and its return to the pool), and
	// nothing for the box that would carry an answer that came after its
	// caller gave up (recycled).
	holder := newClient(t, []string{addr})
	h, err := holder.Lock(context.Background(), "hot")
	require.NoError(t, err)
	_, err = c.Lock(context.Background(), "hot", AcquireTimeout(time.Millisecond))
	require.ErrorIs(t, err, ErrNotAcquired) // "hot" is hot now
	require.NoError(t, h.Release(context.Background()))
	waits := c.stats.waitGrants.Load()
	allocs := testing.AllocsPerRun(200, func() {
		l, err := c.Lock(context.Background(), "hot")
		require.NoError(t, err)
		require.NoError(t, l.Release(context.Background()))
	})
	assert.LessOrEqual(t, allocs, 4.0, "allocations per Lock+Release through the wait pool")
	require.Equal(t, waits+201, c.stats.waitGrants.Load(), "every lock granted on the wait pool")
}
