package pool

import (
	"runtime"
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
	require.Eventually(t, func() bool {
		buf := make([]byte, 1<<20)
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "[IO wait") && strings.Contains(g, "(*quietClock).wait") {
				return true
			}
		}
		return false
	}, wait, time.Millisecond, "the waiter parks on the timer")
	q.set(time.Millisecond)
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("a clock set sooner did not end the wait in progress")
	}
}
