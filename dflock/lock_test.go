package dflock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Mutual exclusion: 200 goroutines on 2 Clients lock 50 keys sharded over 3
// servers; every critical section checks that nobody else is inside.
func TestLockMutualExclusionAcrossClientsAndServers(t *testing.T) {
	t.Parallel()
	srvs := []*testutil.Server{newServer(t, testutil.Config{}), newServer(t, testutil.Config{}), newServer(t, testutil.Config{})}
	clients := []*Client{newClient(t, addrsOf(srvs...)), newClient(t, addrsOf(srvs...))}
	ctx := testCtx(t)

	const goroutines, keys, rounds = 200, 50, 10
	var inside [keys]atomic.Int32
	var overlaps, sections atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			c := clients[g%len(clients)]
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range rounds {
				k := rng.IntN(keys)
				l, err := c.Lock(ctx, fmt.Sprintf("mx:%d", k))
				if err != nil {
					errs <- err
					return
				}
				if inside[k].Add(1) != 1 {
					overlaps.Add(1)
				}
				runtime.Gosched() // give an intruder every chance
				if inside[k].Load() != 1 {
					overlaps.Add(1)
				}
				inside[k].Add(-1)
				sections.Add(1)
				if err := l.Release(ctx); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Zero(t, overlaps.Load(), "critical sections overlapped")
	assert.EqualValues(t, goroutines*rounds, sections.Load())

	// The keys really were spread over all three servers, and contention
	// really happened (otherwise this test proves little).
	st0, err := clients[0].Stats(ctx)
	require.NoError(t, err)
	st1, err := clients[1].Stats(ctx)
	require.NoError(t, err)
	for i, s := range st0.Servers {
		assert.Positive(t, s.Pool.Requests+st1.Servers[i].Pool.Requests, "server %d got no requests", i)
	}
	assert.Positive(t, st0.Client.Contended+st1.Client.Contended, "no lock was ever contended")
	assert.Positive(t, st0.Client.WaitGrants+st1.Client.WaitGrants, "no lock was granted after waiting")
	for _, s := range srvs {
		assert.Zero(t, heldTotal(s))
	}
}

// Semaphores: holders never exceed the limit, and do reach it.
func TestSemaphoreNeverExceedsLimit(t *testing.T) {
	t.Parallel()
	srvs := []*testutil.Server{newServer(t, testutil.Config{}), newServer(t, testutil.Config{}), newServer(t, testutil.Config{})}
	clients := []*Client{newClient(t, addrsOf(srvs...)), newClient(t, addrsOf(srvs...))}
	ctx := testCtx(t)

	const goroutines, keys, rounds, limit = 100, 5, 10, 3
	var inside [keys]atomic.Int32
	var maxSeen [keys]atomic.Int32
	var over atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			c := clients[g%len(clients)]
			rng := rand.New(rand.NewPCG(uint64(g), 2))
			for range rounds {
				k := rng.IntN(keys)
				s, err := c.Semaphore(ctx, fmt.Sprintf("sem:%d", k), limit)
				if err != nil {
					errs <- err
					return
				}
				n := inside[k].Add(1)
				if n > limit {
					over.Add(1)
				}
				for {
					m := maxSeen[k].Load()
					if n <= m || maxSeen[k].CompareAndSwap(m, n) {
						break
					}
				}
				time.Sleep(time.Millisecond) // hold the slot long enough for others to pile up
				inside[k].Add(-1)
				if err := s.Release(ctx); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Zero(t, over.Load(), "more holders than the limit")
	reached := false
	for k := range keys {
		reached = reached || maxSeen[k].Load() == limit
	}
	assert.True(t, reached, "no semaphore ever reached its limit: the test did not exercise it")
}

// FIFO: 20 waiters are granted in arrival order. Arrival order is made
// deterministic by waiting until the server shows each waiter queued.
func TestLockGrantsWaitersInFIFOOrder(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	holder := newClient(t, addrsOf(srv))
	waiters := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	const key, n = "fifo", 20

	l, err := holder.Lock(ctx, key)
	require.NoError(t, err)

	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			wl, err := waiters.Lock(ctx, key)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			if err := wl.Release(ctx); err != nil {
				errs <- err
			}
		})
		require.Eventually(t, func() bool { return lockWaiters(srv, key) == i+1 }, 5*time.Second, time.Millisecond,
			"waiter %d never showed up in the server's queue", i)
	}
	require.NoError(t, l.Release(ctx))
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	want := make([]int, n)
	for i := range want {
		want[i] = i
	}
	assert.Equal(t, want, order)
}

