package renew

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// advancingClock is a ManualClock that another goroutine advances between
// the scheduler's reading of Now and its AfterFunc call: the next AfterFunc
// first advances the clock by step (once), as a concurrent Advance would.
type advancingClock struct {
	*testutil.ManualClock
	step atomic.Int64
}

func (c *advancingClock) AfterFunc(d time.Duration, f func()) interface{ Stop() bool } {
	if st := c.step.Swap(0); st > 0 {
		c.ManualClock.Advance(time.Duration(st))
	}
	return c.ManualClock.AfterFunc(d, f)
}

// armTimerLocked computes the timer's delay from a clock reading taken
// before AfterFunc. A test clock advanced in between, short of the event,
// must not leave the timer late by that step (a renewal, or a loss
// deadline, acted on a whole Advance step late).
func TestTimerArmedAcrossAConcurrentAdvanceWakesOnTime(t *testing.T) {
	t.Parallel()
	clk := &advancingClock{ManualClock: newManualClock()}
	s := newScheduler(Config{Clock: clk})
	t.Cleanup(func() {
		close(s.exited) // no goroutine: the test reads s.wake in its place
		s.Close()
	})
	o := syncOwner(t, clk.ManualClock)
	s.tick() // nothing armed

	clk.step.Store(int64(time.Second)) // while Track arms the timer
	l := s.Track(Spec{Key: "k", Token: "t", TTL: 10 * time.Second, Owner: o, Sent: clk.Now()})
	_, due := leaseTimes(s, l)
	require.True(t, clk.Now().Before(due))
	assert.False(t, woken(s), "woken before the lease is due")
	clk.Advance(due.Sub(clk.Now()))
	assert.True(t, woken(s), "the clock reached the lease's renewal time and the scheduler was not woken")
}
