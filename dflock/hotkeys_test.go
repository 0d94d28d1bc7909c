package dflock

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// lockRequests is how many `l` requests srv has received.
func lockRequests(srv *testutil.Server) int64 { return srv.Stats().Requests["l"] }

func TestContendedLockSkipsTheLaneTryWhileTheKeyIsHot(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	// However slow the machine, the entry outlives the test.
	c.servers[0].hot.ttl = time.Hour

	holder, err := c.Lock(ctx, "k")
	require.NoError(t, err)

	// The first waiter learns that the key is held from a lane try.
	first := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, "k")
		assert.NoError(t, err)
		first <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "k") == 1 }, testTimeout, time.Millisecond)
	require.EqualValues(t, 1, c.stats.contended.Load())

	// The second goes straight to the wait pool: one `l`, the blocking one.
	before := lockRequests(srv)
	second := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, "k")
		assert.NoError(t, err)
		second <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "k") == 2 }, testTimeout, time.Millisecond)
	assert.EqualValues(t, 1, lockRequests(srv)-before, "the second contended Lock tried the lane first")
	assert.EqualValues(t, 1, c.stats.contended.Load(), "no lane try found the key held a second time")

	// TryLock still asks the lane: it must not wait.
	before = lockRequests(srv)
	_, err = c.TryLock(ctx, "k")
	require.ErrorIs(t, err, ErrNotAcquired)
	assert.EqualValues(t, 1, lockRequests(srv)-before)

	// Another key is not affected: it is granted on the lane.
	lane := c.stats.laneGrants.Load()
	other, err := c.Lock(ctx, "other")
	require.NoError(t, err)
	assert.Equal(t, lane+1, c.stats.laneGrants.Load(), "an uncontended key skipped the lane")
	require.NoError(t, other.Release(ctx))

	// The waiters are granted in order, each on its own connection, and
	// release there.
	require.NoError(t, holder.Release(ctx))
	l1 := <-first
	require.NotNil(t, l1)
	require.NoError(t, l1.Release(ctx))
	l2 := <-second
	require.NotNil(t, l2)
	assert.NotNil(t, l2.h.pinned, "granted on a wait-pool connection")
	assert.Same(t, l2.h.pinned, l2.h.owner, "the release goes to the connection that acquired the lease")
	require.NoError(t, l2.Release(ctx))
	assert.False(t, lockHeld(srv, "k"))
}

// A semaphore key is remembered apart from the lock key of the same name
// (they are separate resources from dflockd v1.14 on).
func TestHotKeysSeparateLocksFromSemaphores(t *testing.T) {
	t.Parallel()
	var h hotKeys
	now := time.Now()
	h.add(hotKey{key: "k"}, now)
	assert.True(t, h.contains(hotKey{key: "k"}, func() time.Time { return now }))
	assert.False(t, h.contains(hotKey{key: "k", sem: true}, func() time.Time { return now }))
}

func TestHotKeyIsForgottenAfterItsLifetime(t *testing.T) {
	t.Parallel()
	var h hotKeys
	t0 := time.Now()
	k := hotKey{key: "k"}
	h.add(k, t0)
	assert.True(t, h.contains(k, func() time.Time { return t0.Add(hotKeyTTL - 1) }))
	assert.False(t, h.contains(k, func() time.Time { return t0.Add(hotKeyTTL) }))
	assert.Zero(t, h.len(), "an expired entry is dropped when found")
	// Seen held again: remembered again.
	h.add(k, t0.Add(2*hotKeyTTL))
	assert.True(t, h.contains(k, func() time.Time { return t0.Add(2 * hotKeyTTL) }))
}

func TestHotKeysAreBounded(t *testing.T) {
	t.Parallel()
	var h hotKeys
	t0 := time.Now()
	at := func(d time.Duration) func() time.Time { return func() time.Time { return t0.Add(d) } }
	for i := range hotKeysMax + 100 {
		h.add(hotKey{key: fmt.Sprint(i)}, t0)
	}
	assert.Equal(t, hotKeysMax, h.len())
	assert.Len(t, h.m, hotKeysMax)
	assert.True(t, h.contains(hotKey{key: "0"}, at(0)), "a full set keeps what it has")
	assert.False(t, h.contains(hotKey{key: fmt.Sprint(hotKeysMax)}, at(0)), "a full set takes nothing new")

	// Once the entries have expired, a new key makes room for itself.
	h.add(hotKey{key: "new"}, t0.Add(hotKeyTTL))
	assert.Equal(t, 1, h.len())
	assert.True(t, h.contains(hotKey{key: "new"}, at(hotKeyTTL)))
}

// While no key is hot, a lookup is a single atomic load: the map is not
// even allocated. Afterwards it is a map lookup, still without allocating.
// (Not parallel: AllocsPerRun.)
func TestHotKeysCostNothingUntilAKeyIsContended(t *testing.T) {
	var h hotKeys
	called := false
	assert.False(t, h.contains(hotKey{key: "k"}, func() time.Time { called = true; return time.Now() }))
	assert.False(t, called, "the clock was read")
	assert.Nil(t, h.m)
	assert.Zero(t, testing.AllocsPerRun(100, func() { h.contains(hotKey{key: "k"}, time.Now) }))
	h.add(hotKey{key: "other"}, time.Now())
	key := string([]byte("k")) // not a constant, as a caller's key is not
	assert.Zero(t, testing.AllocsPerRun(100, func() { h.contains(hotKey{key: key}, time.Now) }))
}

