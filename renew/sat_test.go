package renew

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/wire"
)

func TestSaturatingArithmetic(t *testing.T) {
	t.Parallel()
	const maxI, minI = math.MaxInt64, math.MinInt64
	for _, c := range []struct{ a, b, sum, diff int64 }{
		{1, 2, 3, -1},
		{maxI, 1, maxI, maxI - 1},
		{maxI - 5, 10, maxI, maxI - 15},
		{minI, -1, minI, minI + 1},
		{minI, 1, minI + 1, minI},
		{0, minI, minI, maxI},
		{-1, minI, minI, maxI},
		{1, minI, minI + 1, maxI},
		{maxI, maxI, maxI, 0},
		{minI, minI, minI, 0},
		{maxI, minI, -1, maxI},
		{minI, maxI, -1, minI},
	} {
		assert.Equal(t, c.sum, addSat(c.a, c.b), "%d + %d", c.a, c.b)
		assert.Equal(t, c.diff, subSat(c.a, c.b), "%d - %d", c.a, c.b)
	}
	assert.Equal(t, time.Duration(math.MaxInt64), seconds(math.MaxInt64))
	assert.Equal(t, time.Duration(math.MinInt64), seconds(math.MinInt64))
	assert.Equal(t, time.Duration(wire.MaxSeconds)*time.Second, seconds(wire.MaxSeconds))
	assert.Equal(t, time.Duration(math.MaxInt64), scaleDur(math.MaxInt64, 1-1e-17)) // rounds to 1
	assert.Equal(t, time.Duration(0), scaleDur(time.Second, -1))
	assert.Equal(t, 500*time.Millisecond, scaleDur(time.Second, 0.5))
}

// foreverTTL is what the Client tracks for LeaseTTL(math.MaxInt64): the
// protocol maximum, about 292 years.
const foreverTTL = time.Duration(wire.MaxSeconds) * time.Second

// A "forever" lease tracked by a scheduler that has been running for an
// hour is held and renewed at the keepalive with the full TTL, not lost:
// its loss deadline (sent + TTL − margin) lies beyond the int64 range and
// must saturate instead of wrapping into the past.
func TestForeverLeaseOnAnOldSchedulerIsHeldAndRenewed(t *testing.T) {
	t.Parallel()
	o := okOwner(t)
	s := newSchedulerAt(Config{KeepAlive: 50 * time.Millisecond}, time.Now().Add(-time.Hour))
	startTestScheduler(t, s)
	var c Counters
	l := s.Track(Spec{Key: "k", Token: "t", TTL: time.Duration(math.MaxInt64), Owner: o, Sent: time.Now(), Counters: &c})
	require.Equal(t, foreverTTL, l.TTL())

	const rounds = 3
	// A wrapped deadline loses the lease at the first wake (and releases it,
	// which wakes the wait): stop waiting then.
	bs := o.waitFor(t, waitShort, "renewals", func(bs []sentBatch) bool {
		return len(bs) >= rounds || l.Err() != nil
	})
	require.NoError(t, l.Err())
	o.waitAnswered(t, rounds, waitShort)
	for _, b := range bs {
		assert.Equal(t, wire.Request{Cmd: wire.CmdRenew, Key: "k", Token: "t", Lease: wire.MaxSeconds}, b.reqs[0])
	}
	assert.Zero(t, c.Lost.Load())
	assert.GreaterOrEqual(t, c.Renewed.Load(), int64(rounds))
	s.mu.Lock()
	defer s.mu.Unlock()
	assert.Equal(t, int64(math.MaxInt64), l.deadline.Load(), "deadline saturates")
	assert.Greater(t, l.renewAt, l.confirmed)
	assert.LessOrEqual(t, l.renewAt-l.confirmed, int64(50*time.Millisecond))
}

