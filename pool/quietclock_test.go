package pool

import (
	"testing"
	"time"
)

// set may come from any goroutine (quietWatch.add, on a caller's or a
// reader's) while the watch goroutine sets the clock and waits on it, as
// it does in quietWatch.pass: under -race this reported a data race on
// every platform without a timerfd (the fallback clock kept its duration
// in a plain field).
func TestQuietClockSetWhileWaiting(t *testing.T) {
	t.Parallel()
	q := newQuietClock()
	defer q.close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20 {
			q.set(200 * time.Microsecond)
			q.wait()
		}
	}()
	for range 200 {
		select {
		case <-done:
			return
		default:
		}
		q.set(200 * time.Microsecond)
		time.Sleep(50 * time.Microsecond)
	}
	<-done
}
