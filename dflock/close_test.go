package dflock

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Close releases every held lease itself (the server here does not
// auto-release on disconnect, so only explicit releases free them), ends
// blocked calls, closes every connection, and fails later calls with
// ErrClosed. goleak (TestMain) checks that no goroutine is left.
func TestCloseReleasesLeasesAndLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	cc := &connCounter{}
	c, err := New(addrsOf(srv), WithDialer(cc.dial))
	require.NoError(t, err)
	other := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	var leases []handle
	for _, k := range []string{"c1", "c2", "c3"} {
		l, err := c.Lock(ctx, k)
		require.NoError(t, err)
		leases = append(leases, l)
	}
	s, err := c.Semaphore(ctx, "csem", 3)
	require.NoError(t, err)
	leases = append(leases, s)
	// A lease pinned to a wait-pool connection.
	blocker, err := other.Lock(ctx, "cpin")
	require.NoError(t, err)
	got := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, "cpin")
		assert.NoError(t, err)
		got <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "cpin") == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, blocker.Release(ctx))
	pinned := <-got
	require.NotNil(t, pinned)
	leases = append(leases, pinned)
	// A ticket granted at enqueue, a queued ticket, and a blocked Lock.
	acq, err := c.Enqueue(ctx, "ctk")
	require.NoError(t, err)
	require.True(t, acq.Acquired())
	otherHeld, err := other.Lock(ctx, "cbusy")
	require.NoError(t, err)
	queued, err := c.Enqueue(ctx, "cbusy")
	require.NoError(t, err)
	require.False(t, queued.Acquired())
	blocked := make(chan error, 1)
	go func() {
		_, err := c.Lock(ctx, "cbusy")
		blocked <- err
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "cbusy") == 2 }, 5*time.Second, time.Millisecond)
	require.Equal(t, 6, heldTotal(srv)-1) // ours, plus other's cbusy

	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("Close waited for blocked calls and queued tickets")
	}
	require.NoError(t, c.Close(), "Close is idempotent")

	select {
	case err := <-blocked:
		require.ErrorIs(t, err, ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a blocked Lock")
	}
	assert.Equal(t, 1, heldTotal(srv), "leases survived Close (only other's cbusy may remain)")
	assert.True(t, lockHeld(srv, "cbusy"))
	require.Eventually(t, func() bool { return lockWaiters(srv, "cbusy") == 0 }, 5*time.Second, time.Millisecond)
	for _, l := range leases {
		<-l.Done()
		assert.ErrorIs(t, l.Err(), ErrReleased)
		assert.NoError(t, l.Release(ctx), "Release after Close: already released")
	}
	assert.Zero(t, cc.open.Load(), "connections left open")

	_, err = c.Lock(ctx, "c1")
	assert.ErrorIs(t, err, ErrClosed)
	_, err = c.TryLock(ctx, "c1")
	assert.ErrorIs(t, err, ErrClosed)
	_, err = c.Semaphore(ctx, "csem", 3)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = c.Enqueue(ctx, "c1")
	assert.ErrorIs(t, err, ErrClosed)
	_, err = queued.Wait(ctx)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = acq.Wait(ctx)
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, leases[0].Renew(ctx), ErrClosed)
	_, err = c.Stats(ctx)
	assert.ErrorIs(t, err, ErrClosed)

	require.NoError(t, otherHeld.Release(ctx))
	require.NoError(t, other.Close())
	require.Eventually(t, func() bool { return srv.Stats().Connections == 0 }, 5*time.Second, time.Millisecond)
}

func TestCloseWithNothingDoneDialsNothing(t *testing.T) {
	t.Parallel()
	cc := &connCounter{}
	c, err := New([]string{"127.0.0.1:1", "127.0.0.1:2"}, WithDialer(cc.dial))
	require.NoError(t, err)
	require.NoError(t, c.Close())
	assert.Zero(t, cc.dials.Load())
}

// Close's warning about releases left unanswered names the server that did
// not answer and counts only its leases (review rv7: it counted every lease
// Close released, on every server, and named none).
func TestCloseWarnsOfUnansweredReleasesPerServer(t *testing.T) {
	t.Parallel()
	a := newServer(t, testutil.Config{})
	b := newServer(t, testutil.Config{})
	logs := &syncBuffer{}
	c, err := New(addrsOf(a, b), WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	require.NoError(t, err)
	ctx := testCtx(t)
	onB := 0
	for i := 0; onB == 0 || onB == i; i++ { // leases on both servers
		l, err := c.Lock(ctx, fmt.Sprint("k", i))
		require.NoError(t, err)
		if l.Server() == b.Addr() {
			onB++
		}
	}
	resume := b.Stall(0)
	defer resume()
	require.NoError(t, c.Close())
	require.Equal(t, 1, logs.count("releases unanswered"), "%s", logs.String())
	require.Contains(t, logs.String(), fmt.Sprintf("server=%s leases=%d", b.Addr(), onB))
}
