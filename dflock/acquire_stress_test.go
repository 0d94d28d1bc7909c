package dflock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// The package doc's second exception: on a server with auto-release off, a
// grant whose reply a broken connection cuts off cannot be released (its
// token was never read). The acquire fails with ErrServerUnavailable, and
// the grant is held by nobody until its lease runs out — then the key is
// free again.
func TestTryLockWhoseGrantIsCutOffStaysHeldUntilItsLease(t *testing.T) {
	t.Parallel()
	srv, px, holder, c := autoReleaseOffBehindProxy(t)
	ctx := testCtx(t)
	// Warm the lane so that only the grant is slowed.
	l, err := c.TryLock(ctx, "warm")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))

	px.SetLatency(300 * time.Millisecond)
	errc := make(chan error, 1)
	go func() {
		l, err := c.TryLock(ctx, "k", LeaseTTL(2*time.Second))
		if err == nil {
			_ = l.Release(ctx)
		}
		errc <- err
	}()
	require.Eventually(t, func() bool { return lockHeld(srv, "k") }, 5*time.Second, time.Millisecond)
	px.ResetAll() // the grant is on its way back
	px.SetLatency(0)
	err = <-errc
	if err == nil {
		t.Skip("the grant arrived before the cut (a machine slower than the proxy's 300 ms)")
	}
	require.ErrorIs(t, err, ErrServerUnavailable)
	require.NotErrorIs(t, err, ErrNotAcquired, "a failure, not a key found held")
	require.True(t, lockHeld(srv, "k"), "the cut-off grant is still held on the server")
	// Held by nobody until its lease runs out; then anyone can have it
	// (a client not behind the proxy, whose reset c has yet to notice).
	l, err = holder.Lock(ctx, "k", AcquireTimeout(10*time.Second))
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
}

// Not the same exception when the client cuts the connection: a server
// paused for more than 2×KeepAlive has the lane broken by the keepalive (no
// reply for that long), and the try-acquire on it fails at once with
// ErrServerUnavailable; the paused server still has the request in its
// socket buffer and grants it when it resumes. The connection lingers
// (pool.linger): its socket stays open until that answer is read, and the
// grant is released on another connection — not held by nobody for its
// lease, as it would be had the socket closed on a server with
// auto-release off.
func TestKeepaliveCutOfAStalledServerReleasesItsTryGrant(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	c := newClient(t, addrsOf(srv), WithKeepAlive(100*time.Millisecond))
	ctx := testCtx(t)
	l, err := c.TryLock(ctx, "warm") // the lane is dialled before the pause
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
	before := srv.Stats().Requests

	resume := srv.Stall(0)
	_, err = c.TryLock(ctx, "k", LeaseTTL(time.Hour))
	t.Cleanup(resume)
	require.ErrorIs(t, err, ErrServerUnavailable)
	require.ErrorContains(t, err, "no reply for 2×KeepAlive")
	conns := func() ConnCounts { return c.Snapshot().Servers[0].Conns }
	require.Eventually(t, func() bool { return conns().Lingering == 1 }, 5*time.Second, time.Millisecond,
		"Snapshot counts the connection kept open for the try's reply")
	resume()
	require.Eventually(t, func() bool {
		st := srv.Stats().Requests
		return st["l"] > before["l"] && st["r"] > before["r"] && !lockHeld(srv, "k")
	}, 5*time.Second, time.Millisecond, "the resumed server grants the try it read, and the client releases it")
	require.Eventually(t, func() bool { return conns().Lingering == 0 }, 5*time.Second, time.Millisecond,
		"the lingering connection closes once its reply is read")
	// Free long before its lease of an hour would have run out.
	l, err = c.TryLock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
}

