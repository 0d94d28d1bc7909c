package dflock

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Every connection Close ends is reported to OnConnBroken with an error
// matching ErrClosed, whatever it was doing: also one carrying a blocked
// Lock, Semaphore or Ticket.Wait, which Close interrupts by withdrawing the
// wait (the connection goes as a cancelled wait's does), and the listener's.
// dflockotel tells a graceful Close from broken connections by ErrClosed;
// a deploy with goroutines blocked in Lock counted one broken connection
// per waiter before.
func TestCloseReportsTheConnectionsItEndsAsClosed(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	var mu sync.Mutex
	var reports []error
	c := newClient(t, addrsOf(srv), WithHooks(Hooks{OnConnBroken: func(_ string, err error) {
		mu.Lock()
		reports = append(reports, err)
		mu.Unlock()
	}}))
	other := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	held, err := other.Lock(ctx, "lock")
	require.NoError(t, err)
	semHeld, err := other.Semaphore(ctx, "sem", 1)
	require.NoError(t, err)
	queued, err := other.Lock(ctx, "ticket")
	require.NoError(t, err)

	lane, err := c.TryLock(ctx, "lane") // a lease on the lane
	require.NoError(t, err)
	_ = lane
	sub, err := c.Listen(ctx, "a.b") // the listener connection
	require.NoError(t, err)
	_ = sub
	tk, err := c.Enqueue(ctx, "ticket")
	require.NoError(t, err)

	blocked := make(chan error, 3)
	go func() { _, err := c.Lock(ctx, "lock"); blocked <- err }()
	go func() { _, err := c.Semaphore(ctx, "sem", 1); blocked <- err }()
	go func() { _, err := tk.Wait(ctx); blocked <- err }()
	awaitWaiters(t, ctx, srv, "lock", 1)
	awaitWaiters(t, ctx, srv, "ticket", 1)
	awaitWaiters(t, ctx, srv, "sem", 1) // limit 1: listed with the locks

	require.NoError(t, c.Close())
	for range 3 {
		require.ErrorIs(t, <-blocked, ErrClosed)
	}
	mu.Lock()
	defer mu.Unlock()
	// Close delivers the hook calls queued before it returns: at least the
	// lane connection, the listener and the three blocked calls' ones.
	require.GreaterOrEqual(t, len(reports), 5)
	for _, err := range reports {
		assert.ErrorIs(t, err, ErrClosed, "a connection Close ended was reported as broken: %v", err)
	}
	t.Logf("%d connections reported", len(reports))
	require.NoError(t, held.Release(ctx))
	require.NoError(t, semHeld.Release(ctx))
	require.NoError(t, queued.Release(ctx))
}
