package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A Release waiting for an answer that does not come stops waiting when
// Close begins, with an error matching ErrClosed, although its own ctx has
// not ended; Close waits for the answer's handling (here: the connection it
// closes). Release selects on ctx and the Client's lifetime rather than
// merging them into one context.
func TestReleaseWaitingForAnAnswerEndsWithClose(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	c, err := New([]string{px.Addr()})
	require.NoError(t, err)
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)

	px.Blackhole(true)
	released := make(chan error, 1)
	go func() { released <- l.Release(ctx) }()
	// Release has untracked the lease: it is past the Client's entry
	// check, so Close finds it in progress.
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("Release did not untrack the lease")
	}
	require.ErrorIs(t, l.Err(), ErrReleased)
	closed := make(chan struct{})
	go func() {
		_ = c.Close()
		close(closed)
	}()
	select {
	case err := <-released:
		assert.ErrorIs(t, err, ErrClosed)
		assert.NoError(t, ctx.Err())
	case <-ctx.Done():
		t.Fatal("Release still waiting after Close began")
	}
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("Close did not return")
	}
}

// A server shutting down (v1.16+) answers a release with error_draining and
// closes the connection, which releases the lock: the lock was held until
// then, so Release reports ErrDraining, not a loss.
func TestReleaseAnsweredDrainingIsNotALoss(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{ShutdownTimeout: time.Minute})
	// A client each: the first release's connection closes, and with it
	// every lease on it (those are lost, rightly).
	c1, c2 := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	l, err := c1.Lock(ctx, "k")
	require.NoError(t, err)
	s, err := c2.Semaphore(ctx, "s", 2)
	require.NoError(t, err)

	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(context.Background()) }()
	// Draining: every request from now on is refused so. (A failing dial
	// is not enough to tell, CI found: Shutdown closes the listener a
	// moment before it refuses requests, and a release in that moment is
	// simply applied.)
	require.Eventually(t, srv.Draining, 5*time.Second, time.Millisecond)
	require.NoError(t, l.Err(), "lost before the release")
	require.NoError(t, s.Err(), "lost before the release")

	for name, release := range map[string]func(context.Context) error{"lock": l.Release, "semaphore": s.Release} {
		err := release(ctx)
		assert.ErrorIs(t, err, ErrDraining, name)
		assert.NotErrorIs(t, err, ErrLockLost, name)
		assert.ErrorContains(t, err, "error_draining", name)
	}
	require.NoError(t, c1.Close()) // the last connections: the drain ends
	require.NoError(t, c2.Close())
	require.NoError(t, <-done)
}

// A Release whose connection breaks before the answer reports the lease
// lost (the server releases a closed connection's leases) and, for a
// server with auto-release off, releases it on another connection.
func TestReleaseOnABrokenConnectionIsSentAsideWithoutAutoRelease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	px := newProxy(t, srv.Addr())
	c := newClient(t, []string{px.Addr()})
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	px.Blackhole(true) // the release goes nowhere…
	released := make(chan error, 1)
	go func() { released <- l.Release(ctx) }()
	require.Eventually(t, func() bool { return l.Err() != nil }, testTimeout, time.Millisecond, "Release did not begin")
	px.ResetAll() // …and its connection is reset
	px.Blackhole(false)
	require.ErrorIs(t, <-released, ErrLockLost)
	require.Eventually(t, func() bool { return !lockHeld(srv, "k") }, DefaultReleaseTimeout, time.Millisecond,
		"the lease is still held on the server: %+v", srv.Stats())
}