// A key found held a moment ago (hot) skips the lane try and waits on the
// wait pool — but it may have been released meanwhile, and a Lock on a free
// key must not depend on a wait-pool connection: with the wait pool full it
// tries the lane first, and when no wait-pool connection can be made (a
// server at its connection cap) it tries the lane before failing.
func TestHotKeyReleasedMeanwhileIsStillGrantedByTheLane(t *testing.T) {
	t.Parallel()
	t.Run("wait pool full", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t)
		srv := newServer(t, testutil.Config{})
		c := newClient(t, addrsOf(srv), WithMaxConnsPerServer(1))
		c.servers[0].hot.ttl = time.Hour // k stays hot however slow the machine
		other := newClient(t, addrsOf(srv))

		// c's only wait-pool connection holds "busy", granted after a wait.
		ob, err := other.Lock(ctx, "busy")
		require.NoError(t, err)
		got := make(chan *Lock, 1)
		go func() {
			l, err := c.Lock(ctx, "busy")
			assert.NoError(t, err)
			got <- l
		}()
		require.Eventually(t, func() bool { return lockWaiters(srv, "busy") == 1 }, testTimeout, time.Millisecond)
		require.NoError(t, ob.Release(ctx))
		busy := <-got
		require.NotNil(t, busy)
		require.NotNil(t, busy.h.pinned, "busy is held on c's only wait-pool connection")

		ok, err := other.Lock(ctx, "k")
		require.NoError(t, err)
		_, err = c.Lock(ctx, "k", AcquireTimeout(100*time.Millisecond)) // k is hot now
		require.ErrorIs(t, err, ErrTimeout)
		require.NoError(t, ok.Release(ctx))
		require.True(t, c.servers[0].hot.contains(hotKey{key: "k"}, time.Now), "k was not found held")

		l, err := c.Lock(ctx, "k", AcquireTimeout(time.Second))
		require.NoError(t, err, "Lock on a free key waited for the full wait pool")
		require.NoError(t, l.Release(ctx))
		require.NoError(t, busy.Release(ctx))
	})
	t.Run("server at its connection cap", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t)
		srv := newServer(t, testutil.Config{MaxConnections: 2})
		c := newClient(t, addrsOf(srv), WithLaneConns(1))
		c.servers[0].hot.ttl = time.Hour
		other := newClient(t, addrsOf(srv), WithLaneConns(1))

		ok, err := other.Lock(ctx, "k") // other's lane: connection 2 of 2
		require.NoError(t, err)
		_, err = c.Lock(ctx, "k", AcquireTimeout(time.Second)) // k hot; the wait-pool dial is refused
		require.ErrorIs(t, err, ErrServerUnavailable)
		require.NoError(t, ok.Release(ctx))
		require.True(t, c.servers[0].hot.contains(hotKey{key: "k"}, time.Now), "k was not found held")

		l, err := c.Lock(ctx, "k", AcquireTimeout(time.Second))
		require.NoError(t, err, "Lock on a free key failed while the lane is healthy")
		require.NoError(t, l.Release(ctx))
	})
}

// A hot key released since, locked with an AcquireTimeout that covers a
// lane round trip but not the dial of a wait-pool connection (none is
// idle) plus the wait's round trip: Lock skipped the lane and timed out on
// a key free all along (found by review). With a timeout and no idle
// wait-pool connection, the lane is tried first. The same with the
// caller's own ctx deadline, which Lock documents alike (found by a later
// review: only an AcquireTimeout counted).
func TestHotKeyFreeAgainIsNotTimedOutByAWaitPoolDial(t *testing.T) {
	for _, bound := range []string{"AcquireTimeout", "ctx deadline"} {
		t.Run(bound, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			srv := newServer(t, testutil.Config{})
			px, err := testutil.NewProxy(srv.Addr())
			require.NoError(t, err)
			t.Cleanup(func() { _ = px.Close() })
			c := newClient(t, []string{px.Addr()})
			c.servers[0].hot.ttl = time.Hour // k stays hot however slow the machine
			other := newClient(t, addrsOf(srv))

			l, err := c.TryLock(ctx, "warm")
			require.NoError(t, err)
			require.NoError(t, l.Release(ctx))
			held, err := other.Lock(ctx, "k")
			require.NoError(t, err)
			wctx, cancel := context.WithCancel(ctx)
			time.AfterFunc(100*time.Millisecond, cancel)
			_, err = c.Lock(wctx, "k") // found held: k is hot; its wait is cancelled
			require.Error(t, err)
			require.True(t, c.servers[0].hot.contains(hotKey{key: "k"}, time.Now), "k is hot")
			require.NoError(t, held.Release(ctx)) // k is free from now on
			require.Eventually(t, func() bool { return !lockHeld(srv, "k") }, testTimeout, time.Millisecond)
			require.Zero(t, c.servers[0].pool.Stats().IdleConns, "the cancelled wait's connection was closed")

			px.SetLatency(100 * time.Millisecond) // a 200 ms round trip; a dial and a wait take at least two
			t0 := time.Now()
			var got *Lock
			if bound == "AcquireTimeout" {
				got, err = c.Lock(ctx, "k", AcquireTimeout(300*time.Millisecond))
			} else {
				dctx, dcancel := context.WithTimeout(ctx, 300*time.Millisecond)
				defer dcancel()
				got, err = c.Lock(dctx, "k")
			}
			require.NoError(t, err, "Lock on a free key failed after %v", time.Since(t0))
			require.NoError(t, got.Release(ctx))
		})
	}
}