// waitAcquire's stale retry: a reused wait-pool connection reset within
// staleWindow of the first request is taken for one the server had closed
// while idle, and the request is sent again. If the server had in fact
// granted the first one (auto-release off keeps the grant of the closed
// connection), the retry queues behind the client's own orphaned grant
// (documented: staleWindow, docs/leases.md) and gets the key when that
// lease runs out — a delay bounded by the lease, not an error.
func TestStaleRetryWaitsOutItsOwnOrphanGrantWithoutAutoRelease(t *testing.T) {
	t.Parallel()
	srv, px, holder, _ := autoReleaseOffBehindProxy(t)
	require.NoError(t, lockCutOffOnAStaleConn(t, srv, px, holder, 2*time.Second, 20*time.Second),
		"the retried Lock gets the key once the orphaned grant's lease runs out")
}

// With auto-release on, the same cut releases the first grant with its
// connection, and the retried Lock gets the key at once.
func TestStaleRetryGetsTheKeyAtOnceWithAutoRelease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	holder := newClient(t, addrsOf(srv))
	require.NoError(t, lockCutOffOnAStaleConn(t, srv, px, holder, 30*time.Second, 4*time.Second))
}

// lockCutOffOnAStaleConn has a Lock of a free key, with a lease of lease,
// sent on a reused idle wait-pool connection through px, whose connections
// are reset once the server has granted it (within staleWindow of the send,
// so that the client takes the connection for a stale one and sends the
// Lock again), and returns what that Lock (given wait to succeed) returned.
func lockCutOffOnAStaleConn(t *testing.T, srv *testutil.Server, px *testutil.Proxy, holder *Client, lease, wait time.Duration) error {
	t.Helper()
	c := newClient(t, []string{px.Addr()}, withoutLaneFastPath())
	ctx := testCtx(t)
	idleWaitConn(t, srv, c, holder, "k")
	px.SetLatency(60 * time.Millisecond)
	lctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		l, err := c.Lock(lctx, "k", LeaseTTL(lease))
		if err == nil {
			err = l.Release(ctx)
		}
		errc <- err
	}()
	require.Eventually(t, func() bool { return lockHeld(srv, "k") }, 5*time.Second, time.Millisecond)
	px.ResetAll()
	cutAfter := time.Since(start)
	px.SetLatency(0)
	err := <-errc
	if err != nil && cutAfter >= staleWindow {
		// A machine too slow to cut within the window: the break rightly
		// failed the wait instead of retrying it.
		t.Skipf("the cut came %v after the send, past staleWindow (%v): %v", cutAfter, staleWindow, err)
	}
	return err
}

// Stress: acquires and releases on a few hot keys, with contexts that end
// at every moment (deadlines and cancels), TryLock, Lock, semaphores and
// WithLock, on a server that releases on disconnect. Once every caller has
// released what it got, the server must hold nothing: a grant held on a
// live connection that no caller knows of is a lost grant.
func TestAcquireStressLeavesNoLostGrant(t *testing.T) {
	t.Parallel()
	for _, faults := range []bool{false, true} {
		t.Run(map[bool]string{false: "clean", true: "faults"}[faults], func(t *testing.T) { stressNoLostGrant(t, faults) })
	}
}

func stressNoLostGrant(t *testing.T, faults bool) {
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	c := newClient(t, []string{px.Addr()})
	ctx := testCtx(t)
	stopFaults := func() {}
	if faults {
		px.SetLatency(500 * time.Microsecond)
		done := make(chan struct{})
		stopFaults = func() { close(done); px.SetLatency(0) }
		go func() {
			tk := time.NewTicker(150 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-done:
					return
				case <-tk.C:
					px.ResetAll()
				}
			}
		}()
	}
	keys := []string{"a", "b", "c"}
	var wg sync.WaitGroup
	stop := time.Now().Add(3 * time.Second)
	for g := 0; g < 12; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(g), 7))
			for time.Now().Before(stop) {
				key := keys[rnd.IntN(len(keys))]
				d := time.Duration(rnd.IntN(3000)) * time.Microsecond
				actx, cancel := context.WithTimeout(ctx, d)
				if rnd.IntN(2) == 0 {
					actx, cancel = context.WithCancel(ctx)
					time.AfterFunc(d, cancel)
				}
				var h handle
				var err error
				switch rnd.IntN(5) {
				case 0:
					h, err = c.TryLock(actx, key)
				case 1:
					h, err = c.Lock(actx, key)
				case 2:
					h, err = c.Semaphore(actx, "s"+key, 2)
				case 3:
					h, err = c.TrySemaphore(actx, "s"+key, 2)
				case 4:
					err = c.WithLock(actx, key, func(context.Context) error {
						time.Sleep(time.Duration(rnd.IntN(500)) * time.Microsecond)
						return nil
					})
				}
				if err == nil && h != nil {
					time.Sleep(time.Duration(rnd.IntN(500)) * time.Microsecond)
					rctx, rcancel := context.WithTimeout(ctx, time.Duration(rnd.IntN(200))*time.Microsecond)
					if err := h.Release(rctx); err != nil && !errors.Is(err, context.DeadlineExceeded) && !faults {
						t.Errorf("release: %v", err)
					}
					rcancel()
				}
				cancel()
			}
		}(g)
	}
	wg.Wait()
	stopFaults()
	if !waitFor(ctx, 3*DefaultReleaseTimeout, func() bool { return heldTotal(srv) == 0 }) {
		t.Fatalf("every caller released what it got, the Client is open, and the server still holds: locks %+v sems %+v",
			srv.Stats().Locks, srv.Stats().Semaphores)
	}
}