// Released servers answer a try on a held key whose waiter queue is full
// with error_max_waiters (PROTOCOL.md §15). For a try that still means "held":
// the error matches ErrNotAcquired as TryLock promises, and ErrMaxWaiters.
// A blocking Lock on that key is refused with ErrMaxWaiters alone.
func TestTryOnHeldKeyWithFullQueueIsNotAcquired(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{MaxWaiters: 1})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	s1, err := c.Semaphore(ctx, "s", 2) // limit 2: servers list limit 1 under locks
	require.NoError(t, err)
	s2, err := c.Semaphore(ctx, "s", 2)
	require.NoError(t, err)
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = c.Lock(wctx, "k") })         // the one waiter the cap allows
	wg.Go(func() { _, _ = c.Semaphore(wctx, "s", 2) }) // likewise
	require.Eventually(t, func() bool { return lockWaiters(srv, "k") == 1 && semWaiters(srv, "s") == 1 },
		5*time.Second, time.Millisecond)

	for name, try := range map[string]func() error{
		"TryLock":         func() error { _, err := c.TryLock(ctx, "k"); return err },
		"AcquireTimeout0": func() error { _, err := c.Lock(ctx, "k", AcquireTimeout(0)); return err },
		"TrySemaphore":    func() error { _, err := c.TrySemaphore(ctx, "s", 2); return err },
	} {
		err := try()
		assert.ErrorIs(t, err, ErrNotAcquired, name)
		assert.ErrorIs(t, err, ErrMaxWaiters, name)
		assert.ErrorContains(t, err, "error_max_waiters", name)
	}
	_, err = c.Lock(ctx, "k")
	assert.ErrorIs(t, err, ErrMaxWaiters)
	assert.NotErrorIs(t, err, ErrNotAcquired, "a blocking Lock was refused, not merely beaten to the key")

	cancel()
	wg.Wait()
	require.NoError(t, l.Release(ctx))
	require.NoError(t, s1.Release(ctx))
	require.NoError(t, s2.Release(ctx))
}

func TestTryLockFailsAtOnceWhenHeld(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv), WithLaneConns(1)) // one lane: a second lane connection is not dialled meanwhile
	ctx := testCtx(t)

	l, err := c.TryLock(ctx, "try")
	require.NoError(t, err)
	before := c.servers[0].pool.Stats()
	_, err = c.TryLock(ctx, "try")
	require.ErrorIs(t, err, ErrNotAcquired)
	assert.NotErrorIs(t, err, ErrTimeout)
	_, err = c.Lock(ctx, "try", AcquireTimeout(0)) // timeout 0 = try
	require.ErrorIs(t, err, ErrNotAcquired)
	assert.NoError(t, ctx.Err(), "a try waited for its context")
	// Neither waited: no wait-pool connection was dialled or taken, and the
	// server never saw a waiter.
	after := c.servers[0].pool.Stats()
	assert.Equal(t, before.Dials, after.Dials)
	assert.Zero(t, after.AcquiredConns)
	assert.Zero(t, lockWaiters(srv, "try"))
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, srv.Addr(), e.Server)
	assert.Equal(t, "try", e.Key)

	require.NoError(t, l.Release(ctx))
	l2, err := c.TryLock(ctx, "try")
	require.NoError(t, err)
	require.NoError(t, l2.Release(ctx))
}

// AcquireTimeout is enforced exactly by the client, although the server is
// sent whole seconds (here 1 s for 300 ms).
func TestLockAcquireTimeoutIsExact(t *testing.T) {
	t.Parallel()
	// The server's clock stands still: its 1 s timeout can never end the wait.
	clk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Clock: clk})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	l, err := c.Lock(ctx, "to")
	require.NoError(t, err)
	start := time.Now()
	_, err = c.Lock(ctx, "to", AcquireTimeout(300*time.Millisecond))
	elapsed := time.Since(start)
	require.ErrorIs(t, err, ErrTimeout)
	assert.ErrorIs(t, err, ErrNotAcquired)
	assert.NotErrorIs(t, err, context.DeadlineExceeded, "the caller's context did not end")
	assert.GreaterOrEqual(t, elapsed, 300*time.Millisecond)
	// The server's wait ends when its clock moves on (the connection waits
	// for that answer: lingering, once the background job's time is up, as
	// for a paused server), and the waiter is gone.
	clk.Advance(2 * time.Second)
	require.Eventually(t, func() bool { return lockWaiters(srv, "to") == 0 }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, l.Release(ctx))
}

