package dflock

import (
	"sync/atomic"
	"testing"
	"time"
)

// Under load too (the dispatcher busy, tokens arriving while it selects),
// a loss report never runs after a call queued after it.
func TestLossReportNeverRunsAfterALaterCallUnderLoad(t *testing.T) {
	t.Parallel()
	d := newDispatcher()
	defer d.stop(5 * time.Second)
	const pairs = 2_000_000
	deadline := time.Now().Add(3 * time.Second) // a race: the longer, the likelier to show
	var late, checked atomic.Int64
	for i := 0; i < pairs && time.Now().Before(deadline); i++ {
		var lossRan atomic.Bool
		d.doLoss(func() { lossRan.Store(true) })
		d.do(func() {
			checked.Add(1)
			if !lossRan.Load() {
				late.Add(1)
			}
		})
		if i%64 == 0 {
			// Let the dispatcher catch up now and then so that q rarely
			// fills (a dropped call proves nothing).
			for len(d.q) > 0 {
				time.Sleep(time.Microsecond)
			}
		}
		if late.Load() > 0 {
			break
		}
	}
	time.Sleep(50 * time.Millisecond)
	t.Logf("pairs checked %d, dropped %d", checked.Load(), d.dropped.Load())
	if n := late.Load(); n > 0 {
		t.Fatalf("%d loss report(s) ran after an ordinary callback queued after them", n)
	}
}
