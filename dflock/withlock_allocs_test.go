package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Allocations per uncontended WithLock, so that a change that adds some is
// seen: 22 with a Background ctx, 24 with a deadline, of which six are the
// SDK's own contexts between the caller's and fn's (runHeld: no caller code
// on the goroutine that ends the lease; fnContext checks the lease's
// deadline).
func TestWithLockAllocations(t *testing.T) { // not parallel: AllocsPerRun counts the process
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items at random, which allocates")
	}
	addr := startServerProcess(t, []string{"-exit-on-eof"})
	c := newClient(t, []string{addr})
	watchdog := time.AfterFunc(testTimeout, func() { panic("TestWithLockAllocations hung") })
	defer watchdog.Stop()
	measure := func(ctx context.Context) float64 {
		withLock := func() {
			require.NoError(t, c.WithLock(ctx, "allocs", func(context.Context) error { return nil }))
		}
		for range 10 {
			withLock()
		}
		return testing.AllocsPerRun(200, withLock)
	}
	assert.LessOrEqual(t, measure(context.Background()), 22.0, "allocations per uncontended WithLock")
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	assert.LessOrEqual(t, measure(ctx), 24.0, "allocations per uncontended WithLock with a deadline")
}
