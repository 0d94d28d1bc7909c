package dflock

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Hooks doc: calls run "in the order the events happened";
// the one exception stated is that loss reports "may come earlier than
// events that happened before them". A loss report must therefore never
// run after a callback queued after it.
func TestLossReportNeverRunsAfterALaterCallback(t *testing.T) {
	const rounds = 40
	late := 0
	for range rounds {
		d := newDispatcher()
		unblock, started := make(chan struct{}), make(chan struct{})
		d.do(func() { close(started); <-unblock })
		<-started
		var mu sync.Mutex
		var order []string
		d.doLoss(func() { mu.Lock(); order = append(order, "loss"); mu.Unlock() }) // first event
		d.do(func() { mu.Lock(); order = append(order, "later"); mu.Unlock() })    // a later one
		close(unblock)
		d.stop(time.Second)
		mu.Lock()
		if len(order) == 2 && order[0] == "later" {
			late++
		}
		mu.Unlock()
	}
	require.Zero(t, late, "rounds of %d in which the loss report ran after a callback queued after it", rounds)
}

// Hooks doc: loss reports "have a queue of their own, 131,072 long";
// lossQueueLen bounds the reports waiting, the batch running (behind a
// slow hook) included.
func TestLossQueueBoundsTheReportsWaiting(t *testing.T) {
	t.Parallel()
	d := newDispatcher()
	defer d.stop(time.Second)
	gate, gated := make(chan struct{}), make(chan struct{})
	unblock, started := make(chan struct{}), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(unblock) }) })
	// The dispatcher is busy while a full loss queue builds up, whose
	// first report's hook then gets stuck.
	d.do(func() { close(gated); <-gate })
	<-gated
	var ran atomic.Int64
	d.doLoss(func() { close(started); <-unblock })
	for range lossQueueLen - 1 {
		d.doLoss(func() { ran.Add(1) })
	}
	require.Zero(t, d.dropped.Load(), "the queue holds lossQueueLen")
	close(gate)
	<-started // runLosses took the whole queue and is stuck in its first report
	accepted := 0
	for range lossQueueLen {
		before := d.dropped.Load()
		d.doLoss(func() { ran.Add(1) })
		if d.dropped.Load() == before {
			accepted++
		}
	}
	waiting := (lossQueueLen - 1) + accepted // behind the stuck one, and queued anew
	once.Do(func() { close(unblock) })
	require.LessOrEqual(t, waiting, lossQueueLen, "loss reports waiting behind a stuck hook: %d, bound %d", waiting, lossQueueLen)
}