// Close in the middle of try-acquires and releases, on a server with
// auto-release off: Close releases every held lease, settles the lane
// answers of the acquires it interrupted, and sends aside what needs it,
// so nothing may stay held afterwards (no blocking wait is cancelled and
// no connection cut: neither documented exception applies). Every handle returned must be
// ended once Close has returned.
func TestCloseDuringTryAcquiresLeavesNothing(t *testing.T) {
	t.Parallel()
	for i := 0; i < 5; i++ {
		srv := newServer(t, testutil.Config{DisableAutoRelease: true})
		c, err := New(addrsOf(srv))
		require.NoError(t, err)
		ctx := testCtx(t)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var got []handle
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				rnd := rand.New(rand.NewPCG(uint64(g), uint64(i)))
				for {
					var h handle
					var err error
					if rnd.IntN(2) == 0 {
						h, err = c.TryLock(ctx, "k"+string(rune('a'+rnd.IntN(4))))
					} else {
						h, err = c.TrySemaphore(ctx, "s"+string(rune('a'+rnd.IntN(4))), 2)
					}
					if errors.Is(err, ErrClosed) {
						return
					}
					if err != nil {
						continue
					}
					mu.Lock()
					got = append(got, h)
					mu.Unlock()
					if rnd.IntN(4) != 0 {
						rctx, cancel := context.WithTimeout(ctx, time.Duration(rnd.IntN(300))*time.Microsecond)
						_ = h.Release(rctx)
						cancel()
					}
				}
			}(g)
		}
		time.Sleep(time.Duration(50+20*i) * time.Millisecond)
		require.NoError(t, c.Close())
		wg.Wait()
		mu.Lock()
		for _, h := range got {
			select {
			case <-h.Done():
			default:
				t.Errorf("a handle of %q is not ended after Close", h.Key())
			}
		}
		mu.Unlock()
		if !waitFor(ctx, DefaultReleaseTimeout, func() bool { return heldTotal(srv) == 0 }) {
			t.Fatalf("round %d: after Close the server still holds: locks %+v sems %+v", i, srv.Stats().Locks, srv.Stats().Semaphores)
		}
	}
}

