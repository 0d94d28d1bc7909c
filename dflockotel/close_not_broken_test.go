package dflockotel

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A graceful Close reports every open connection to OnConnBroken (the error
// matches ErrClosed), but dflock.client.connection.broken, the figure to
// alert on, does not count them: every deploy would look like a burst of
// broken connections (found by review).
func TestGracefulCloseBreaksNoConnection(t *testing.T) {
	h := newHarness(t, nil)
	ctx := testCtx(t)
	srv := serverKVs(t, h.srv.Addr())
	l, err := h.c.TryLock(ctx, "k")
	require.NoError(t, err)
	tk, err := h.c.Enqueue(ctx, "k") // a queued ticket: a wait-pool connection
	require.NoError(t, err)
	_ = tk
	require.NoError(t, l.Release(ctx))

	before, _ := intValue(h.collect(t), "dflock.client.connection.broken", srv...)
	require.NoError(t, h.c.Close())
	after, _ := intValue(h.collect(t), "dflock.client.connection.broken", srv...)
	t.Logf("connection.broken: %d before Close, %d after", before, after)
	assert.Equal(t, before, after, "a graceful Close counted as broken connections")
}
