package dflock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A ticket's Wait without a deadline re-joins the queue with `e` when a
// server-side chunk runs out. That `e` is not a blocking wait: it is
// answered at once. A Wait whose ctx ends (or whose Client closes) while
// the answer is on its way must not leave anything behind on a server with
// auto-release off — as Enqueue itself does not
// (TestEnqueueCancelledWhileAcquiredIsOnItsWayLeavesNoGrant): the package
// doc's one exception covers only a blocking wait. Closing the connection
// leaves an `acquired` grant held by nobody until its lease ends (v1.16),
// and on v1.10, which cleans up nothing of a closed connection with
// auto-release off, a `queued` place stays in the queue and is granted to
// nobody later.
func TestTicketReenqueueCancelledWhileItsAnswerIsOnItsWayLeavesNothing(t *testing.T) {
	// Not parallel: the chunk size is a package variable.
	old := ticketWaitChunk
	ticketWaitChunk = time.Second
	t.Cleanup(func() { ticketWaitChunk = old })

	for _, tc := range []struct {
		name     string
		version  testutil.Version
		acquired bool // the key is free when the re-issued e arrives
	}{{"v1.16/acquired", testutil.V1_16, true}, {"v1.10/queued", testutil.V1_10, false}} {
		t.Run(tc.name, func(t *testing.T) {
			clk := testutil.NewManualClock(time.Now().Round(0))
			srv := newServer(t, testutil.Config{Version: tc.version, Clock: clk, DisableAutoRelease: true})
			px := newProxy(t, srv.Addr())
			holder := newClient(t, addrsOf(srv))
			c := newClient(t, []string{px.Addr()})
			ctx := testCtx(t)

			h, err := holder.Lock(ctx, "k")
			require.NoError(t, err)
			tk, err := c.Enqueue(ctx, "k")
			require.NoError(t, err)
			require.False(t, tk.Acquired())

			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				l, err := tk.Wait(wctx)
				if err == nil {
					_ = l.Release(ctx)
				}
				errc <- err
			}()
			awaitRequests(t, ctx, srv, "w", 1)
			// From here every byte takes 300 ms through the proxy: the
			// `timeout` of the chunk, the re-issued `e`, and its answer.
			px.SetLatency(300 * time.Millisecond)
			// Run the server-side chunk out (an Advance before the server
			// read its clock for the wait is lost: advance until the
			// waiter is gone).
			for lockWaiters(srv, "k") != 0 && ctx.Err() == nil {
				clk.Advance(time.Second)
				waitFor(ctx, 20*time.Millisecond, func() bool { return lockWaiters(srv, "k") == 0 })
			}
			if tc.acquired {
				require.NoError(t, h.Release(ctx)) // the re-issued e is granted
			}
			awaitRequests(t, ctx, srv, "e", 2)
			if tc.acquired {
				require.Eventually(t, func() bool { return lockHeld(srv, "k") }, 5*time.Second, time.Millisecond,
					"the re-issued e was granted")
			} else {
				awaitWaiters(t, ctx, srv, "k", 1) // the re-issued e was queued
			}
			cancel() // its answer is in the proxy
			require.ErrorIs(t, <-errc, ErrNotAcquired)
			px.SetLatency(0)
			if !tc.acquired {
				require.NoError(t, h.Release(ctx))
			}
			assert.Eventually(t, func() bool { return !lockHeld(srv, "k") && lockWaiters(srv, "k") == 0 },
				2*DefaultReleaseTimeout, 5*time.Millisecond,
				"the re-issued e of the cancelled Wait left the lock to nobody: %+v", srv.Stats())
		})
	}
}

// A queued ticket whose place the server granted while nobody waited, and
// whose lease then ran out before Wait, fails Wait. The lock was not
// acquired; ErrLeaseExpired documents exactly this case ("a granted slot's
// lease lapsed before the grant was observed (error_lease_expired; rare,
// two-phase wait ...)"). But the servers' sweeper (every second) drops the
// two-phase state with the lapsed lease, so `w` answers error_not_enqueued,
// which Wait reports as a bare ErrRefused: neither ErrLeaseExpired nor
// ErrNotAcquired matches.
func TestTicketWaitAfterItsQueuedGrantLapsedIsNotAcquired(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Clock: clk})
	holder, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	h, err := holder.Lock(ctx, "k")
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "k", LeaseTTL(time.Second))
	require.NoError(t, err)
	require.False(t, tk.Acquired())
	require.NoError(t, h.Release(ctx)) // the server grants the ticket's place
	require.Eventually(t, func() bool { return lockHeld(srv, "k") }, 5*time.Second, time.Millisecond)
	// The 1 s lease of the grant runs out and the sweeper removes it.
	for lockHeld(srv, "k") && ctx.Err() == nil {
		clk.Advance(time.Second)
		waitFor(ctx, 20*time.Millisecond, func() bool { return !lockHeld(srv, "k") })
	}
	_, err = tk.Wait(ctx)
	require.Error(t, err)
	t.Logf("Wait: %v", err)
	assert.ErrorIs(t, err, ErrNotAcquired, "Wait failed, the lock was not acquired")
	assert.ErrorIs(t, err, ErrLeaseExpired, "the place's grant lapsed before it was observed")
}

