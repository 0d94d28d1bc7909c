package dflock

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

func TestEnqueueOnFreeKeyIsAcquiredAtOnce(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	tk, err := c.Enqueue(ctx, "2p-free", LeaseTTL(5*time.Second))
	require.NoError(t, err)
	assert.True(t, tk.Acquired())
	assert.Equal(t, "2p-free", tk.Key())
	assert.Equal(t, srv.Addr(), tk.Server())
	assert.True(t, lockHeld(srv, "2p-free"), "the lease is held from enqueue time")
	l, err := tk.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, 5*time.Second, l.TTL())
	_, err = tk.Wait(ctx)
	require.ErrorIs(t, err, ErrTicketDone)
	require.NoError(t, l.Release(ctx))
	assert.False(t, lockHeld(srv, "2p-free"))
	require.Eventually(t, func() bool { return c.servers[0].pool.Stats().AcquiredConns == 0 }, 5*time.Second, time.Millisecond)
}

func TestEnqueueQueuesAndWaitGetsTheLock(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	holder, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	h, err := holder.Lock(ctx, "2p")
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "2p")
	require.NoError(t, err)
	assert.False(t, tk.Acquired())
	assert.Equal(t, 1, lockWaiters(srv, "2p"), "the ticket holds a place in the queue")

	// A later Lock queues behind the ticket.
	later := make(chan *Lock, 1)
	go func() {
		l, err := holder.Lock(ctx, "2p")
		assert.NoError(t, err)
		later <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "2p") == 2 }, 5*time.Second, time.Millisecond)
	require.NoError(t, h.Release(ctx))

	l, err := tk.Wait(ctx, AcquireTimeout(5*time.Second))
	require.NoError(t, err)
	require.NoError(t, l.Err())
	select {
	case <-later:
		t.Fatal("the later Lock overtook the ticket")
	default:
	}
	require.NoError(t, l.Release(ctx))
	l2 := <-later
	require.NotNil(t, l2)
	require.NoError(t, l2.Release(ctx))
}

func TestTicketWaitTimesOutAndGivesUpItsPlace(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Clock: clk})
	holder, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	h, err := holder.Lock(ctx, "2p-to")
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "2p-to")
	require.NoError(t, err)
	start := time.Now()
	_, err = tk.Wait(ctx, AcquireTimeout(300*time.Millisecond))
	require.ErrorIs(t, err, ErrTimeout, "the server's clock stands still: only the local deadline can end the wait")
	assert.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)
	// The server's wait (1 s, by its clock) answers when that clock moves
	// on, consuming the place; until then the connection waits for that
	// answer (lingering, once the background job's time is up: a server
	// that has not answered when it should is taken for a paused one).
	awaitRequests(t, ctx, srv, "w", 1) // long since: its timer is armed
	clk.Advance(2 * time.Second)
	require.Eventually(t, func() bool { return lockWaiters(srv, "2p-to") == 0 }, 5*time.Second, time.Millisecond)
	_, err = tk.Wait(ctx)
	require.ErrorIs(t, err, ErrTicketDone)
	require.NoError(t, h.Release(ctx))

	// A try-wait (AcquireTimeout(0)) on a queued ticket answers at once.
	h, err = holder.Lock(ctx, "2p-to")
	require.NoError(t, err)
	tk, err = c.Enqueue(ctx, "2p-to")
	require.NoError(t, err)
	_, err = tk.Wait(ctx, AcquireTimeout(0))
	require.ErrorIs(t, err, ErrNotAcquired)
	require.NoError(t, h.Release(ctx))
	require.Eventually(t, func() bool { return c.servers[0].pool.Stats().AcquiredConns == 0 }, 5*time.Second, time.Millisecond)
}