// Contended keys (wait-pool grants that pin their connection, hot keys)
// with short leases renewed often: every release is clean and no lease is
// lost, although pinned connections go back to the pool and are reused at
// once by the next waiter while renewals are on the wire.
func TestPinnedConnReuseUnderRenewals(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	// Two seconds, not one: the safety margin (a tenth of the life) is
	// then 200 ms, which a release sent just before the client's deadline
	// needs on a loaded machine to reach the server before its lease ends
	// (100 ms was not, once). Holds of up to 0.7 of it: about a third see a
	// renewal.
	const lease = 2 * time.Second
	stop := time.Now().Add(4 * time.Second)
	var wg sync.WaitGroup
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(g), 3))
			for time.Now().Before(stop) {
				var h handle
				var err error
				if g%2 == 0 {
					h, err = c.Lock(ctx, "k"+string(rune('a'+rnd.IntN(2))), LeaseTTL(lease))
				} else {
					h, err = c.Semaphore(ctx, "s", 2, LeaseTTL(lease))
				}
				if err != nil {
					t.Errorf("acquire: %v", err)
					return
				}
				time.Sleep(time.Duration(rnd.IntN(int(lease/time.Millisecond)*7/10)) * time.Millisecond)
				if e := h.Err(); e != nil {
					t.Errorf("%s lost while held: %v", h.Key(), e)
				}
				if err := h.Release(ctx); err != nil {
					t.Errorf("release %s: %v", h.Key(), err)
				}
			}
		}(g)
	}
	wg.Wait()
	st := c.Snapshot()
	t.Logf("snapshot: %+v", st)
}

// Server stalls past its read timeout (connections timed out with `error`
// and closed when it resumes), auto-release off, acquires and releases
// whose deadlines end at every moment (deadlines only: no cancelled
// blocking wait, the first documented exception). Once the callers have
// released what they got and the stalls have stopped, the server must
// hold nothing (aside releases retry for DefaultReleaseTimeout, longer
// than each stall).
//
// Every stall lasts its full 1.2 s, past the read timeout, including the
// last: a server paused for less than its read timeout but more than
// 2×KeepAlive (600 ms) serves, when it resumes, a try-acquire that the
// keepalive gave up on and cut meanwhile, and its grant is the second
// documented exception (a grant on its way when the connection breaks;
// TestKeepaliveCutOfAStalledServerReleasesItsTryGrant). The
// last stall used to end as soon as the callers were done, often within
// that range: the test failed once in 37 runs, and in 7 of 25 after a
// change to the lane's dial path that only moved the timing.
func TestStallsLeaveNoOrphanedGrants(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true, ReadTimeout: time.Second})
	c := newClient(t, addrsOf(srv), WithServerReadTimeout(time.Second), WithKeepAlive(300*time.Millisecond))
	ctx := testCtx(t)
	stopStalls := make(chan struct{})
	stallsDone := make(chan struct{})
	go func() {
		defer close(stallsDone)
		for {
			select {
			case <-stopStalls:
				return
			case <-time.After(400 * time.Millisecond):
			}
			resume := srv.Stall(0)
			time.Sleep(1200 * time.Millisecond) // see above: never cut short
			resume()
		}
	}()
	keys := []string{"a", "b"}
	var wg sync.WaitGroup
	stop := time.Now().Add(4 * time.Second)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(g), 11))
			for time.Now().Before(stop) {
				key := keys[rnd.IntN(len(keys))]
				actx, cancel := context.WithTimeout(ctx, time.Duration(rnd.IntN(1500))*time.Millisecond)
				var h handle
				var err error
				switch rnd.IntN(3) {
				case 0:
					h, err = c.TryLock(actx, key, LeaseTTL(30*time.Second))
				case 1:
					h, err = c.Lock(actx, key, LeaseTTL(30*time.Second))
				case 2:
					h, err = c.Semaphore(actx, "s"+key, 2, LeaseTTL(30*time.Second))
				}
				cancel()
				if err == nil {
					time.Sleep(time.Duration(rnd.IntN(300)) * time.Millisecond)
					rctx, rcancel := context.WithTimeout(ctx, time.Duration(rnd.IntN(400))*time.Millisecond)
					_ = h.Release(rctx)
					rcancel()
				}
			}
		}(g)
	}
	wg.Wait()
	close(stopStalls)
	<-stallsDone
	if !waitFor(ctx, 3*DefaultReleaseTimeout, func() bool { return heldTotal(srv) == 0 }) {
		t.Fatalf("the server still holds, with nobody holding: locks %+v sems %+v; client %+v",
			srv.Stats().Locks, srv.Stats().Semaphores, c.Snapshot())
	}
}