// A try-Wait (AcquireTimeout(0)) sends `w key 0`, which the server answers
// at once — here with the grant its place got while queued. If the caller's
// ctx ends while that answer is on its way, the connection is closed, and
// on a server with auto-release off the grant stays held by nobody until
// its lease ends: the package doc's exception is for a blocking wait, and
// Cancel/Close give up such a place by trying it (`w key 0`) precisely so
// that this cannot happen.
func TestTicketTryWaitCancelledWhileItsGrantIsOnItsWayLeavesNoGrant(t *testing.T) {
	t.Parallel()
	srv, px, holder, c := autoReleaseOffBehindProxy(t)
	ctx := testCtx(t)
	tk := ticketGrantedWhileQueued(t, srv, holder, c)

	px.SetLatency(300 * time.Millisecond)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		l, err := tk.Wait(wctx, AcquireTimeout(0))
		if err == nil {
			_ = l.Release(ctx)
		}
		errc <- err
	}()
	awaitRequests(t, ctx, srv, "w", 1) // answered at once: `ok <token>` is in the proxy
	cancel()
	require.ErrorIs(t, <-errc, ErrNotAcquired)
	px.SetLatency(0)
	assert.Eventually(t, func() bool { return heldTotal(srv) == 0 }, 2*DefaultReleaseTimeout, 5*time.Millisecond,
		"the grant answered to the cancelled try-Wait is held by nobody: %+v", srv.Stats())
}

// Tickets (locks and semaphore slots) under random cancellation on a server
// with auto-release off, using only requests the server answers at once:
// Enqueue (ctx ended before or during its `e`), try-Waits (`w key 0`,
// AcquireTimeout(0)) under short contexts, Cancel racing them, two Waits of
// one ticket. None of this is the documented exception (a blocking wait
// whose ctx ends with a grant on its way), so once every call has returned
// and every Lock/Semaphore is released, the server's audit must show every
// grant ended and nobody queued — with the Client still open.
func TestTicketStressWithoutAutoReleaseLeavesNothingHeld(t *testing.T) {
	t.Parallel()
	for _, v := range []testutil.Version{testutil.V1_16, testutil.V1_10, testutil.V2_1} {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			live := map[string]testutil.AuditEvent{} // granted, not ended
			srv := newServer(t, testutil.Config{Version: v, DisableAutoRelease: true, Audit: func(ev testutil.AuditEvent) {
				mu.Lock()
				defer mu.Unlock()
				switch ev.Kind {
				case testutil.AuditGrant:
					live[ev.Token] = ev
				case testutil.AuditRenew:
				default:
					delete(live, ev.Token)
				}
			}})
			px := newProxy(t, srv.Addr())
			px.SetLatency(time.Millisecond)
			c := newClient(t, []string{px.Addr()})
			ctx := testCtx(t)
			var wg sync.WaitGroup
			for g := range 12 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(g), 7))
					for range 30 {
						sem := r.IntN(3) == 0
						key := fmt.Sprintf("k%d", r.IntN(3))
						ectx, ecancel := context.WithCancel(ctx)
						if r.IntN(2) == 0 {
							ecancel()
							ectx, ecancel = context.WithTimeout(ctx, time.Duration(r.IntN(4000))*time.Microsecond)
						}
						var wait func(context.Context) (handle, error)
						var cancel func() error
						if sem {
							tk, err := c.EnqueueSemaphore(ectx, "s"+key, 2)
							ecancel()
							if err != nil {
								continue
							}
							wait = func(ctx context.Context) (handle, error) { return tk.Wait(ctx, AcquireTimeout(0)) }
							cancel = tk.Cancel
						} else {
							tk, err := c.Enqueue(ectx, key)
							ecancel()
							if err != nil {
								continue
							}
							wait = func(ctx context.Context) (handle, error) { return tk.Wait(ctx, AcquireTimeout(0)) }
							cancel = tk.Cancel
						}
						// Let the place be granted now and then.
						time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond)
						wctx, wcancel := context.WithTimeout(ctx, time.Duration(1+r.IntN(4000))*time.Microsecond)
						var hs []handle
						var hmu sync.Mutex
						var inner sync.WaitGroup
						for range 1 + r.IntN(2) {
							inner.Go(func() {
								if h, err := wait(wctx); err == nil {
									hmu.Lock()
									hs = append(hs, h)
									hmu.Unlock()
								}
							})
						}
						if r.IntN(2) == 0 {
							time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond)
							_ = cancel()
						}
						inner.Wait()
						wcancel()
						assert.LessOrEqual(t, len(hs), 1, "two Waits of one ticket both succeeded")
						for _, h := range hs {
							time.Sleep(time.Duration(r.IntN(2000)) * time.Microsecond)
							if err := h.Release(ctx); err != nil && !errors.Is(err, ErrLockLost) {
								t.Errorf("release: %v", err)
							}
						}
						_ = cancel()
					}
				})
			}
			wg.Wait()
			ok := waitFor(ctx, 3*DefaultReleaseTimeout, func() bool {
				// Not under mu: Audit runs under the server's lock and
				// takes mu, and Stats takes the server's lock (the
				// inversion deadlocked the loop's run 314).
				if heldTotal(srv) != 0 {
					return false
				}
				mu.Lock()
				defer mu.Unlock()
				return len(live) == 0
			})
			mu.Lock()
			left := len(live)
			mu.Unlock()
			st := srv.Stats()
			assert.True(t, ok, "%d grants held by nobody: %+v", left, st)
			for _, l := range st.Locks {
				assert.Zero(t, l.Waiters, "waiters of %s", l.Key)
			}
			for _, s := range st.Semaphores {
				assert.Zero(t, s.Waiters, "waiters of %s", s.Key)
			}
			require.NoError(t, c.Close())
		})
	}
}

