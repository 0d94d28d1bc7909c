package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A break whose gap merges into a marker still waiting in the overflow
// queue, after that marker's own re-listen came and went (it was not taken
// then, so resumed dropped its place from gapSeq), must still get the
// second marker: a consumer that takes the merged marker during the new
// outage and resynchronises misses what is emitted until the re-listen.
// (Found in review: gap assumed gapSeq still held the place.)
func TestSignalGapMergedAfterResumeStillGetsResumedMarker(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	sub := newClient(t, []string{px.Addr()})
	pub := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	const ch = "rvgap"
	s, err := sub.Listen(ctx, ch, Buffer(1))
	require.NoError(t, err)
	require.Equal(t, 1, emit(t, pub, ch, "s1"))
	require.Eventually(t, func() bool { return len(s.C()) == 1 }, testTimeout, time.Millisecond)
	gaps := func() int64 { return sub.Snapshot().SignalGaps }

	// Break 1: its marker takes the channel's reserved slot.
	px.ResetAll()
	require.Eventually(t, func() bool { return gaps() == 1 }, testTimeout, time.Millisecond)
	waitClientListening(t, sub, sub.servers[0], ch)
	// Break 2: the channel is full, its marker waits in the overflow queue;
	// the re-listen comes before the consumer took it (no second marker due).
	px.ResetAll()
	require.Eventually(t, func() bool { return gaps() == 2 }, testTimeout, time.Millisecond)
	waitClientListening(t, sub, sub.servers[0], ch)
	// Break 3, kept from reconnecting: merges into break 2's queued marker.
	px.RefuseNew(true)
	px.ResetAll()
	waitListenerDown(t, sub, 0)

	// The consumer catches up during the outage: s1, then two markers; it
	// resynchronises at the last one.
	require.Equal(t, "s1", next(t, s).Payload)
	for range 2 {
		_, err := s.Next(ctx)
		require.ErrorIs(t, err, ErrSignalGap)
	}
	assertEmpty(t, s)
	// Emitted after the resync, before the re-listen: lost.
	require.Eventually(t, func() bool {
		n, err := pub.Emit(ctx, ch, "lost")
		return err == nil && n == 0
	}, testTimeout, 5*time.Millisecond)

	px.RefuseNew(false)
	waitClientListening(t, sub, sub.servers[0], ch)
	require.Equal(t, 1, emit(t, pub, ch, "after"))
	sctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	sig, err := s.Next(sctx)
	require.ErrorIs(t, err, ErrSignalGap, "the loss of %q after the consumed marker went unreported; got %+v", "lost", sig)
}

// waitListenerDown waits until the plain listener of c's i'th server has
// noticed its connection's break (it has no current connection).
func waitListenerDown(t *testing.T, c *Client, i int) {
	t.Helper()
	c.signals.mu.Lock()
	l := c.signals.listeners[listenerKey{srv: c.servers[i]}]
	c.signals.mu.Unlock()
	require.NotNil(t, l, "no listener for server %d", i)
	require.Eventually(t, func() bool {
		l.mu.RLock()
		defer l.mu.RUnlock()
		return l.cur == nil
	}, testTimeout, time.Millisecond, "the listener noticed the break")
}

// A break that comes while the previous break's Resumed marker still waits
// in the overflow queue gets a marker of its own: merged into the Resumed
// one (as before review found it), the consumer would be told "listening
// again" for a server it does not listen on, and no marker would follow the
// loss that the new outage causes.
func TestSignalGapBreakAfterResumedMarkerIsReported(t *testing.T) {
	t.Parallel()
	srvA, srvB := newServer(t, testutil.Config{}), newServer(t, testutil.Config{})
	pxA := newProxy(t, srvA.Addr())
	sub := newClient(t, []string{pxA.Addr(), srvB.Addr()})
	pubA, pubB := newClient(t, addrsOf(srvA)), newClient(t, addrsOf(srvB))
	ctx := testCtx(t)
	const pattern = "w.*"
	s, err := sub.Listen(ctx, pattern, Buffer(1))
	require.NoError(t, err)
	gaps := func() int64 { return sub.Snapshot().SignalGaps }
	nextGap := func() *GapError {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, testTimeout)
		defer cancel()
		sig, err := s.Next(sctx)
		var g *GapError
		require.ErrorAs(t, err, &g, "got %+v", sig)
		return g
	}

	// Break 1 of A, kept out; the consumer takes its marker at once.
	pxA.RefuseNew(true)
	pxA.ResetAll()
	g := nextGap()
	require.Equal(t, pxA.Addr(), g.Server)
	require.False(t, g.Resumed)
	// Meanwhile B fills the channel: a signal, then a break's marker in the
	// reserved slot.
	require.Equal(t, 1, emit(t, pubB, "w.b", "sb"))
	require.Eventually(t, func() bool { return len(s.C()) == 1 }, testTimeout, time.Millisecond)
	srvB.DropConnections()
	require.Eventually(t, func() bool { return gaps() == 2 }, testTimeout, time.Millisecond)
	waitClientListening(t, sub, sub.servers[1], pattern) // before the consumer takes B's marker: no Resumed one for B
	// A listens again: its Resumed marker waits in the overflow queue.
	pxA.RefuseNew(false)
	waitClientListening(t, sub, sub.servers[0], pattern)
	require.Eventually(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.ov != nil && s.ov.q.n == 1
	}, testTimeout, time.Millisecond)
	// Break 2 of A, kept out.
	pxA.RefuseNew(true)
	pxA.ResetAll()
	waitListenerDown(t, sub, 0)

	// The consumer catches up during A's second outage.
	require.Equal(t, "sb", next(t, s).Payload)
	require.Equal(t, srvB.Addr(), nextGap().Server)
	var last *GapError
	// Until nothing is left in ch or behind it. The drainer moves the
	// overflow queue into ch on its own goroutine and notes each send
	// after it (sending): wait for that before looking.
	drained := func() bool {
		require.Eventually(t, func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return !s.sending
		}, testTimeout, time.Millisecond)
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.ch) == 0 && !s.overflowingLocked()
	}
	for last == nil || !drained() {
		if g := nextGap(); g.Server == pxA.Addr() {
			last = g
		}
	}
	assert.False(t, last.Resumed, "the last word on A during its outage is %q", last)
	// Lost during the outage, after the consumer caught up.
	require.Eventually(t, func() bool {
		n, err := pubA.Emit(ctx, "w.a", "lost")
		return err == nil && n == 0
	}, testTimeout, 5*time.Millisecond)
	pxA.RefuseNew(false)
	waitClientListening(t, sub, sub.servers[0], pattern)
	require.Equal(t, 1, emit(t, pubA, "w.a", "after"))
	sctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	sig, err := s.Next(sctx)
	var g2 *GapError
	if assert.ErrorAs(t, err, &g2, "the loss of %q went unreported; got %+v", "lost", sig) {
		assert.Equal(t, pxA.Addr(), g2.Server)
	}
}