func TestLockContextDeadlineMatchesBoth(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	l, err := c.Lock(ctx, "dl")
	require.NoError(t, err)
	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = c.Lock(dctx, "dl")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorIs(t, err, ErrTimeout)
	require.ErrorIs(t, err, ErrNotAcquired)
	require.NoError(t, l.Release(ctx))
}

// Cancelling a blocked Lock frees its place: another Client acquires
// promptly after the holder releases.
func TestLockCancelFreesPlaceInQueue(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	a, b, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	held, err := a.Lock(ctx, "cq")
	require.NoError(t, err)
	bctx, bcancel := context.WithCancel(ctx)
	berr := make(chan error, 1)
	go func() {
		l, err := b.Lock(bctx, "cq")
		if l != nil {
			_ = l.Release(ctx)
		}
		berr <- err
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "cq") == 1 }, 5*time.Second, time.Millisecond)
	bcancel()
	err = <-berr
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, err, ErrNotAcquired)
	require.Eventually(t, func() bool { return lockWaiters(srv, "cq") == 0 }, 5*time.Second, time.Millisecond)

	cerr := make(chan error, 1)
	go func() {
		l, err := c.Lock(ctx, "cq", AcquireTimeout(5*time.Second))
		if err == nil {
			err = l.Release(ctx)
		}
		cerr <- err
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "cq") == 1 }, 5*time.Second, time.Millisecond)
	// c is the only waiter the server lists: the cancelled place is gone,
	// so the release goes to c.
	require.NoError(t, held.Release(ctx))
	require.NoError(t, <-cerr)
}

// A grant that races the cancellation is released, never leaked: on the
// wait pool (the holder releases while the waiter is being cancelled) and on
// the control lane (try-locks whose context ends mid-flight).
func TestCancelledGrantIsNeverLeaked(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	a, b := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	var won, lost int
	for i := range 30 {
		key := fmt.Sprintf("race:%d", i)
		held, err := a.Lock(ctx, key)
		require.NoError(t, err)
		wctx, wcancel := context.WithCancel(ctx)
		res := make(chan error, 1)
		go func() {
			l, err := b.Lock(wctx, key)
			if err == nil {
				err = l.Release(ctx)
				won++
			}
			res <- err
		}()
		require.Eventually(t, func() bool { return lockWaiters(srv, key) == 1 }, 5*time.Second, time.Millisecond)
		// Release and cancel at (nearly) the same moment.
		go func() { _ = held.Release(ctx) }()
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond) // the race window is the subject
		wcancel()
		if err := <-res; err != nil {
			require.ErrorIs(t, err, context.Canceled)
			lost++
		}
		require.Eventually(t, func() bool { return !lockHeld(srv, key) }, 5*time.Second, 5*time.Millisecond,
			"round %d: a grant that raced the cancellation stayed held", i)
	}
	t.Logf("wait pool: %d grants won, %d cancelled", won, lost)

	// Control lane: try-locks with contexts that end at random moments.
	for i := range 200 {
		key := fmt.Sprintf("lane:%d", i%20)
		tctx, cancel := context.WithTimeout(ctx, time.Duration(rand.IntN(400))*time.Microsecond)
		l, err := b.TryLock(tctx, key)
		cancel()
		if err == nil {
			require.NoError(t, l.Release(ctx))
		} else if !errors.Is(err, ErrNotAcquired) {
			require.NoError(t, err)
		}
	}
	require.Eventually(t, func() bool { return heldTotal(srv) == 0 }, 5*time.Second, 5*time.Millisecond,
		"grants of cancelled try-locks leaked")
}

func TestReleaseIsIdempotentAndEndsTheLease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	l, err := c.Lock(ctx, "rel", LeaseTTL(7*time.Second))
	require.NoError(t, err)
	assert.Equal(t, "rel", l.Key())
	assert.Len(t, l.Token(), 32)
	assert.Equal(t, 7*time.Second, l.TTL())
	assert.Equal(t, srv.Addr(), l.Server())
	assert.NoError(t, l.Err())
	lctx := l.Context()
	require.NoError(t, l.Release(ctx))
	require.NoError(t, l.Release(ctx))
	<-l.Done()
	assert.ErrorIs(t, l.Err(), ErrReleased)
	assert.ErrorIs(t, context.Cause(lctx), ErrReleased)
	assert.False(t, lockHeld(srv, "rel"))
	err = l.Renew(ctx)
	assert.ErrorIs(t, err, ErrReleased)
}

