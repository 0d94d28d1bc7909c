package dflock

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// endsOnLookCtx is a context cancelled (Done closed, Err Canceled) at the
// first look at it after arm: the same as a cancel by another goroutine at
// that very moment, which a test cannot otherwise time.
type endsOnLookCtx struct {
	context.Context // Background: no deadline, no values
	armed           atomic.Bool
	once            sync.Once
	done            chan struct{}
}

func newEndsOnLookCtx() *endsOnLookCtx {
	return &endsOnLookCtx{Context: context.Background(), done: make(chan struct{})}
}

func (c *endsOnLookCtx) Done() <-chan struct{} { return c.done }

func (c *endsOnLookCtx) Err() error {
	if c.armed.Load() {
		c.once.Do(func() { close(c.done) })
	}
	select {
	case <-c.done:
		return context.Canceled
	default:
		return nil
	}
}

// A blocking wait whose caller is cancelled just after its grant was read
// (the reader delivered it, the caller had not yet looked at its context):
// exchange hands the read answer to late and, the wait being a cancelled
// one with time to run (answerDueSoon false), destroys the connection. The
// token is known, but nobody releases the grant: on a server with
// auto-release off the lock stays held by nobody until its lease runs out.
// (Before be07d15, exchange released such a grant aside; docs/leases.md:
// "A grant whose token the client has read is always released".)
func TestWaitCancelledJustAfterItsGrantWasReadReleasesIt(t *testing.T) {
	t.Parallel()
	srv, px, holder, c := autoReleaseOffBehindProxy(t)
	ctx := testCtx(t)

	h, err := holder.Lock(ctx, "k")
	require.NoError(t, err)

	octx := newEndsOnLookCtx()
	errc := make(chan error, 1)
	go func() {
		// Lock's wait-pool path, with the operation context in hand.
		req := wire.Request{Cmd: wire.CmdLock, Key: "k", Lease: 30}
		l, err := c.waitAcquire(octx, octx, "lock", c.servers[0], req, new(bool))
		if err == nil {
			_ = l.release(ctx)
		}
		errc <- err
	}()
	awaitWaiters(t, ctx, srv, "k", 1)
	px.SetLatency(300 * time.Millisecond) // the grant is 300 ms on its way
	require.NoError(t, h.Release(ctx))    // granted to c's wait
	octx.armed.Store(true)                // the caller's ctx ends when it next looks: after the read
	err = <-errc
	require.ErrorIs(t, err, ErrNotAcquired)
	assert.Eventually(t, func() bool { return !lockHeld(srv, "k") }, 2*DefaultReleaseTimeout, 5*time.Millisecond,
		"a grant whose token was read is held by nobody: %+v", srv.Stats())
}

// A queued ticket whose Wait's context ends between wait's own check and
// exchange's (a few instructions apart; a cancel, Ticket.Cancel or Close
// can land there): exchange finds the context ended, sends nothing and
// gives the connection back to the pool as "clean" — but the ticket's
// place is still queued on it (the w was never sent). The place is neither
// withdrawn (withdrawLater) nor closed: the server later grants the lock to
// an idle pooled connection, held by nobody until its lease runs out (auto-
// release on or off), and an Enqueue of the key that reuses the connection
// gets error_already_enqueued. The test takes wait's path from that point:
// exchange with the ended context, then wait's fail.
func TestTicketWaitEndedBeforeItsWIsSentWithdrawsThePlace(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	holder := newClient(t, addrsOf(srv))
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	h, err := holder.Lock(ctx, "k")
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "k")
	require.NoError(t, err)
	require.False(t, tk.Acquired())
	awaitWaiters(t, ctx, srv, "k", 1)

	// Ticket.Wait, as far as wait's check of opCtx (it passed) ...
	tt := tk.t
	tt.mu.Lock()
	conn := tt.conn
	tt.state = ticketWaiting
	tt.mu.Unlock()
	// ... and the context ends right then.
	octx, cancel := context.WithCancel(ctx)
	cancel()
	_, _, err = c.exchange(octx, tt.srv, conn, wire.Request{Cmd: wire.CmdWait, Key: "k", Timeout: 3600}, tt.withdraw)
	require.Error(t, err) // wait returns fail(err); await marks the ticket done
	tt.mu.Lock()
	tt.state, tt.conn = ticketDone, nil
	tt.mu.Unlock()
	c.tickets.remove(tt)

	assert.Eventually(t, func() bool { return lockWaiters(srv, "k") == 0 }, 2*DefaultReleaseTimeout, 5*time.Millisecond,
		"the ended Wait's place is still queued (its connection went back to the pool)")
	require.NoError(t, h.Release(ctx))
	// The lock must be free for the next caller, not granted to an idle
	// pooled connection.
	l, err := holder.TryLock(ctx, "k")
	if assert.NoError(t, err, "the lock went to the abandoned place on a pooled connection: %+v", srv.Stats()) {
		require.NoError(t, l.Release(ctx))
	}
	// And the pooled connection carries no enqueue state for the key.
	tk2, err := c.Enqueue(ctx, "k")
	if assert.NoError(t, err, "an Enqueue reusing the pooled connection") {
		_ = tk2.Cancel()
	}
}