func TestTicketCancel(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	holder, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	// Queued: Cancel leaves the queue.
	h, err := holder.Lock(ctx, "2p-c")
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "2p-c")
	require.NoError(t, err)
	require.NoError(t, tk.Cancel())
	require.NoError(t, tk.Cancel())
	require.Eventually(t, func() bool { return lockWaiters(srv, "2p-c") == 0 }, 5*time.Second, time.Millisecond)
	_, err = tk.Wait(ctx)
	require.ErrorIs(t, err, ErrTicketDone)

	// Waiting: Cancel makes Wait return.
	tk, err = c.Enqueue(ctx, "2p-c")
	require.NoError(t, err)
	res := make(chan error, 1)
	go func() {
		_, err := tk.Wait(ctx)
		res <- err
	}()
	require.Eventually(t, func() bool {
		tk.t.mu.Lock()
		defer tk.t.mu.Unlock()
		return tk.t.state == ticketWaiting
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, tk.Cancel())
	select {
	case err := <-res:
		require.ErrorIs(t, err, ErrNotAcquired)
		require.ErrorIs(t, err, ErrTicketDone)
	case <-time.After(5 * time.Second):
		t.Fatal("Cancel did not end Wait")
	}
	require.Eventually(t, func() bool { return lockWaiters(srv, "2p-c") == 0 }, 5*time.Second, time.Millisecond)
	require.NoError(t, h.Release(ctx))

	// Acquired at enqueue: Cancel releases.
	stk, err := c.EnqueueSemaphore(ctx, "2p-sem", 2)
	require.NoError(t, err)
	require.True(t, stk.Acquired())
	assert.Equal(t, 2, stk.Limit())
	require.Equal(t, 1, semHolders(srv, "2p-sem"))
	require.NoError(t, stk.Cancel())
	assert.Zero(t, semHolders(srv, "2p-sem"))
	require.Eventually(t, func() bool { return c.servers[0].pool.Stats().AcquiredConns == 0 }, 5*time.Second, time.Millisecond)
}

func TestTicketWaitCancelledByContext(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	holder, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	h, err := holder.Lock(ctx, "2p-ctx")
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "2p-ctx")
	require.NoError(t, err)
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = tk.Wait(wctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorIs(t, err, ErrTimeout)
	require.Eventually(t, func() bool { return lockWaiters(srv, "2p-ctx") == 0 }, 5*time.Second, time.Millisecond)
	require.NoError(t, h.Release(ctx))
}

// Without a deadline a ticket's server-side wait is issued in chunks; when
// a chunk runs out the ticket re-joins the queue and keeps waiting. The
// chunks run out on the server's clock, advanced only once the server has
// the wait in hand, and each must be followed by a re-issued wait.
func TestTicketWaitReenqueuesAfterServerChunk(t *testing.T) {
	// Not parallel: the chunk sizes are package variables.
	old := ticketWaitChunk
	ticketWaitChunk = time.Second
	t.Cleanup(func() { ticketWaitChunk = old })
	oldL := waitChunk
	waitChunk = time.Second
	t.Cleanup(func() { waitChunk = oldL })

	// Two 1 s chunks per wait: far from the 33 s leases and the 23 s read
	// timeout, which nothing renews on this clock.
	clk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Clock: clk})
	holder, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	h, err := holder.Lock(ctx, "chunk")
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "chunk")
	require.NoError(t, err)
	// A blocking Lock is chunked the same way, on its own connection.
	hl, err := holder.Lock(ctx, "chunk-l")
	require.NoError(t, err)
	lockRes := make(chan *Lock, 1)
	l0 := srv.Stats().Requests["l"]
	go func() {
		l, err := c.Lock(ctx, "chunk-l")
		assert.NoError(t, err)
		lockRes <- l
	}()
	// The lane's try, then the wait on a wait-pool connection.
	awaitRequests(t, ctx, srv, "l", l0+2)
	for i := range int64(2) {
		awaitWaiters(t, ctx, srv, "chunk-l", 1)
		clk.Advance(time.Second) // the chunk runs out: the subject
		awaitRequests(t, ctx, srv, "l", l0+3+i)
	}
	require.NoError(t, hl.Release(ctx))
	l := <-lockRes
	require.NotNil(t, l)
	require.NoError(t, l.Release(ctx))

	res := make(chan error, 1)
	w0 := srv.Stats().Requests["w"]
	go func() {
		l, err := tk.Wait(ctx)
		if err == nil {
			err = l.Release(ctx)
		}
		res <- err
	}()
	for i := range int64(2) {
		awaitRequests(t, ctx, srv, "w", w0+1+i)
		// The server counts a `w` before it reads its clock for the wait
		// (the place was queued at Enqueue, so awaitWaiters cannot tell):
		// an Advance in between is lost. Advance until the chunk has run
		// out — the subject — and the ticket waits again.
		for srv.Stats().Requests["w"] < w0+2+i && ctx.Err() == nil {
			clk.Advance(time.Second)
			waitFor(ctx, 20*time.Millisecond, func() bool { return srv.Stats().Requests["w"] >= w0+2+i })
		}
	}
	// The ticket re-joined the queue and waits again.
	awaitRequests(t, ctx, srv, "w", w0+3)
	require.NoError(t, h.Release(ctx))
	select {
	case err := <-res:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("the ticket did not get the lock after re-enqueueing")
	}
}

