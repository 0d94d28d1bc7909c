package dflock

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/shard"
	"github.com/dflock-sdk/go/testutil"
)

// countingStrategy is shard.Ring with every Server call counted: a custom
// Placement is user code.
type countingStrategy struct{ calls *atomic.Int64 }

func (s countingStrategy) Place(servers []string) (shard.Placement, error) {
	p, err := shard.Ring.Place(servers)
	if err != nil {
		return nil, err
	}
	return countingPlacement{p, s.calls}, nil
}

type countingPlacement struct {
	shard.Placement
	calls *atomic.Int64
}

func (p countingPlacement) Server(key string) int {
	p.calls.Add(1)
	return p.Placement.Server(key)
}

// Close releases what it holds without asking the Placement where each key
// lives (it knows each lease's server): user code must not run on a
// connection's reader, where Close's releases are answered — a slow or
// stuck Placement there would hold every reply behind it.
func TestCloseAsksThePlacementNothing(t *testing.T) {
	t.Parallel()
	a, b := newServer(t, testutil.Config{}), newServer(t, testutil.Config{})
	var calls atomic.Int64
	c, err := New(addrsOf(a, b), WithSharding(countingStrategy{&calls}))
	require.NoError(t, err)
	ctx := testCtx(t)
	for i := range 20 {
		_, err := c.TryLock(ctx, fmt.Sprint("k", i))
		require.NoError(t, err)
	}
	before := calls.Load()
	require.NoError(t, c.Close())
	assert.Equal(t, before, calls.Load(), "Placement.Server calls made by Close")
	assert.Zero(t, heldTotal(a)+heldTotal(b), "Close released everything")
	assert.Equal(t, int64(20), c.Snapshot().Released)
}