// Explicit renewals and a server that applied a shorter lease take the same
// saturating paths.
func TestForeverLeaseExplicitRenewAndShorterAppliedLease(t *testing.T) {
	t.Parallel()
	s := newSchedulerAt(Config{}, time.Now().Add(-time.Hour))
	o := okOwner(t)
	s.mu.Lock()
	l := &Lease{s: s, key: "k", owner: o, ttl: foreverTTL, idx: -1, done: make(chan struct{})}
	now := s.now()
	s.confirmLocked(l, now, l.ttl)
	assert.Equal(t, int64(math.MaxInt64), l.deadline.Load())
	assert.Greater(t, l.renewAt, now)
	s.mu.Unlock()

	// ok with the protocol maximum: nothing shorter, deadline stays saturated.
	_, err := s.complete(l, now+1, wire.Reply{Status: wire.StatusOK, Lease: wire.MaxSeconds}, nil)
	require.NoError(t, err)
	assert.Equal(t, int64(math.MaxInt64), l.deadline.Load())
	// ok with a shorter lease: believed.
	_, err = s.complete(l, now+2, wire.Reply{Status: wire.StatusOK, Lease: 5}, nil)
	require.NoError(t, err)
	assert.Equal(t, now+2+int64(5*time.Second-defaultSafetyMargin(5*time.Second)), l.deadline.Load())
}

// Spec.Sent far in the past is an overdue grant (lost at once, whatever the
// TTL); far in the future it counts as now (held and renewed, not parked
// forever).
func TestSentFarInThePastOrFuture(t *testing.T) {
	t.Parallel()
	o := okOwner(t)
	s := newTestScheduler(t, Config{KeepAlive: 50 * time.Millisecond})

	past := s.Track(Spec{Key: "past", Token: "t", TTL: foreverTTL, Owner: o, Sent: time.Unix(0, 0).AddDate(-1000, 0, 0)})
	waitDone(t, past, waitShort)
	assert.ErrorIs(t, past.Err(), errExpired)
	assert.Contains(t, past.Err().Error(), "send 2562047h47m16.854775807s ago", "the elapsed time saturates")

	before := time.Now()
	future := s.Track(Spec{Key: "future", Token: "t", TTL: time.Hour, Owner: o, Sent: time.Now().AddDate(1000, 0, 0)})
	s.mu.Lock()
	confirmed := s.epoch.Add(time.Duration(future.confirmed))
	s.mu.Unlock()
	require.False(t, confirmed.Before(before) || confirmed.After(time.Now()), "a future Sent must count as now")
	o.waitFor(t, waitShort, "renewals of future", func(bs []sentBatch) bool {
		return len(requestsFor(bs, wire.CmdRenew, "future")) >= 2
	})
	assert.NoError(t, future.Err())
}

// A renewal the server applied for less than asked shortens the interval,
// and with it how early the lease may ride in another lease's round: a
// quarter of the applied TTL's interval, never of the one asked for (which
// could exceed the whole applied interval, renewing the lease in every
// round).
func TestShorterAppliedLeaseShrinksTheEarlyRenewal(t *testing.T) {
	t.Parallel()
	s := newSchedulerAt(Config{}, time.Now().Add(-time.Hour))
	o := okOwner(t)
	s.mu.Lock()
	l := &Lease{s: s, key: "k", owner: o, ttl: time.Minute, idx: -1, done: make(chan struct{})}
	now := s.now()
	iv := s.confirmLocked(l, now, l.ttl)
	s.mu.Unlock()
	require.Equal(t, 10*time.Second, iv, "the default keepalive caps a minute's interval")
	assert.Equal(t, int64(iv/4), l.early())

	_, err := s.complete(l, now+1, wire.Reply{Status: wire.StatusOK, Lease: 4}, nil)
	require.NoError(t, err)
	s.mu.Lock()
	defer s.mu.Unlock()
	applied := s.interval(s.life(4 * time.Second))
	require.Equal(t, 2*time.Second, applied)
	assert.Equal(t, now+1+int64(applied), l.renewAt)
	assert.Equal(t, int64(applied/4), l.early(), "a quarter of the applied TTL's interval")
}
