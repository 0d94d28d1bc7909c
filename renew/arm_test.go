package renew

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/wire"
)

// woken reports (and consumes) a poke of the scheduler goroutine: its wake
// channel, which a manualScheduler's test reads in the goroutine's place.
func woken(s *Scheduler) bool {
	select {
	case <-s.wake:
		return true
	default:
		return false
	}
}

// Tracking a lease due earlier than the armed event re-arms the timer under
// the mutex instead of waking the scheduler goroutine to do it, and the
// timer then wakes it when that lease is due: not before, not later.
func TestTrackEarlierLeaseReArmsTheTimerWithoutWaking(t *testing.T) {
	t.Parallel()
	s, clk := manualScheduler(t, Config{})
	o := syncOwner(t, clk)
	s.tick() // the goroutine's first round: nothing to do, nothing armed
	require.Zero(t, clk.Pending())

	// Renewed after at most 10 s (the keepalive), then one due after at
	// most 2 s (half its TTL).
	late := s.Track(Spec{Key: "late", Token: "t1", TTL: time.Minute, Owner: o})
	assert.False(t, woken(s), "Track woke the scheduler goroutine")
	early := s.Track(Spec{Key: "early", Token: "t2", TTL: 4 * time.Second, Owner: o})
	assert.False(t, woken(s), "Track of an earlier lease woke the scheduler goroutine")
	assert.Equal(t, 1, clk.Pending(), "one timer, re-armed")
	_, lateAt := leaseTimes(s, late)
	_, earlyAt := leaseTimes(s, early)
	require.True(t, earlyAt.Before(lateAt))

	clk.Advance(earlyAt.Sub(clk.Now()) - time.Nanosecond)
	assert.False(t, woken(s), "woken before the earlier lease is due")
	clk.Advance(time.Nanosecond)
	require.True(t, woken(s), "not woken when the earlier lease is due")
	s.tick()
	bs := o.snapshot()
	require.Len(t, bs, 1)
	assert.Equal(t, []time.Time{earlyAt}, requestsFor(bs, wire.CmdRenew, "early"), "renewed on time")
	assert.Empty(t, requestsFor(bs, wire.CmdRenew, "late"))
	assert.Equal(t, 1, clk.Pending(), "armed for the next event")
}

// The same with the scheduler goroutine running: the renewal of the lease
// tracked last, due first, is sent when it is due.
func TestTrackEarlierLeaseIsRenewedOnTime(t *testing.T) {
	t.Parallel()
	clk := newManualClock()
	s := newScheduler(Config{Clock: clk})
	o := syncOwner(t, clk)
	startTestScheduler(t, s)
	s.Track(Spec{Key: "late", Token: "t1", TTL: time.Minute, Owner: o})
	// Armed for it, by Track or by the goroutine's first round: the
	// earlier lease is tracked while the goroutine waits.
	ctx, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	require.NoError(t, clk.AwaitPending(ctx, 1))
	early := s.Track(Spec{Key: "early", Token: "t2", TTL: 4 * time.Second, Owner: o})
	_, earlyAt := leaseTimes(s, early)
	clk.Advance(earlyAt.Sub(clk.Now()))
	bs := o.waitFor(t, waitShort, "the earlier lease's renewal", func(bs []sentBatch) bool {
		return len(requestsFor(bs, wire.CmdRenew, "early")) > 0
	})
	assert.Equal(t, []time.Time{earlyAt}, requestsFor(bs, wire.CmdRenew, "early"))
	assert.Empty(t, requestsFor(bs, wire.CmdRenew, "late"))
}