// Close with tickets in every state, semaphores and locks, auto-release off.
func TestCloseWithTicketsInEveryStateLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, v := range []testutil.Version{testutil.V1_16, testutil.V1_10, testutil.V2_1} {
		srv := newServer(t, testutil.Config{Version: v, DisableAutoRelease: true})
		holder := newClient(t, addrsOf(srv))
		c, err := New(addrsOf(srv))
		require.NoError(t, err)
		ctx := testCtx(t)
		// acquired at enqueue
		a, err := c.EnqueueSemaphore(ctx, "sa", 3)
		require.NoError(t, err)
		require.True(t, a.Acquired())
		// queued, granted meanwhile
		hs, err := holder.Semaphore(ctx, "sq", 2)
		require.NoError(t, err)
		hs2, err := holder.Semaphore(ctx, "sq", 2)
		require.NoError(t, err)
		q, err := c.EnqueueSemaphore(ctx, "sq", 2)
		require.NoError(t, err)
		require.False(t, q.Acquired())
		require.NoError(t, hs.Release(ctx))
		// queued, not granted
		hl, err := holder.Lock(ctx, "l")
		require.NoError(t, err)
		q2, err := c.Enqueue(ctx, "l")
		require.NoError(t, err)
		// waiting, blocked
		hw, err := holder.Lock(ctx, "w")
		require.NoError(t, err)
		w, err := c.Enqueue(ctx, "w")
		require.NoError(t, err)
		done := make(chan error, 1)
		go func() { _, err := w.Wait(ctx); done <- err }()
		awaitRequests(t, ctx, srv, "w", 1)
		time.Sleep(20 * time.Millisecond)
		// a held semaphore slot and lock via Lock
		_, err = c.Semaphore(ctx, "sh", 2)
		require.NoError(t, err)
		_, err = c.Lock(ctx, "lh")
		require.NoError(t, err)

		require.NoError(t, c.Close())
		require.ErrorIs(t, <-done, ErrClosed)
		_ = q2
		require.NoError(t, hs2.Release(ctx))
		require.NoError(t, hl.Release(ctx))
		if v != testutil.V1_10 { // v1.10 keeps an abandoned waiter (documented)
			require.NoError(t, hw.Release(ctx))
		}
		want := 0
		if v == testutil.V1_10 {
			want = 1 // the holder's "w"
		}
		assert.Eventually(t, func() bool { return heldTotal(srv) == want }, 2*time.Second, 5*time.Millisecond,
			"%v: held after Close: %+v", v, srv.Stats())
	}
}
