package pool

import (
	"testing"
	"time"
)

// set may come from any goroutine (quietWatch.add, on a caller's or a
// reader's) while the watch goroutine waits: under -race this reported a
// data race on every platform without a timerfd (the fallback clock kept
// its duration in a plain field).
func TestQuietClockSetWhileWaiting(t *testing.T) {
	t.Parallel()
	q := newQuietClock()
	defer q.close()
	q.set(200 * time.Microsecond)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20 {
			q.wait()
		}
	}()
	for range 200 {
		q.set(200 * time.Microsecond)
		time.Sleep(50 * time.Microsecond)
	}
	<-done
}
