package dflock

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// acquireBurst takes key "first" and then n-1 more keys on c's one lane
// connection: "first" is the oldest lease of that owner, the last the
// scheduler's OwnerFailed (and so the loss notifier) reaches.
func acquireBurst(t *testing.T, c *Client, n int) {
	t.Helper()
	ctx := testCtx(t)
	l, err := c.TryLock(ctx, "first", LeaseTTL(time.Minute))
	require.NoError(t, err)
	require.NotNil(t, l)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	const workers = 32
	for w := range workers {
		wg.Go(func() {
			for i := w + 1; i < n; i += workers {
				l, err := c.TryLock(ctx, fmt.Sprintf("burst.%d", i), LeaseTTL(time.Minute))
				if err != nil || l == nil {
					firstErr.CompareAndSwap(nil, fmt.Sprintf("key %d: %v", i, err))
					return
				}
			}
		})
	}
	wg.Wait()
	require.Nil(t, firstErr.Load())
}

// A hook that is slow but never stuck (5 ms a call: a metrics push, say)
// must not hold up the loss notifier, which does the SDK's own loss work
// in LeaseLost: the release aside of a lease lost with its connection
// (what frees it on a server with auto-release off), the destruction of a
// pinned connection. Had the notifier waited for room in the callback
// queue, the last lease of a burst of 10,000 would be released aside only
// after ~(10,000−4,096) hook calls, ~30 s. Hooks docs: "A hook that blocks
// delays later hooks and log records" — not the SDK's releases.
func TestSlowHookDoesNotDelayReleaseAsideOfABurst(t *testing.T) {
	t.Parallel()
	const n = 10000
	srv := newServer(t, testutil.Config{MaxLocks: 2 * n, DisableAutoRelease: true})
	var calls atomic.Int64
	c := newClient(t, []string{srv.Addr()}, WithLaneConns(1), WithHooks(Hooks{OnLeaseLost: func(LeaseInfo, error) {
		calls.Add(1)
		time.Sleep(5 * time.Millisecond)
	}}))
	acquireBurst(t, c, n)
	require.True(t, lockHeld(srv, "first"))

	t0 := time.Now()
	srv.DropConnections() // the lane connection: every lease lost, the server keeps them (auto-release off)
	deadline := t0.Add(10 * time.Second)
	for lockHeld(srv, "first") {
		if time.Now().After(deadline) {
			t.Fatalf("the lease lost with its connection was not released aside %v after the break (OnLeaseLost calls so far: %d of %d)",
				time.Since(t0).Round(time.Millisecond), calls.Load(), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("released aside after %v", time.Since(t0).Round(time.Millisecond))
}

// Close stays bounded with a hook that blocks forever and 10,000 leases
// lost at once, whose reports fill the loss queue. Documented bound:
// DefaultReleaseTimeout for the releases plus DefaultReleaseTimeout
// (callbackWait) for the queued callbacks.
func TestCloseBoundedWithBlockedHookAndABurstOfLosses(t *testing.T) {
	t.Parallel()
	const n = 10000
	srv := newServer(t, testutil.Config{MaxLocks: 2 * n})
	unblock := make(chan struct{})
	var unblockOnce sync.Once
	release := func() { unblockOnce.Do(func() { close(unblock) }) }
	t.Cleanup(release)
	c := newClient(t, []string{srv.Addr()}, WithLaneConns(1), WithHooks(Hooks{OnLeaseLost: func(LeaseInfo, error) {
		<-unblock
	}}))
	acquireBurst(t, c, n)
	srv.DropConnections()
	// Every loss counted before Close begins; their reports queue behind
	// the blocked hook.
	require.Eventually(t, func() bool { return c.Snapshot().Servers[0].Losses == n }, testTimeout, time.Millisecond)
	t0 := time.Now()
	done := make(chan struct{})
	go func() { _ = c.Close(); close(done) }()
	bound := 2*DefaultReleaseTimeout + 2*time.Second // slack for -race
	select {
	case <-done:
		t.Logf("Close took %v", time.Since(t0).Round(time.Millisecond))
	case <-time.After(bound):
		release()
		<-done
		t.Fatalf("Close took longer than %v", bound)
	}
	release()
}
