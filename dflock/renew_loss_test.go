package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Renew waits for the server's answer. On a network gone silent the
// client declares the lease lost by its own clock (rule 3 of leases.md):
// Done closes and Err matches ErrLockLost. A Renew in progress then has
// its answer — the lease is lost — but it keeps waiting for a reply that
// cannot matter any more, until the pool breaks the silent connection
// (two keepalives: 20 s by default) or ctx ends; with
// context.Background(), as Release is documented to be called, that is
// the only bound.
func TestRenewInProgressReturnsWhenTheLeaseIsLost(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	c := newClient(t, []string{px.Addr()}, WithKeepAlive(5*time.Second))
	ctx := testCtx(t)
	for _, name := range []string{"lock", "semaphore"} {
		t.Run(name, func(t *testing.T) {
			var h handle
			var err error
			if name == "lock" {
				h, err = c.TryLock(ctx, "k", LeaseTTL(time.Second))
			} else {
				h, err = c.TrySemaphore(ctx, "s", 2, LeaseTTL(time.Second))
			}
			require.NoError(t, err)
			px.Blackhole(true)
			defer px.Blackhole(false)
			res := make(chan error, 1)
			go func() { res <- h.Renew(context.Background()) }()
			select {
			case <-h.Done():
			case <-ctx.Done():
				t.Fatal("no loss reported")
			}
			lost := time.Now()
			require.ErrorIs(t, h.Err(), ErrLockLost)
			select {
			case err := <-res:
				t.Logf("Renew returned %v after the loss: %v", time.Since(lost).Round(time.Millisecond), err)
				assert.ErrorIs(t, err, ErrLockLost)
			case <-time.After(time.Second):
				err := <-res
				t.Errorf("Renew still waiting 1 s after the lease was declared lost; it returned %v after the loss: %v",
					time.Since(lost).Round(time.Millisecond), err)
			}
		})
	}
}

// A lease the client declares lost by its clock is released best effort
// on its connection. That release can be the first request a paused
// server reads after its read deadline passed (here: the client's
// scheduler ran late too, so no renewal was in flight): the server answers
// it with the bare `error`, does not apply it, and closes the connection —
// and with auto-release off it keeps the lease, held by nobody, until its
// TTL runs out. Every other release the client sends (Release, Close, a
// give-back on the same connection, releaseAbandoned) is sent again aside
// when answered the bare error (mayNotBeApplied, commit acc1efa); the
// scheduler's release of a lease lost by the clock is not.
func TestClockLossReleaseAnsweredBareErrorIsSentAgain(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true, ReadTimeout: 500 * time.Millisecond})
	clk := testutil.NewManualClock(time.Now().Round(0))
	// The client's scheduler runs on clk: moving it stands for a client that
	// was paused. Keepalive and the declared read timeout are long so that
	// nothing but the scheduler writes on the lane.
	c := newClient(t, addrsOf(srv), withClock(clk), WithLaneConns(1),
		WithServerReadTimeout(time.Hour), WithKeepAlive(20*time.Minute))
	ctx := testCtx(t)
	l, err := c.TryLock(ctx, "k", LeaseTTL(30*time.Second))
	require.NoError(t, err)

	resume := srv.Stall(0) // the server process pauses; its read deadline runs on
	clk.Advance(29 * time.Second)
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("no loss by the clock")
	}
	t.Logf("lost: %v", l.Err())
	time.Sleep(700 * time.Millisecond) // the release is written; the lane's read deadline passes
	resume()                           // the release is answered `error`, unapplied, and the lane closed
	require.Eventually(t, func() bool { return c.renewStatsReleaseFailed() >= 1 }, 5*time.Second, time.Millisecond)
	assert.Eventually(t, func() bool { return !lockHeld(srv, "k") }, 2*DefaultReleaseTimeout, 5*time.Millisecond,
		"the lease the client gave up is held by nobody on the server: %+v", srv.Stats().Locks)
}

func (c *Client) renewStatsReleaseFailed() int64 { return c.sched.Stats().ReleaseFailed }