func TestWithLockRunsAndReleases(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	boom := errors.New("boom")
	err := c.WithLock(ctx, "wl", func(ctx context.Context) error {
		assert.True(t, lockHeld(srv, "wl"))
		return boom
	})
	require.ErrorIs(t, err, boom)
	assert.False(t, lockHeld(srv, "wl"))

	err = c.WithSemaphore(ctx, "ws", 2, func(ctx context.Context) error {
		assert.Equal(t, 1, semHolders(srv, "ws"))
		return nil
	})
	require.NoError(t, err)
	assert.Zero(t, semHolders(srv, "ws"))
}

func TestSemaphoreSlotsAndLimitMismatch(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	s1, err := c.TrySemaphore(ctx, "slots", 2)
	require.NoError(t, err)
	s2, err := c.Semaphore(ctx, "slots", 2)
	require.NoError(t, err)
	assert.Equal(t, 2, s1.Limit())
	assert.NotEqual(t, s1.Token(), s2.Token())
	_, err = c.TrySemaphore(ctx, "slots", 2)
	require.ErrorIs(t, err, ErrNotAcquired)
	_, err = c.Semaphore(ctx, "slots", 2, AcquireTimeout(200*time.Millisecond))
	require.ErrorIs(t, err, ErrTimeout)

	_, err = c.TrySemaphore(ctx, "slots", 3)
	require.ErrorIs(t, err, ErrLimitMismatch)
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, "error_limit_mismatch", e.Reply)
	assert.Equal(t, `dflock: trysemaphore "slots" on `+srv.Addr()+`: server refused: error_limit_mismatch`, err.Error())

	assert.Equal(t, 2, semHolders(srv, "slots"))
	require.NoError(t, s1.Release(ctx))
	require.NoError(t, s2.Release(ctx))
	// The timed-out Semaphore destroyed its connection, but the server may
	// grant it the slot s1 freed before it has read that close; it then
	// releases the slot as it handles the close (a dead connection's leases
	// are auto-released), so nothing stays held.
	require.Eventually(t, func() bool { return semHolders(srv, "slots") == 0 }, 5*time.Second, time.Millisecond,
		"holders left: %d", semHolders(srv, "slots"))
}

// A Semaphore and a SemaphoreTicket share their lease and ticket code with
// Lock and Ticket, but their errors still name semaphore operations.
func TestSemaphoreHandleErrorsNameSemaphoreOps(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	s, err := c.Semaphore(ctx, "sem-ops", 2)
	require.NoError(t, err)
	require.NoError(t, s.Release(ctx))
	assert.ErrorIs(t, s.Err(), ErrReleased)
	err = s.Renew(ctx)
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, "semaphore renew", e.Op)
	assert.ErrorIs(t, err, ErrReleased)

	l, err := c.Lock(ctx, "lock-ops")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
	require.ErrorAs(t, l.Renew(ctx), &e)
	assert.Equal(t, "renew", e.Op)

	tk, err := c.EnqueueSemaphore(ctx, "sem-ops", 2)
	require.NoError(t, err)
	require.True(t, tk.Acquired())
	got, err := tk.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, got.Limit())
	_, err = tk.Wait(ctx)
	require.ErrorAs(t, err, &e)
	assert.Equal(t, "wait semaphore", e.Op)
	assert.ErrorIs(t, err, ErrTicketDone)
	require.NoError(t, got.Release(ctx))
	assert.Zero(t, semHolders(srv, "sem-ops"))
}

func TestServerRefusalsMapToSentinels(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{MaxLocks: 1, MaxWaiters: 1})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	l, err := c.Lock(ctx, "first")
	require.NoError(t, err)
	_, err = c.Lock(ctx, "orders:42")
	require.ErrorIs(t, err, ErrMaxLocks)
	assert.Equal(t, `dflock: lock "orders:42" on `+srv.Addr()+`: server refused: error_max_locks`, err.Error())

	// One waiter is allowed; the second is refused.
	w := make(chan error, 1)
	go func() {
		l2, err := c.Lock(ctx, "first", AcquireTimeout(5*time.Second))
		if err == nil {
			err = l2.Release(ctx)
		}
		w <- err
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "first") == 1 }, 5*time.Second, time.Millisecond)
	_, err = c.Lock(ctx, "first", AcquireTimeout(5*time.Second))
	require.ErrorIs(t, err, ErrMaxWaiters)
	require.NoError(t, l.Release(ctx))
	require.NoError(t, <-w)
}

