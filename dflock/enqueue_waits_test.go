package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// An Enqueue blocked getting a wait-pool connection (the pool at
// WithMaxConnsPerServer) counts in ServerSnapshot.WaitsInFlight ("getting a
// wait-pool connection or waiting on one"), and no longer once it gave up
// (found by review: only Lock/Semaphore and Ticket.Wait were counted).
func TestEnqueueWaitingForAConnectionIsAWaitInFlight(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, []string{srv.Addr()}, WithMaxConnsPerServer(1))
	ctx := testCtx(t)

	held, err := c.Lock(ctx, "k") // on the lane
	require.NoError(t, err)
	defer func() { _ = held.Release(ctx) }()
	// A blocking Lock takes the only wait-pool connection and waits on it.
	lockCtx, cancelLock := context.WithCancel(ctx)
	defer cancelLock()
	go func() { _, _ = c.Lock(lockCtx, "k") }()
	require.Eventually(t, func() bool { return lockWaiters(srv, "k") == 1 }, testTimeout, time.Millisecond)
	require.Equal(t, 1, c.Snapshot().Servers[0].WaitsInFlight)

	// An Enqueue now waits for a wait-pool connection.
	enqCtx, cancelEnq := context.WithCancel(ctx)
	defer cancelEnq()
	enqDone := make(chan struct{})
	go func() {
		defer close(enqDone)
		if tk, err := c.Enqueue(enqCtx, "other"); err == nil {
			_ = tk.Cancel()
		}
	}()
	assert.Eventually(t, func() bool { return c.Snapshot().Servers[0].WaitsInFlight == 2 }, testTimeout, time.Millisecond,
		"an Enqueue getting a wait-pool connection is not counted")
	select {
	case <-enqDone:
		t.Fatal("Enqueue did not wait for a connection")
	default:
	}
	cancelEnq()
	<-enqDone
	assert.Equal(t, 1, c.Snapshot().Servers[0].WaitsInFlight, "the Enqueue that gave up is no longer counted")
}
