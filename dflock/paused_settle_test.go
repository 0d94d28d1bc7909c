package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// outlastTheJob lets the server's pause outlast the background job that
// reads a given-up call's answer (DefaultReleaseTimeout): the case under
// test.
func outlastTheJob() { time.Sleep(DefaultReleaseTimeout + 200*time.Millisecond) }

// warmWaitPool leaves an idle wait-pool connection to c's server, so that
// an Enqueue made while the server is paused dials nothing (a dial would
// stall in its handshake, and the Enqueue would send nothing). The ticket
// it takes for that, on the key "warm", is granted at once: it sends no w.
func warmWaitPool(t *testing.T, ctx context.Context, c *Client) {
	t.Helper()
	warm, err := c.Enqueue(ctx, "warm")
	require.NoError(t, err)
	l, err := warm.Wait(ctx)
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
	awaitNoAcquiredConn(t, ctx, c)
}

// awaitNoAcquiredConn waits until the Client's wait-pool connection is no
// longer held by the call or its background job (closed, lingering or back
// in the pool).
func awaitNoAcquiredConn(t *testing.T, ctx context.Context, c *Client) {
	t.Helper()
	require.True(t, waitFor(ctx, 10*time.Second, func() bool { return c.servers[0].pool.Stats().AcquiredConns == 0 }),
		"the background job never let the connection go")
}

// An Enqueue whose context ends while the server is paused for longer than
// the background job that reads its answer waits (DefaultReleaseTimeout):
// the connection lingers, so the grant the server makes when it resumes is
// read and released. It used to be closed, and a server with auto-release
// off held the grant for nobody until its lease ran out (a review
// reproduced it against a SIGSTOPped dflockd v1.10.0, every time).
func TestEnqueueGivenUpDuringALongPauseLeavesNothingHeld(t *testing.T) {
	t.Parallel()
	for _, sem := range []bool{false, true} {
		name := map[bool]string{false: "lock", true: "semaphore"}[sem]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{DisableAutoRelease: true})
			c := newClient(t, addrsOf(srv))
			ctx := testCtx(t)
			warmWaitPool(t, ctx, c)

			resume := srv.Stall(0)
			ectx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			var err error
			if sem {
				_, err = c.EnqueueSemaphore(ectx, "k", 2, LeaseTTL(time.Minute))
			} else {
				_, err = c.Enqueue(ectx, "k", LeaseTTL(time.Minute))
			}
			cancel()
			require.ErrorIs(t, err, context.DeadlineExceeded)
			outlastTheJob()
			resume()
			// The server reads the request when it resumes.
			if sem {
				awaitRequests(t, ctx, srv, "se", 1)
			} else {
				awaitRequests(t, ctx, srv, "e", 2) // with the warm one
			}

			require.True(t, waitFor(ctx, 10*time.Second, func() bool {
				if sem {
					h, w := semCounts(srv, "k")
					return h == 0 && w == 0
				}
				return !lockHeld(srv, "k") && lockWaiters(srv, "k") == 0
			}), "the grant made on resuming is held by nobody: %+v", srv.Stats())
			awaitNoAcquiredConn(t, ctx, c)
		})
	}
}

// The same for a blocking wait whose deadline passes while the server is
// paused, and whose server-side wait is granted during the pause (the
// holder's lease ran out): the grant, written when the server resumes, is
// read by the lingering connection and released.
func TestWaitTimedOutDuringALongPauseLeavesNothingHeld(t *testing.T) {
	t.Parallel()
	for _, ticket := range []bool{false, true} {
		name := map[bool]string{false: "semaphore", true: "ticket"}[ticket]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{DisableAutoRelease: true, SweepInterval: 50 * time.Millisecond})
			holder, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
			ctx := testCtx(t)
			_, err := holder.Semaphore(ctx, "d", 1, LeaseTTL(time.Second))
			require.NoError(t, err)
			done := make(chan error, 1)
			if ticket {
				tk, err := c.EnqueueSemaphore(ctx, "d", 1, LeaseTTL(time.Minute))
				require.NoError(t, err)
				go func() { _, err := tk.Wait(ctx, AcquireTimeout(1500*time.Millisecond)); done <- err }()
				awaitRequests(t, ctx, srv, "sw", 1)
			} else {
				go func() {
					_, err := c.Semaphore(ctx, "d", 1, LeaseTTL(time.Minute), AcquireTimeout(1500*time.Millisecond))
					done <- err
				}()
				require.True(t, waitFor(ctx, 10*time.Second, func() bool { return semWaiters(srv, "d") == 1 }))
			}
			resume := srv.Stall(0)
			require.ErrorIs(t, <-done, ErrTimeout)
			outlastTheJob()
			resume()

			require.True(t, waitFor(ctx, 10*time.Second, func() bool { h, w := semCounts(srv, "d"); return h == 0 && w == 0 }),
				"the grant made during the pause is held by nobody: %+v", srv.Stats())
			awaitNoAcquiredConn(t, ctx, c)
		})
	}
}

// An Enqueue given up during a long pause, on a key held by someone else,
// is answered `queued` when the server resumes: the place is withdrawn on
// the same connection (w, timeout 0), as for an answer that comes in time.
// A lingering connection cannot write that: it closed, and a server before
// v1.15 with auto-release off kept the place and granted it to nobody at
// the holder's release (a review reproduced it against dflockd v1.10.0).
func TestEnqueueQueuedAfterALongPauseGivesThePlaceBack(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{Version: testutil.V1_10, DisableAutoRelease: true})
	holder, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	l, err := holder.Lock(ctx, "k", LeaseTTL(time.Minute))
	require.NoError(t, err)
	warmWaitPool(t, ctx, c)

	resume := srv.Stall(0)
	ectx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = c.Enqueue(ectx, "k", LeaseTTL(time.Minute))
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)
	outlastTheJob()
	resume()
	awaitRequests(t, ctx, srv, "w", 1) // the withdrawal (the warm ticket was granted at once)
	require.True(t, waitFor(ctx, 10*time.Second, func() bool { return lockWaiters(srv, "k") == 0 }),
		"the place was never withdrawn: %+v", srv.Stats())
	require.NoError(t, l.Release(ctx))
	require.False(t, lockHeld(srv, "k"), "k granted to the abandoned Enqueue's place, held by nobody: %+v", srv.Stats())
	awaitNoAcquiredConn(t, ctx, c)
}

// Close does not wait for the overdue answer an Enqueue's connection is
// kept for (up to a minute): it closes the connection at once.
func TestCloseEndsTheWaitForAnOverdueEnqueueAnswer(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	c, err := New(addrsOf(srv))
	require.NoError(t, err)
	ctx := testCtx(t)
	warmWaitPool(t, ctx, c)
	resume := srv.Stall(0)
	defer resume()
	ectx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = c.Enqueue(ectx, "k")
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)
	outlastTheJob()
	require.Equal(t, 1, c.servers[0].pool.Stats().AcquiredConns, "the connection is kept for the answer")
	start := time.Now()
	require.NoError(t, c.Close())
	assert.Less(t, time.Since(start), DefaultReleaseTimeout, "Close waited for its deadline")
}
