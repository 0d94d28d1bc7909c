package dflock

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// lossQueueLen bounds the loss reports waiting: those of a batch that
// already ran do not count, or a report would be dropped with nothing
// waiting at all.
func TestLossQueueCountsOnlyWhatWaits(t *testing.T) {
	d := newDispatcher()
	defer d.stop(time.Second)
	gate, gated := make(chan struct{}), make(chan struct{})
	unblock, lastStarted := make(chan struct{}), make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(unblock) }) }
	t.Cleanup(free)
	d.do(func() { close(gated); <-gate })
	<-gated
	for range lossQueueLen - 1 {
		d.doLoss(func() {})
	}
	d.doLoss(func() { close(lastStarted); <-unblock }) // the batch's last report gets stuck
	close(gate)
	<-lastStarted // every other report of the batch has run; none waits
	d.doLoss(func() {})
	dropped := d.dropped.Load()
	free()
	require.Zero(t, dropped, "a loss report was dropped with no loss report waiting (the bound counts the %d already run)", lossQueueLen-1)
}