// A queued ticket to which the lock was granted meanwhile (the grant waits
// for Wait on the server) releases it when cancelled or left at Close,
// also where the server does not release on disconnect: closing the
// connection, as Cancel did, left such a grant held by nobody until its
// lease ran out. A place not granted is given up with the connection kept.
func TestCancelledTicketReleasesAGrantWithoutAutoRelease(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		sem      bool
		viaClose bool
	}{{"lock/Cancel", false, false}, {"lock/Close", false, true}, {"semaphore/Cancel", true, false}, {"semaphore/Close", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{DisableAutoRelease: true})
			holder := newClient(t, addrsOf(srv))
			c, err := New(addrsOf(srv))
			require.NoError(t, err)
			t.Cleanup(func() { _ = c.Close() })
			ctx := testCtx(t)

			var release func(context.Context) error
			var cancel func() error
			if tc.sem {
				s, err := holder.Semaphore(ctx, "k", 1)
				require.NoError(t, err)
				tk, err := c.EnqueueSemaphore(ctx, "k", 1)
				require.NoError(t, err)
				require.False(t, tk.Acquired())
				release, cancel = s.Release, tk.Cancel
			} else {
				l, err := holder.Lock(ctx, "k")
				require.NoError(t, err)
				tk, err := c.Enqueue(ctx, "k")
				require.NoError(t, err)
				require.False(t, tk.Acquired())
				release, cancel = l.Release, tk.Cancel
			}
			require.NoError(t, release(ctx)) // the server grants the ticket's place
			require.Eventually(t, func() bool { return heldTotal(srv) == 1 }, 5*time.Second, time.Millisecond)

			if tc.viaClose {
				require.NoError(t, c.Close())
			} else {
				require.NoError(t, cancel())
			}
			assert.Zero(t, heldTotal(srv), "the cancelled ticket's grant is still held: %+v", srv.Stats())
		})
	}

	t.Run("not granted", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, testutil.Config{DisableAutoRelease: true})
		holder, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
		ctx := testCtx(t)
		l, err := holder.Lock(ctx, "k")
		require.NoError(t, err)
		tk, err := c.Enqueue(ctx, "k")
		require.NoError(t, err)
		require.Equal(t, 1, lockWaiters(srv, "k"))
		require.NoError(t, tk.Cancel())
		assert.Zero(t, lockWaiters(srv, "k"))
		st := c.servers[0].pool.Stats()
		assert.Equal(t, 1, st.IdleConns, "the connection went back to the pool")
		assert.Zero(t, st.Broken)
		require.NoError(t, l.Release(ctx))
		assert.Zero(t, heldTotal(srv))
	})
}

// A Wait whose deadline has passed before it could ask the server gives up
// its place by trying it (in the background: the caller's time is up), so
// that a grant the place got meanwhile is released, also without
// auto-release; closing the connection would leave that grant held.
func TestTicketWaitPastItsDeadlineReleasesAGrantWithoutAutoRelease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	holder, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	tk := ticketGrantedWhileQueued(t, srv, holder, c)

	past, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	_, err := tk.Wait(past)
	require.ErrorIs(t, err, ErrNotAcquired)
	require.Eventually(t, func() bool { return heldTotal(srv) == 0 }, DefaultReleaseTimeout, time.Millisecond,
		"the grant to the ticket's place is still held: %+v", srv.Stats())
}

