package dflock

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/dflock-sdk/go/testutil"
)

// countFDs is the number of this process's open file descriptors.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// A hook that calls Close (OnConnBroken and OnLeaseLost, at once, while the
// test calls Close concurrently) does not deadlock, and nothing leaks.
func TestCloseFromHooksDoesNotDeadlock(t *testing.T) {
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{})
	px, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	base := goleak.IgnoreCurrent()
	baseFD := countFDs(t)

	for round := range 3 {
		var c *Client
		hookClosed := make(chan time.Duration, 16)
		closeIn := func() {
			t0 := time.Now()
			_ = c.Close()
			hookClosed <- time.Since(t0)
		}
		c, err = New([]string{px.Addr()}, WithHooks(Hooks{
			OnLeaseLost:  func(LeaseInfo, error) { closeIn() },
			OnConnBroken: func(string, error) { closeIn() },
		}), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
		require.NoError(t, err)
		for i := range 4 {
			_, err := c.TryLock(ctx, fmt.Sprintf("h%d", i))
			require.NoError(t, err)
		}
		sub, err := c.Listen(ctx, "x.>")
		require.NoError(t, err)
		px.ResetAll()
		select {
		case <-hookClosed:
		case <-time.After(10 * time.Second):
			t.Fatal("hook's Close did not return")
		}
		t0 := time.Now()
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() { _ = c.Close() })
		}
		wg.Wait()
		took := time.Since(t0)
		assert.Less(t, took, DefaultReleaseTimeout+time.Second, "round %d", round)
		_, err = sub.Next(ctx)
		assert.Error(t, err)
		if err := goleak.Find(base); err != nil {
			t.Fatalf("round %d: goroutines: %v", round, err)
		}
		require.True(t, waitFor(ctx, 5*time.Second, func() bool { return countFDs(t) <= baseFD }), "fds %d > %d", countFDs(t), baseFD)
		require.True(t, waitFor(ctx, 5*time.Second, func() bool { return heldTotal(srv) == 0 }))
	}
}

// New that fails part-way (a bad address after good ones, a bad option)
// leaks nothing.
func TestNewThatFailsLeaksNothing(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	base := goleak.IgnoreCurrent()
	baseFD := countFDs(t)
	for range 50 {
		_, err := New([]string{srv.Addr(), "127.0.0.1:1", "bad"}, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
		require.Error(t, err)
		_, err = New([]string{srv.Addr()}, WithLeaseTTL(-1), WithHooks(Hooks{OnDial: func(DialInfo) {}}))
		require.Error(t, err)
		_, err = New([]string{srv.Addr()}, WithAuthToken("a b\n"), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
		require.Error(t, err)
	}
	require.NoError(t, goleak.Find(base))
	assert.LessOrEqual(t, countFDs(t), baseFD)
}

// leftHeldWithin bounds the wait for the server to drop what nobody holds:
// far longer than it takes to apply what it has read, far shorter than the
// server's default lease (33 s), which would drop a lease left held by
// nobody anyway.
const leftHeldWithin = 5 * time.Second

// Grants that arrive while Close is under way (the server stalled through
// the calls, then resumed within DefaultReleaseTimeout) are released by
// Close, even on a server with auto-release off.
func TestCloseReleasesGrantsThatArriveDuringIt(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	for _, resumeAfter := range []time.Duration{50 * time.Millisecond, 300 * time.Millisecond, 1200 * time.Millisecond} {
		t.Run(resumeAfter.String(), func(t *testing.T) {
			srv := newServer(t, testutil.Config{DisableAutoRelease: true})
			c, err := New([]string{srv.Addr()})
			require.NoError(t, err)
			// Warm a lane and a pool connection.
			l, err := c.TryLock(ctx, "warm")
			require.NoError(t, err)
			require.NoError(t, l.Release(ctx))
			resume := srv.Stall(0)
			var wg sync.WaitGroup
			errs := make(chan error, 16)
			for i := range 3 {
				wg.Go(func() { _, err := c.TryLock(ctx, fmt.Sprintf("t%d", i)); errs <- err })
				wg.Go(func() { _, err := c.Lock(ctx, fmt.Sprintf("l%d", i)); errs <- err })
				wg.Go(func() { _, err := c.Semaphore(ctx, fmt.Sprintf("s%d", i), 2); errs <- err })
				wg.Go(func() { _, err := c.Enqueue(ctx, fmt.Sprintf("e%d", i)); errs <- err })
			}
			time.Sleep(100 * time.Millisecond) // requests written, held by the stall
			closed := make(chan time.Duration, 1)
			t0 := time.Now()
			go func() { _ = c.Close(); closed <- time.Since(t0) }()
			time.Sleep(resumeAfter)
			resume()
			took := <-closed
			wg.Wait()
			close(errs)
			for err := range errs {
				assert.ErrorIs(t, err, ErrClosed)
			}
			assert.Less(t, took, DefaultReleaseTimeout+time.Second)
			// Whatever the server still has to apply, it applies within
			// moments; a lease left held by nobody would stay for its TTL.
			if !assert.Eventually(t, func() bool { return heldTotal(srv) == 0 }, leftHeldWithin, 10*time.Millisecond) {
				st := srv.Stats()
				t.Errorf("leases left on a server with auto-release off: %+v %+v", st.Locks, st.Semaphores)
			}
		})
	}
}

// A TryLock (control lane) in flight when Close is called returns
// ErrClosed, but its grant, which the server makes while the reply is on
// its way, is never released: Close closes the lane without reading the
// reply. On a server with auto-release off the lock then stays held by
// nobody until its TTL runs out. The docs promise that an acquire that
// returns an error never leaves a lock held, but for a cancelled blocking
// wait.
func TestCloseReleasesALaneGrantInFlight(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	px, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	c, err := New([]string{px.Addr()})
	require.NoError(t, err)
	l, err := c.TryLock(ctx, "warm") // dial the lane
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))

	px.SetLatency(50 * time.Millisecond) // a 100 ms round trip
	errs := make(chan error, 2)
	go func() { _, err := c.TryLock(ctx, "k"); errs <- err }()
	go func() { _, err := c.TrySemaphore(ctx, "s", 2); errs <- err }()
	time.Sleep(10 * time.Millisecond) // the requests are on their way
	t0 := time.Now()
	require.NoError(t, c.Close())
	took := time.Since(t0)
	for range 2 {
		assert.ErrorIs(t, <-errs, ErrClosed)
	}
	// The server answers, and Close's releases reach it, within moments; a
	// grant left held by nobody would stay for its TTL.
	assert.Eventually(t, func() bool { return !lockHeld(srv, "k") }, leftHeldWithin, 10*time.Millisecond,
		"lock held by nobody after Close (Close took %v)", took)
	assert.Eventually(t, func() bool { return semHolders(srv, "s") == 0 }, leftHeldWithin, 10*time.Millisecond,
		"semaphore slot held by nobody after Close (Close took %v)", took)
}
