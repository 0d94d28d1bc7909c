package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A consumer that takes a break's gap and resynchronises at once (the
// documented recipe) cannot hear the signals emitted until the re-listen is
// answered: the break is reported a second time, Resumed, once the
// subscription listens again, so that a resync then covers them. (Found by
// review: the first marker alone left such a consumer stale with nothing
// more reported, for as long as the re-dial or a refused re-listen took.)
func TestSignalGapIsReportedAgainOnceListeningResumes(t *testing.T) {
	t.Parallel()
	srv, px, sub, pub, s := gapchOutage(t)
	ctx := testCtx(t)
	// Emitted after the consumer took the gap, before the re-listen: lost.
	require.Eventually(t, func() bool {
		n, err := pub.Emit(ctx, "gapch", "lost")
		return err == nil && n == 0
	}, testTimeout, 5*time.Millisecond)

	px.RefuseNew(false)
	waitListening(t, srv, "gapch", "")
	require.Equal(t, 1, emit(t, pub, "gapch", "after"))
	sctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	_, err := s.Next(sctx)
	require.ErrorIs(t, err, ErrSignalGap, "the loss after the consumed gap is reported before %q", "after")
	var g *GapError
	require.ErrorAs(t, err, &g)
	require.True(t, g.Resumed)
	require.Equal(t, px.Addr(), g.Server)
	require.Equal(t, "after", next(t, s).Payload)
	require.Equal(t, int64(1), sub.Snapshot().SignalGaps, "a break counts once")
}

// A Listen that joins a pattern while its re-listen is in flight missed
// nothing: it gets no resumed marker, while the established subscription
// gets its two.
func TestSignalResumedGapSparesAListenMadeDuringTheOutage(t *testing.T) {
	t.Parallel()
	srv, px, sub, pub, old := gapchOutage(t)
	ctx := testCtx(t)
	// The re-listen's answer takes 300 ms through the proxy: a Listen made
	// once the server has the listen joins it and waits for that answer.
	px.SetLatency(150 * time.Millisecond)
	px.RefuseNew(false)
	waitListening(t, srv, "gapch", "")
	s, err := sub.Listen(ctx, "gapch")
	require.NoError(t, err)
	px.SetLatency(0)
	require.Equal(t, 1, emit(t, pub, "gapch", "after")) // one server-side listen for both
	require.Equal(t, "after", next(t, s).Payload, "the new subscription missed nothing")
	_, err = old.Next(ctx)
	var g *GapError
	require.ErrorAs(t, err, &g)
	require.True(t, g.Resumed)
	require.Equal(t, "after", next(t, old).Payload)
}

// gapchOutage has sub's subscription s of "gapch" (through px, pub emitting
// directly to srv) receive a signal, then cuts its listener connection and
// keeps it from reconnecting (px refuses new connections until the caller
// lets it), and takes the break's gap marker, the first.
func gapchOutage(t *testing.T) (srv *testutil.Server, px *testutil.Proxy, sub, pub *Client, s *Subscription) {
	t.Helper()
	srv = newServer(t, testutil.Config{})
	px = newProxy(t, srv.Addr())
	sub = newClient(t, []string{px.Addr()})
	pub = newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	s, err := sub.Listen(ctx, "gapch")
	require.NoError(t, err)
	require.Equal(t, 1, emit(t, pub, "gapch", "before"))
	require.Equal(t, "before", next(t, s).Payload)
	px.RefuseNew(true)
	px.ResetAll()
	_, err = s.Next(ctx)
	var g *GapError
	require.ErrorAs(t, err, &g)
	require.False(t, g.Resumed, "the first marker comes at the break")
	return srv, px, sub, pub, s
}
