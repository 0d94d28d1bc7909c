package dflock

import (
	"context"
	"log/slog"
	"strings"
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
// dropped and counted when the handler returns, not run after Close.
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
	d.stop(10 * time.Millisecond) // gives up: the first call still blocks
	close(unblock)
	select {
	case <-d.exited:
	case <-testCtx(t).Done():
		t.Fatal("the dispatcher did not exit once its handler returned")
	}
	assert.False(t, ranLate.Load(), "a call queued before Close ran after Close had returned")
	assert.Equal(t, int64(1), d.dropped.Load())
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
