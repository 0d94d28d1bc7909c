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
)

// An OnLeaseLost hook that releases the lost handle (harmless: Release of
// a lost lease only reports the loss) while Close runs: Release must not
// wait for Close, which waits for the hook — or Close gives up on the
// callback queue and drops the other loss reports.
func TestReleaseInLossHookDuringCloseDoesNotWaitForClose(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	var (
		mu      sync.Mutex
		byTok   = map[string]*Lock{}
		c       *Client
		calls   atomic.Int64
		relErrs = make(chan error, 2)
		relDur  = make(chan time.Duration, 2)
	)
	hook := func(info LeaseInfo, err error) {
		calls.Add(1)
		mu.Lock()
		l := byTok[info.Token]
		mu.Unlock()
		// Wait for Close to begin (the loss was queued before it).
		for !c.closing.Load() {
			time.Sleep(time.Millisecond)
		}
		start := time.Now()
		relErrs <- l.Release(context.Background())
		relDur <- time.Since(start)
	}
	var err error
	c, err = New([]string{px.Addr()}, WithHooks(Hooks{OnLeaseLost: hook}))
	require.NoError(t, err)
	ctx := testCtx(t)
	for _, k := range []string{"hookrel-a", "hookrel-b"} {
		l, err := c.TryLock(ctx, k)
		require.NoError(t, err)
		mu.Lock()
		byTok[l.Token()] = l
		mu.Unlock()
	}
	px.ResetAll()
	for _, l := range byTok {
		<-l.Done()
	}
	require.True(t, waitFor(ctx, 5*time.Second, func() bool { return calls.Load() >= 1 }))
	start := time.Now()
	require.NoError(t, c.Close())
	closeDur := time.Since(start)
	assert.EqualValues(t, 2, calls.Load(), "loss reports run (Close took %v)", closeDur)
	assert.Zero(t, c.Snapshot().CallbacksDropped, "callbacks dropped by Close")
	for range calls.Load() {
		assert.ErrorIs(t, <-relErrs, ErrLockLost)
		t.Logf("Release in hook took %v; Close took %v", <-relDur, closeDur)
	}
}

// The same for a hook that releases a lease still held and cancels a
// queued ticket while Close runs: both wait only until Close has given
// them back (the lease released, the place withdrawn), not for Close's
// end, which waits for the hook.
func TestReleaseAndCancelInHookDuringCloseDoNotWaitForClose(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	var (
		c      *Client
		held   *Lock
		tk     *Ticket
		calls  atomic.Int64
		relErr = make(chan error, 1)
		canErr = make(chan error, 1)
	)
	hook := func(LeaseInfo, error) {
		if calls.Add(1) != 1 {
			return
		}
		for !c.closing.Load() {
			time.Sleep(time.Millisecond)
		}
		relErr <- held.Release(context.Background())
		canErr <- tk.Cancel()
	}
	var err error
	c, err = New([]string{px.Addr(), srv.Addr()}, WithHooks(Hooks{OnLeaseLost: hook}))
	require.NoError(t, err)
	ctx := testCtx(t)
	// One key on each server: the lost one behind the proxy, the held
	// one and the ticket on the server reached directly.
	// Two lost: the second loss report waits behind the hook, and Close
	// would drop it if it gave up on the callback goroutine.
	lostKey := keyOn(t, c, px.Addr(), "hookrel-lost-")
	lostKey2 := keyOn(t, c, px.Addr(), "hookrel-lost2-")
	heldKey := keyOn(t, c, srv.Addr(), "hookrel-held-")
	tkKey := keyOn(t, c, srv.Addr(), "hookrel-tk-")
	lost, err := c.TryLock(ctx, lostKey)
	require.NoError(t, err)
	lost2, err := c.TryLock(ctx, lostKey2)
	require.NoError(t, err)
	held, err = c.TryLock(ctx, heldKey)
	require.NoError(t, err)
	other := newClient(t, []string{srv.Addr()})
	blocker, err := other.TryLock(ctx, tkKey)
	require.NoError(t, err)
	tk, err = c.Enqueue(ctx, tkKey)
	require.NoError(t, err)
	require.False(t, tk.Acquired())
	px.ResetAll()
	<-lost.Done()
	<-lost2.Done()
	require.True(t, waitFor(ctx, 5*time.Second, func() bool { return calls.Load() >= 1 }))
	start := time.Now()
	require.NoError(t, c.Close())
	closeDur := time.Since(start)
	require.NoError(t, <-relErr, "Close released the held lock")
	require.NoError(t, <-canErr, "Close withdrew the ticket")
	assert.EqualValues(t, 2, calls.Load(), "loss reports run (Close took %v)", closeDur)
	assert.Zero(t, c.Snapshot().CallbacksDropped, "callbacks dropped by Close")
	assert.Zero(t, holderOf(srv, heldKey), "the held lock was released")
	require.NoError(t, blocker.Release(ctx))
}