// Cancel racing Close: whichever comes first, the ticket's place is given
// up and a grant it got released (Cancel counts as an operation, which
// Close waits for, and a Cancel that comes after Close began leaves the
// ticket to Close). Cancel's exchange is slowed so that Close starts
// during it.
func TestTicketCancelRacingCloseReleasesAGrantWithoutAutoRelease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	px := newProxy(t, srv.Addr())
	holder := newClient(t, addrsOf(srv))
	c, err := New([]string{px.Addr()})
	require.NoError(t, err)
	tk := ticketGrantedWhileQueued(t, srv, holder, c)

	px.SetLatency(100 * time.Millisecond)
	cancelled := make(chan error, 1)
	go func() { cancelled <- tk.Cancel() }()
	// Close begins once the server has the ticket's `w k 0`, while its
	// answer is on the way back.
	require.Eventually(t, func() bool { return srv.Stats().Requests["w"] == 1 }, 5*time.Second, time.Millisecond,
		"Cancel did not try the place")
	require.NoError(t, c.Close())
	require.NoError(t, <-cancelled)
	assert.Zero(t, heldTotal(srv), "the cancelled ticket's grant is held by nobody: %+v", srv.Stats())
}

// ticketGrantedWhileQueued queues c's ticket for "k" behind holder's lock and
// releases the lock, which the server grants to the ticket's place (where
// the grant waits for Wait).
func ticketGrantedWhileQueued(t *testing.T, srv *testutil.Server, holder, c *Client) *Ticket {
	t.Helper()
	ctx := testCtx(t)
	l, err := holder.Lock(ctx, "k")
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "k")
	require.NoError(t, err)
	require.False(t, tk.Acquired())
	require.NoError(t, l.Release(ctx))
	require.Eventually(t, func() bool { return heldTotal(srv) == 1 }, 5*time.Second, time.Millisecond)
	return tk
}

// Cancel of a ticket granted at enqueue releases its lease. Close beginning
// meanwhile must not wait for that release (which, once Close has begun,
// waits for Close): they used to wait for each other for ever. The tracer
// holds the release at its start until Close has begun.
func TestTicketCancelOfAGrantRacingCloseDoesNotHang(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	bt := &heldReleaseTracer{started: make(chan struct{}), proceed: make(chan struct{})}
	c, err := New(addrsOf(srv), WithTracer(bt))
	require.NoError(t, err)
	ctx := testCtx(t)
	tk, err := c.Enqueue(ctx, "k")
	require.NoError(t, err)
	require.True(t, tk.Acquired())

	cancelled := make(chan error, 1)
	go func() { cancelled <- tk.Cancel() }()
	<-bt.started // Cancel is releasing
	closed := make(chan struct{})
	go func() { _ = c.Close(); close(closed) }()
	require.Eventually(t, func() bool { return c.closing.Load() }, testTimeout, time.Millisecond)
	close(bt.proceed)
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("Close waits for Cancel, whose release waits for Close")
	}
	<-cancelled
	assert.Zero(t, heldTotal(srv))
}

// heldReleaseTracer holds the first release at its start until proceed is
// closed.
type heldReleaseTracer struct {
	started, proceed chan struct{}
	once             sync.Once
}

func (*heldReleaseTracer) AcquireStart(ctx context.Context, _ AcquireInfo) context.Context {
	return ctx
}
func (*heldReleaseTracer) AcquireEnd(context.Context, AcquireInfo, AcquireResult) {}
func (b *heldReleaseTracer) ReleaseStart(ctx context.Context, _ LeaseInfo) context.Context {
	b.once.Do(func() {
		close(b.started)
		<-b.proceed
	})
	return ctx
}
func (*heldReleaseTracer) ReleaseEnd(context.Context, LeaseInfo, error) {}
