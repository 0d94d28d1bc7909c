package dflockotel

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// dflock.client.server.up is a gauge, whose aggregation keeps the last
// observation of an attribute set in a collection: with two Clients of one
// server, one that reaches it and one that cannot, it once flipped between
// 1 and 0 from one collection to the next, as the Clients were observed in
// map order (found by review). The Clients' figures are combined: 1 if any
// has the server up.
func TestServerUpOfSeveralClientsIsOneIfAnyHasItUp(t *testing.T) {
	srv := testutil.NewServer(t, testutil.Config{})
	in, h := newMetered(t)
	ctx := testCtx(t)

	up, err := dflock.New([]string{srv.Addr()}, in.Options()...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = up.Close() })
	_, err = up.TryLock(ctx, "a")
	require.NoError(t, err)

	// The same server, through a dialer that cannot reach it (a Client on
	// a host behind a broken route).
	down, err := dflock.New([]string{srv.Addr()}, append(in.Options(),
		dflock.WithDialer(func(context.Context, string, string) (net.Conn, error) {
			return nil, errors.New("no route to host")
		}))...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = down.Close() })
	_, err = down.TryLock(ctx, "b")
	require.Error(t, err)
	require.False(t, down.Snapshot().Servers[0].Up)
	require.True(t, up.Snapshot().Servers[0].Up)

	for _, c := range []*dflock.Client{up, down} {
		stop, err := in.Observe(c)
		require.NoError(t, err)
		t.Cleanup(stop)
	}
	seen := map[int64]int{}
	for range 40 {
		v, ok := intValue(h.collect(t), "dflock.client.server.up", serverKVs(t, srv.Addr())...)
		require.True(t, ok)
		seen[v]++
	}
	t.Logf("dflock.client.server.up over 40 collections: %v", seen)
	assert.Len(t, seen, 1, "the gauge flips between collections with nothing changing")
	assert.Equal(t, 40, seen[1], "1 if any observed Client has the server up")
}
