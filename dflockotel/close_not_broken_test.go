package dflockotel

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/dflock"
)

// A graceful Close reports every open connection to OnConnBroken (the error
// matches ErrClosed), but dflock.client.connection.broken, the figure to
// alert on, does not count them: every deploy would look like a burst of
// broken connections (found by review). Nor does it count the connection
// of a Lock blocked in the server's queue, which Close interrupts by
// withdrawing the wait (found by a later review: one per waiter).
func TestGracefulCloseBreaksNoConnection(t *testing.T) {
	h := newHarness(t, nil)
	ctx := testCtx(t)
	srv := serverKVs(t, h.srv.Addr())
	l, err := h.c.TryLock(ctx, "k")
	require.NoError(t, err)
	tk, err := h.c.Enqueue(ctx, "k") // a queued ticket: a wait-pool connection
	require.NoError(t, err)
	_ = tk
	blocked := make(chan error, 1)
	go func() {
		_, err := h.c.Lock(ctx, "k")
		blocked <- err
	}()
	awaitWaiters(t, ctx, h.srv, "k", 2)
	require.NoError(t, l.Release(ctx)) // to the ticket; the Lock waits on

	before, _ := intValue(h.collect(t), "dflock.client.connection.broken", srv...)
	require.NoError(t, h.c.Close())
	require.ErrorIs(t, <-blocked, dflock.ErrClosed)
	after, _ := intValue(h.collect(t), "dflock.client.connection.broken", srv...)
	t.Logf("connection.broken: %d before Close, %d after", before, after)
	assert.Equal(t, before, after, "a graceful Close counted as broken connections")
}