// Lock/TryLock/Semaphore/TrySemaphore/WithLock under contexts that end at
// every moment, auto-release off, through a slow proxy, on each server
// version. Tries end by deadline or cancel; so do blocking acquires, except
// on V1_10, where they end only by deadline (a cancelled wait there is the
// first documented exception: the server does not watch the peer). Once
// every call has returned and every lease is released, nothing may be held
// — with the Client still open.
func TestAcquireStressWithoutAutoReleaseLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, v := range []testutil.Version{testutil.V1_16, testutil.V1_10, testutil.V2_1} {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			srv := newServer(t, testutil.Config{Version: v, DisableAutoRelease: true})
			px := newProxy(t, srv.Addr())
			px.SetLatency(time.Millisecond)
			c := newClient(t, []string{px.Addr()})
			ctx := testCtx(t)
			var wg sync.WaitGroup
			for g := range 10 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(g), 9))
					for range 120 {
						key := fmt.Sprintf("k%d", r.IntN(3))
						d := time.Duration(r.IntN(6000)) * time.Microsecond
						actx, acancel := context.WithTimeout(ctx, d)
						op := r.IntN(6)
						if (op >= 4 || v != testutil.V1_10) && r.IntN(2) == 0 { // may be cancelled
							acancel()
							actx, acancel = context.WithCancel(ctx)
							time.AfterFunc(d, acancel)
						}
						var h handle
						var err error
						switch op {
						case 0:
							h, err = c.Lock(actx, key)
						case 1:
							h, err = c.Semaphore(actx, "s"+key, 2)
						case 2:
							h, err = c.Lock(ctx, key, AcquireTimeout(d))
						case 3:
							err = c.WithLock(actx, key, func(context.Context) error {
								time.Sleep(time.Duration(r.IntN(1000)) * time.Microsecond)
								return nil
							})
						case 4:
							h, err = c.TryLock(actx, key)
						case 5:
							h, err = c.TrySemaphore(actx, "s"+key, 2)
						}
						acancel()
						if err == nil && h != nil {
							time.Sleep(time.Duration(r.IntN(2000)) * time.Microsecond)
							rctx, rcancel := context.WithTimeout(ctx, time.Duration(r.IntN(1500))*time.Microsecond)
							_ = h.Release(rctx)
							rcancel()
						}
					}
				})
			}
			wg.Wait()
			if !waitFor(ctx, 3*DefaultReleaseTimeout, func() bool { return heldTotal(srv) == 0 }) {
				st := srv.Stats()
				t.Fatalf("held by nobody: locks %+v sems %+v", st.Locks, st.Semaphores)
			}
		})
	}
}

// ErrNotAcquired: an acquire that Client.Close ends, or that comes after it,
// was not acquired, and its error says so as well as ErrClosed — a blocked
// Lock (ended by the pool's Lifetime while it waits), a blocked Ticket.Wait,
// and a TryLock and an Enqueue after Close.
func TestAcquireEndedByCloseMatchesErrNotAcquired(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	holder := newClient(t, addrsOf(srv))
	c, err := New(addrsOf(srv))
	require.NoError(t, err)
	ctx := testCtx(t)
	h, err := holder.Lock(ctx, "k")
	require.NoError(t, err)
	defer h.Release(ctx)
	tk, err := c.Enqueue(ctx, "k")
	require.NoError(t, err)
	lockErr, waitErr := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := c.Lock(ctx, "k")
		lockErr <- err
	}()
	go func() {
		_, err := tk.Wait(ctx)
		waitErr <- err
	}()
	awaitWaiters(t, ctx, srv, "k", 2)
	require.NoError(t, c.Close())
	_, tryErr := c.TryLock(ctx, "k2")
	_, enqErr := c.Enqueue(ctx, "k2")
	for name, err := range map[string]error{"Lock": <-lockErr, "Ticket.Wait": <-waitErr, "TryLock after Close": tryErr, "Enqueue after Close": enqErr} {
		require.ErrorIs(t, err, ErrClosed, name)
		require.ErrorIs(t, err, ErrNotAcquired, "%s: %v", name, err)
		var e *Error
		require.ErrorAs(t, err, &e, name)
	}
}
