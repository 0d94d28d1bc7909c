package dflock

import (
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dflock-sdk/go/testutil"
	"github.com/stretchr/testify/require"
)

// A consumer that keeps up with all but a few signals (its buffer is full
// about every other push) starts a new "slow consumer" episode at almost
// every drop. Reported once each, they would be one Warn record and one
// OnSignalDropped call per dropped signal, crowding the Client's callback
// queue, which OnLeaseLost shares: reports are at most one a second per
// subscription.
func TestSignalSlowConsumerWarningsDoNotFloodCallbacks(t *testing.T) {
	t.Parallel()
	const minDrops = 200 // far above the one report a second allowed
	srv := newServer(t, testutil.Config{PushBuffer: 1 << 16})
	var warns, hooks atomic.Int64
	var logs syncBuffer
	c := newClient(t, addrsOf(srv),
		WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))),
		WithHooks(Hooks{OnSignalDropped: func(SignalDropInfo) { hooks.Add(1) }}))
	pub := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	s, err := c.Listen(ctx, "flap", Buffer(1))
	require.NoError(t, err)
	defer s.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-s.C():
				time.Sleep(200 * time.Microsecond)
			}
		}
	}()
	// Past a few slowWarnEvery, so that the spacing is checked beyond the
	// first report, and until far more signals were dropped than reports
	// are allowed (a count of emits would take too long on a loaded
	// machine, where every emit is slower).
	start := time.Now()
	total := 0
	for ; s.Dropped() < minDrops || time.Since(start) < 2*slowWarnEvery+slowWarnEvery/4; total++ {
		_, err := pub.Emit(ctx, "flap", strconv.Itoa(total))
		require.NoError(t, err, "emit %d, %v after the first, %d dropped", total, time.Since(start), s.Dropped())
	}
	elapsed := time.Since(start)
	time.Sleep(200 * time.Millisecond)
	close(stop)
	<-done
	warns.Store(int64(logs.count("slow signal consumer")))
	t.Logf("dropped %d of %d in %v; warnings %d, OnSignalDropped calls %d", s.Dropped(), total, elapsed, warns.Load(), hooks.Load())
	require.GreaterOrEqual(t, s.Dropped(), uint64(minDrops))
	require.NotZero(t, warns.Load(), "the first episode is reported")
	most := int64(elapsed/slowWarnEvery) + 1 // at most one a second, the first at once
	require.LessOrEqual(t, warns.Load(), most, "one slow subscription logged a warning for most drops")
	require.LessOrEqual(t, hooks.Load(), most, "one slow subscription had OnSignalDropped called for most drops")
}
