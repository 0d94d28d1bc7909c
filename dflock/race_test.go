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
	"github.com/dflock-sdk/go/wire"
)

// Regression tests for races between a grant and the failure or
// cancellation around it. Each would let a caller believe it holds a lock
// that the server has freed (or leave a lock held that nobody tracks).

// The grant was read, then the lane connection broke before the lease was
// tracked: the scheduler's OwnerFailed found nothing to lose. Tracking must
// notice the dead owner itself, or the lock is believed held until its next
// renewal while the server hands it to someone else.
func TestGrantOnConnectionThatBrokeBeforeTrackingIsLostAtOnce(t *testing.T) {
	t.Parallel()
	s := newServer(t, testutil.Config{})
	// The scheduler's clock stands still: no renewal and no loss deadline
	// can come, so only Track itself can find the dead owner.
	c := newClient(t, addrsOf(s), withClock(testutil.NewManualClock(time.Now().Round(0))))
	ctx := testCtx(t)
	srv, err := c.route("k")
	require.NoError(t, err)
	req := wire.Request{Cmd: wire.CmdLock, Key: "k"}
	sent := time.Now()
	r, owner, err := srv.pool.Do(ctx, req)
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	s.DropConnections() // the connection breaks right after the grant was read
	require.Eventually(t, func() bool { return owner.Err() != nil && !lockHeld(s, "k") }, 2*time.Second, time.Millisecond)

	l := &Lock{h: c.track(srv, owner, nil, req, r, sent)}
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("a lease tracked on a dead connection was not reported lost")
	}
	assert.ErrorIs(t, l.Err(), ErrLockLost)
}

// The same race through the public API: TryLocks in flight while the server
// drops every connection. Every lock the client still believes held must be
// held on the server.
func TestTryLockWhileServerDropsConnectionsNeverLosesSilently(t *testing.T) {
	t.Parallel()
	s := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(s), WithLaneConns(1))
	ctx := testCtx(t)
	for round := range 20 {
		var mu sync.Mutex
		var locks []*Lock
		var wg sync.WaitGroup
		for i := range 32 {
			wg.Go(func() {
				l, err := c.TryLock(ctx, fmt.Sprintf("r%d-%d", round, i), LeaseTTL(60*time.Second))
				if err == nil {
					mu.Lock()
					locks = append(locks, l)
					mu.Unlock()
				}
			})
		}
		s.DropConnections()
		wg.Wait()
		for _, l := range locks {
			// Loss is reported asynchronously (the reader sees EOF), so
			// wait for either verdict; a lock that stays "held" while the
			// server has no holder fails.
			require.Eventually(t, func() bool { return l.Err() != nil || lockHeld(s, l.Key()) },
				2*time.Second, time.Millisecond, "round %d: %s believed held, server has no holder", round, l.Key())
			_ = l.Release(ctx)
		}
	}
}

// Release stops renewing before it sends; if it then gave up without
// sending because ctx ended in between, the lease would stay held on the
// server (its lane connection stays open) until its TTL ran out.
func TestReleaseUnderAnExpiringContextNeverLeavesTheLockHeld(t *testing.T) {
	t.Parallel()
	s := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(s))
	ctx := testCtx(t)
	for i := range 200 {
		key := fmt.Sprintf("k%d", i)
		l, err := c.TryLock(ctx, key)
		require.NoError(t, err)
		rctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(30000))*time.Nanosecond)
		_ = l.Release(rctx)
		cancel()
		require.Eventually(t, func() bool { return !lockHeld(s, key) }, 2*time.Second, time.Millisecond,
			"iteration %d: the server still holds %s after Release", i, key)
	}
}

// Cancel racing a Wait that is being granted: whatever Wait returns must be
// true — a Lock it returns is held (a renewal on its connection succeeds),
// and otherwise nothing is left held on the server.
func TestTicketCancelRacingWaitNeverKillsTheReturnedLock(t *testing.T) {
	t.Parallel()
	s := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(s))
	ctx := testCtx(t)
	granted := 0
	for i := range 100 {
		key := fmt.Sprintf("t%d", i)
		h, err := c.TryLock(ctx, key)
		require.NoError(t, err)
		tk, err := c.Enqueue(ctx, key)
		require.NoError(t, err)
		require.False(t, tk.Acquired())
		type result struct {
			l   *Lock
			err error
		}
		ch := make(chan result, 1)
		go func() {
			l, err := tk.Wait(ctx)
			ch <- result{l, err}
		}()
		require.NoError(t, h.Release(ctx)) // the grant races the Cancel below
		time.Sleep(time.Duration(i%40) * 10 * time.Microsecond)
		require.NoError(t, tk.Cancel())
		r := <-ch
		if r.err != nil {
			// A Cancel that came before the Wait began (its goroutine
			// not yet run, on a busy CPU) leaves it nothing to wait for.
			if !errors.Is(r.err, ErrTicketDone) {
				require.ErrorIs(t, r.err, ErrNotAcquired)
			}
			require.Eventually(t, func() bool { return !lockHeld(s, key) }, 2*time.Second, time.Millisecond,
				"iteration %d: Wait failed but the server still holds %s", i, key)
			continue
		}
		granted++
		require.NoError(t, r.l.Renew(ctx), "iteration %d: Wait returned a lock that Cancel killed", i)
		require.NoError(t, r.l.Err())
		require.NoError(t, r.l.Release(ctx))
	}
	t.Logf("%d of 100 waits won the race against Cancel", granted)
}