func TestErrorMessagesNameOperationKeyAndServer(t *testing.T) {
	err := &Error{Op: "lock", Key: "orders:42", Server: "127.0.0.1:6388", Reply: "error_max_locks", Err: ErrMaxLocks}
	assert.Equal(t, `dflock: lock "orders:42" on 127.0.0.1:6388: server refused: error_max_locks`, err.Error())
	err = &Error{Op: "lock", Key: "k", Server: "s:1", Err: ErrTimeout}
	assert.Equal(t, `dflock: lock "k" on s:1: timed out`, err.Error())
	both := &bothError{domain: ErrNotAcquired, cause: context.Canceled}
	assert.True(t, strings.Contains(both.Error(), "context canceled"))
	assert.ErrorIs(t, both, context.Canceled)
	assert.ErrorIs(t, both, ErrNotAcquired)
}

// A grant that ends a wait longer than the lease is confirmed with a renewal
// before it is tracked: tracking it from the request's send time would
// declare it lost at once. The wait is real time (the client measures it
// on the real clock): just over the 1 s lease less its 100 ms margin.
func TestGrantAfterWaitLongerThanLeaseStaysHeld(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 1.1 s")
	}
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	holder := newClient(t, addrsOf(srv))
	c := newClient(t, addrsOf(srv), WithRenewRatio(0.1))
	ctx := testCtx(t)

	const ttl = time.Second
	h, err := holder.Lock(ctx, "long-wait")
	require.NoError(t, err)
	got := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, "long-wait", LeaseTTL(ttl))
		assert.NoError(t, err)
		got <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "long-wait") == 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(ttl + 100*time.Millisecond) // a wait past the loss deadline of a lease from its send: the subject
	require.NoError(t, h.Release(ctx))
	l := <-got
	require.NotNil(t, l)
	// A lease tracked from the wait's send time is declared lost at the
	// scheduler's next look, before any renewal of it; two renewals
	// confirmed after the grant show it was not.
	require.True(t, awaitRenewals(t, ctx, c, 2, l.Done()), "the lease was lost: %v", l.Err())
	require.NoError(t, l.Err())
	require.True(t, lockHeld(srv, "long-wait"))
	require.NoError(t, l.Release(ctx))
}

// Release with a context that has already ended still sends the release.
func TestReleaseWithEndedContextStillReleases(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	holder, c := newClient(t, addrsOf(srv)), newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	lane, err := c.Lock(ctx, "rel-ended")
	require.NoError(t, err)
	// A pinned one, too.
	h, err := holder.Lock(ctx, "rel-ended-pin")
	require.NoError(t, err)
	got := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, "rel-ended-pin")
		assert.NoError(t, err)
		got <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "rel-ended-pin") == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, h.Release(ctx))
	pinned := <-got
	require.NotNil(t, pinned)

	dead, cancel := context.WithCancel(ctx)
	cancel()
	for _, l := range []*Lock{lane, pinned} {
		err := l.Release(dead)
		require.ErrorIs(t, err, context.Canceled)
		assert.ErrorIs(t, l.Err(), ErrReleased)
		require.Eventually(t, func() bool { return !lockHeld(srv, l.Key()) }, 5*time.Second, time.Millisecond)
	}
	require.Eventually(t, func() bool { return c.servers[0].pool.Stats().AcquiredConns == 0 }, 5*time.Second, time.Millisecond)
}

// One rule for nil contexts across the API: an *ArgError naming ctx, never
// a silent context.Background(). A nil-ctx Release or Renew does nothing.
func TestNilContextIsAnArgErrorForRenewAndRelease(t *testing.T) {
	t.Parallel()
	s := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(s))
	l, err := c.TryLock(testCtx(t), "nilctx")
	require.NoError(t, err)
	//lint:ignore SA1012 a nil context is what is under test
	err = l.Renew(nil) //nolint:staticcheck
	var ae *ArgError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "ctx", ae.Arg)
	//lint:ignore SA1012 a nil context is what is under test
	err = l.Release(nil) //nolint:staticcheck
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "ctx", ae.Arg)
	require.NoError(t, l.Err(), "a nil-ctx Release releases nothing")
	require.NoError(t, l.Release(testCtx(t)))
}
