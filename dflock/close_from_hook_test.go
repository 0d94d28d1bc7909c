package dflock

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A hook that calls Client.Close (a program that shuts down when it learns
// a lease is lost) runs on the callback goroutine, which Close cannot wait
// for: Close returns without waiting for the callback bound, and the
// reports queued behind the hook (the other leases' losses) still run.
func TestCloseFromHookDoesNotDropQueuedCallbacks(t *testing.T) {
	for _, elsewhere := range []bool{false, true} {
		name := "first Close"
		if elsewhere {
			name = "while a Close elsewhere runs"
		}
		t.Run(name, func(t *testing.T) {
			srv := newServer(t, testutil.Config{})
			var c *Client
			var first atomic.Bool
			var lost atomic.Int64
			hookClosed := make(chan struct{})
			var mu sync.Mutex // the reports come through the network, which the race detector does not see
			var locks []*Lock
			c, err := New([]string{srv.Addr()}, withCallbackWait(time.Hour), WithHooks(Hooks{
				OnLeaseLost: func(LeaseInfo, error) {
					lost.Add(1)
					if !first.CompareAndSwap(false, true) {
						return
					}
					// Every lease lost, so every report queued, before
					// Close: the leases may be on several lanes, whose
					// breaks are seen one after the other, and Close
					// would release those not lost yet.
					mu.Lock()
					ls := locks
					mu.Unlock()
					for _, l := range ls {
						<-l.Done()
					}
					for elsewhere && !c.closing.Load() {
						time.Sleep(time.Millisecond)
					}
					_ = c.Close()
					close(hookClosed)
				},
			}))
			require.NoError(t, err)
			ctx := testCtx(t)
			const n = 5
			for i := range n {
				l, err := c.Lock(ctx, "hook-close-"+string(rune('a'+i)))
				require.NoError(t, err)
				mu.Lock()
				locks = append(locks, l)
				mu.Unlock()
			}
			srv.DropConnections() // every lease lost at once: n reports queued
			outer := make(chan struct{})
			if elsewhere {
				// Once every lease is lost (as the hook waits for) and
				// the hook runs.
				for _, l := range locks {
					<-l.Done()
				}
				require.True(t, waitFor(ctx, testTimeout, func() bool { return lost.Load() >= 1 }))
				go func() { _ = c.Close(); close(outer) }()
			} else {
				close(outer)
			}
			// withCallbackWait(time.Hour): a Close that waited for the
			// hook calling it, or dropped the rest, would not get here
			// with every report run before the test's timeout.
			for what, ch := range map[string]chan struct{}{"Close from the hook": hookClosed, "Close elsewhere": outer} {
				select {
				case <-ch:
				case <-ctx.Done():
					t.Fatalf("%s did not return", what)
				}
			}
			require.True(t, waitFor(ctx, testTimeout, func() bool {
				return lost.Load() == n || c.Snapshot().CallbacksDropped > 0
			}))
			assert.Zero(t, c.Snapshot().CallbacksDropped, "callbacks dropped")
			assert.EqualValues(t, n, lost.Load(), "losses reported")
			// The dispatcher exits once the hook has returned (goleak).
			require.NoError(t, c.Close())
		})
	}
}

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

// When a hook's Close ran the shutdown, a later Close not called from a hook
// (the program's deferred one) still waits, up to the bound, for the hook
// and the calls queued behind it, as Hooks promises: none of them runs after
// it returned (found by the close review: it returned at once, and up to
// three of the four loss reports ran after it).
func TestCloseAfterAHooksCloseWaitsForQueuedCallbacks(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	var c *Client
	var calls atomic.Int64
	var first atomic.Bool
	hookClosed := make(chan struct{})
	unblock := make(chan struct{})
	c, err := New([]string{srv.Addr()}, WithHooks(Hooks{
		OnLeaseLost: func(LeaseInfo, error) {
			calls.Add(1)
			if !first.CompareAndSwap(false, true) {
				return
			}
			_ = c.Close()
			close(hookClosed)
			<-unblock // the hook goes on after its Close returned
		},
	}))
	require.NoError(t, err)
	ctx := testCtx(t)
	const n = 4
	for i := range n {
		_, err := c.Lock(ctx, fmt.Sprintf("hk%d", i))
		require.NoError(t, err)
	}
	srv.DropConnections()
	select {
	case <-hookClosed:
	case <-ctx.Done():
		t.Fatal("the hook's Close did not return")
	}
	tm := time.AfterFunc(300*time.Millisecond, func() { close(unblock) })
	defer tm.Stop()
	require.NoError(t, c.Close())
	atClose := calls.Load()
	select {
	case <-c.disp.exited:
	default:
		t.Fatalf("Close returned with the callback goroutine still running (%d hook call(s) made)", atClose)
	}
	require.Zero(t, c.Snapshot().CallbacksDropped)
	// How many losses were reported depends on how many came before the
	// hook's Close released the rest; none is reported after Close.
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, atClose, calls.Load(), "hook calls made after Close returned")
}
