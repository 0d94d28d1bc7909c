package dflock

import (
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/shard"
)

// A package that assigns to the shard.Ring variable (to "tune" it, say)
// does not move the keys of Clients that use the default placement: two
// processes placing keys differently hold two locks for one key (review
// "low": 567 of 1,000 keys moved; nil made New panic). Not parallel: it
// assigns a package variable.
func TestDefaultPlacementDoesNotReadTheShardRingVariable(t *testing.T) {
	servers := []string{"10.0.0.1:6388", "10.0.0.2:6388", "10.0.0.3:6388"}
	want, err := shard.RingWithVirtualNodes(shard.DefaultVirtualNodes).Place(servers)
	require.NoError(t, err)
	saved := shard.Ring
	t.Cleanup(func() { shard.Ring = saved })
	for _, r := range []shard.Strategy{shard.RingWithVirtualNodes(160), nil} {
		shard.Ring = r
		var c *Client
		require.NotPanics(t, func() { c, err = New(servers) })
		require.NoError(t, err)
		for i := range 1000 {
			k := "k" + strconv.Itoa(i)
			require.Equal(t, servers[want.Server(k)], c.ServerFor(k), "key %s", k)
		}
		require.NoError(t, c.Close())
	}
}
