package pool

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The quiet watch moves its next pass forward for a connection due sooner
// (quietWatch.add) by setting its clock while the watch goroutine waits on
// it: the new setting must end a wait already begun, here one set for an
// hour.
func TestQuietClockSetEndsAWaitInProgress(t *testing.T) {
	t.Parallel()
	q := newQuietClock()
	defer q.close()
	if q.f == nil {
		t.Skip("no timerfd here: the clock is time.Sleep, which a new setting does not shorten")
	}
	q.set(time.Hour)
	done := make(chan struct{})
	go func() {
		q.wait()
		close(done)
	}()
	// Parked in the poller on the timer descriptor, not about to read it.
	// This test's waiter: every pool's watch goroutine waits on a clock too.
	require.Eventually(t, func() bool {
		g, ok := goroutineWith("(*quietClock).wait", "created by github.com/dflock-sdk/go/pool.TestQuietClockSetEndsAWaitInProgress ")
		return ok && strings.Contains(g, "[IO wait")
	}, wait, time.Millisecond, "the waiter parks on the timer")
	q.set(time.Millisecond)
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("a clock set sooner did not end the wait in progress")
	}
}

// A reader that stands aside with less of its quiet left than the watch's
// current sleep moves the next pass forward (quietWatch.add): otherwise a
// server closing that connection would be noticed up to a whole sleep late.
// Here the watch sleeps for an hour; the connection is due at once.
func TestQuietWatchAddMovesThePassForward(t *testing.T) {
	t.Parallel()
	p := newPool(t, Config{Addr: "127.0.0.1:1"}) // never dialled: only its clock (now) is used
	w := &quietWatch{kick: make(chan struct{}, 1), clock: newQuietClock()}
	defer w.clock.close()
	if w.clock.f == nil {
		t.Skip("no timerfd here: the clock is time.Sleep, which a new setting does not shorten")
	}
	w.mu.Lock()
	w.wakeAt = satAdd(p.now(), int64(time.Hour))
	w.clock.set(time.Hour)
	w.mu.Unlock()
	slept := make(chan struct{})
	go func() {
		w.clock.wait()
		close(slept)
	}()

	c := &conn{p: p, wake: make(chan struct{}, 1), turn: turnNobody, lastActive: p.now() - int64(watchDelay)}
	c.mu.Lock()
	w.add(c)
	c.mu.Unlock()
	select {
	case <-slept:
	case <-time.After(wait):
		t.Fatal("the watch still sleeps its hour: a connection due now did not move its pass forward")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	require.Equal(t, []*conn{c}, w.conns)
	require.LessOrEqual(t, w.wakeAt, p.now(), "the next pass is due now")
}
