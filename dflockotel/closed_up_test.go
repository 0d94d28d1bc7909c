package dflockotel

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Observe's doc: "call stop before or after c.Close (a closed Client reports
// its last figures)". The last figure of dflock.client.server.up for a server
// that was up and answering is 1; after Close it turned to 0, as if every
// server of the fleet went down at each graceful shutdown (an alert on
// server.up == 0 fires), and dflock.Snapshot after Close reported Up false with a
// zero Since, which its doc gives only to "the failed dial that found it down"
// (found by review).
func TestServerUpStaysAfterClose(t *testing.T) {
	h := newHarness(t, nil)
	ctx := testCtx(t)
	srv := serverKVs(t, h.srv.Addr())
	l, err := h.c.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))

	up, ok := intValue(h.collect(t), "dflock.client.server.up", srv...)
	require.True(t, ok)
	require.EqualValues(t, 1, up, "up before Close")

	require.NoError(t, h.c.Close())
	s := h.c.Snapshot().Servers[0]
	t.Logf("Snapshot after Close: Up=%v Since=%v DialFailures=%d", s.Up, s.Since, s.DialFailures)
	up, ok = intValue(h.collect(t), "dflock.client.server.up", srv...)
	require.True(t, ok)
	assert.EqualValues(t, 1, up, "server.up after Close: the server never went down")
	assert.False(t, !s.Up && s.Since.IsZero(), "Snapshot after Close: down, since the zero time, with no failed dial")
}
