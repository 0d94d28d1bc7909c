package dflock

import (
	"context"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The Client's handler answers Enabled without asking the user's handler
// (the dispatcher asks it, before Handle): a level the user's handler
// refuses is skipped at the source once the dispatcher has found so, and a
// change of the user's level takes effect within levelRecheck.
func TestAsyncHandlerLearnsTheLevelOffTheCallersGoroutine(t *testing.T) {
	t.Parallel()
	d := newDispatcher()
	defer d.stop(time.Second)
	var out syncBuffer
	lv := new(slog.LevelVar)
	lv.Set(slog.LevelWarn)
	h := newAsyncHandler(d, slog.NewTextHandler(&out, &slog.HandlerOptions{Level: lv}))
	log := slog.New(h)
	ctx := context.Background()
	delivered := func(msg string) func() bool {
		return func() bool { return strings.Contains(out.String(), "msg="+msg) }
	}

	assert.True(t, h.Enabled(ctx, slog.LevelDebug), "not known yet: queued, for the dispatcher to ask")
	log.Debug("d1")
	log.Warn("w1") // runs after d1's check
	require.Eventually(t, delivered("w1"), 5*time.Second, time.Millisecond)
	assert.NotContains(t, out.String(), "d1")
	assert.False(t, h.Enabled(ctx, slog.LevelDebug), "refused: skipped at the source")
	assert.True(t, h.Enabled(ctx, slog.LevelWarn))
	assert.True(t, h.Enabled(ctx, slog.Level(2)), "a non-standard level is always queued")

	lv.Set(slog.LevelDebug)
	require.Eventually(t, func() bool {
		log.Debug("d2")
		return delivered("d2")()
	}, 5*levelRecheck, 10*time.Millisecond)
	assert.True(t, h.Enabled(ctx, slog.LevelDebug))

	// Derived handlers learn their own levels.
	assert.True(t, log.With("k", "v").Handler().Enabled(ctx, slog.LevelDebug))
}

// A hook or log handler that panics runs on a goroutine the program does
// not own: the panic is recovered (and printed), and the calls queued after
// it still run.
func TestDispatcherSurvivesAPanickingCallback(t *testing.T) {
	t.Parallel()
	d := newDispatcher()
	defer d.stop(time.Second)
	ran := make(chan struct{})
	d.do(func() { panic("a bug in a hook (expected in this test's output)") })
	d.do(func() { close(ran) })
	select {
	case <-ran:
	case <-testCtx(t).Done():
		t.Fatal("the call after a panicking one never ran")
	}
}

// Once stop has given up on a blocked handler, what is still queued is
// dropped, never run after Close, and counted by the time stop returns
// (Snapshot after Close gives the final figures).
func TestDispatcherDropsWhatIsQueuedAfterStopGaveUp(t *testing.T) {
	t.Parallel()
	d := newDispatcher()
	unblock, started := make(chan struct{}), make(chan struct{})
	var ranLate atomic.Bool
	d.do(func() {
		close(started)
		<-unblock
	})
	<-started
	d.do(func() { ranLate.Store(true) })
	d.doLoss(func() { ranLate.Store(true) })
	d.stop(10 * time.Millisecond) // gives up: the first call still blocks
	assert.Equal(t, int64(2), d.dropped.Load(), "counted when stop gave up")
	close(unblock)
	select {
	case <-d.exited:
	case <-testCtx(t).Done():
		t.Fatal("the dispatcher did not exit once its handler returned")
	}
	assert.False(t, ranLate.Load(), "a call queued before Close ran after Close had returned")
	assert.Equal(t, int64(2), d.dropped.Load(), "each counted once")
}

// A callback that calls runtime.Goexit (t.FailNow, require.* in a test's
// hook) ends the dispatcher's goroutine, which no recover prevents: another
// takes over, and every call queued after it still runs, losses in order.
// (Found by review: everything after it was queued and never run.)
func TestDispatcherSurvivesACallbackThatCallsGoexit(t *testing.T) {
	t.Parallel()
	d := newDispatcher()
	unblock, started := make(chan struct{}), make(chan struct{})
	d.do(func() {
		close(started)
		<-unblock
	})
	<-started
	var mu sync.Mutex
	var order []int
	note := func(i int) func() {
		return func() {
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
		}
	}
	d.do(runtime.Goexit)
	d.do(note(0))
	d.doLoss(note(1))
	d.doLoss(func() { note(2)(); runtime.Goexit() }) // mid-batch: the batch's rest runs
	d.doLoss(note(3))
	d.doLoss(note(4))
	close(unblock)
	d.do(note(5))
	d.stop(testTimeout)
	select {
	case <-d.exited:
	default:
		t.Fatal("stop returned before the dispatcher ran what was queued")
	}
	mu.Lock()
	defer mu.Unlock()
	assert.ElementsMatch(t, []int{0, 1, 2, 3, 4, 5}, order, "every call after a Goexit ran")
	losses := slices.DeleteFunc(slices.Clone(order), func(i int) bool { return i == 0 || i == 5 })
	assert.Equal(t, []int{1, 2, 3, 4}, losses, "losses in their order")
	assert.Zero(t, d.dropped.Load())
	assert.Zero(t, d.lossPending)
}

// Loss reports (doLoss) have a queue of their own: queued while a callback
// blocks, far beyond dispatchQueueLen, without ever waiting, and all run
// once it returns; past lossQueueLen they are dropped and counted.
func TestDispatcherLossReportsNeverWaitAndAllRun(t *testing.T) {
	t.Parallel()
	d := newDispatcher()
	defer d.stop(time.Second)
	unblock, started := make(chan struct{}), make(chan struct{})
	d.do(func() {
		close(started)
		<-unblock
	})
	<-started
	for range dispatchQueueLen {
		d.do(func() {})
	}
	d.do(func() {})
	require.Equal(t, int64(1), d.dropped.Load(), "do never waits")

	var ran atomic.Int64
	for range lossQueueLen { // returns at once though the dispatcher is stuck
		d.doLoss(func() { ran.Add(1) })
	}
	require.Equal(t, int64(1), d.dropped.Load())
	d.doLoss(func() { ran.Add(1) })
	require.Equal(t, int64(2), d.dropped.Load(), "past lossQueueLen, dropped and counted")

	close(unblock)
	require.Eventually(t, func() bool { return ran.Load() == lossQueueLen }, testTimeout, time.Millisecond)
	d.doLoss(func() { ran.Add(1) }) // room again
	require.Eventually(t, func() bool { return ran.Load() == lossQueueLen+1 }, testTimeout, time.Millisecond)
	assert.Equal(t, int64(2), d.dropped.Load())
}
