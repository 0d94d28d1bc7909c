package dflockotel

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// A Client whose token the server refuses sees server.up stay 1 (the
// server answers), and since the pool holds refused dials back, the
// dial-failure counter grows by a few a second however often calls fail:
// neither says that every call fails. dflock.client.server.auth_refused
// does: 1 if any observed Client is refused, else 0.
func TestAuthRefusedGauge(t *testing.T) {
	srv := testutil.NewServer(t, testutil.Config{AuthToken: "right"})
	in, h := newMetered(t)
	ctx := testCtx(t)
	refused := func() int64 {
		t.Helper()
		v, ok := intValue(h.collect(t), "dflock.client.server.auth_refused", serverKVs(t, srv.Addr())...)
		require.True(t, ok, "no single auth_refused point for the server")
		return v
	}

	good, err := dflock.New([]string{srv.Addr()}, append(in.Options(), dflock.WithAuthToken("right"))...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = good.Close() })
	stop, err := in.Observe(good)
	require.NoError(t, err)
	t.Cleanup(stop)
	l, err := good.TryLock(ctx, "a")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
	assert.EqualValues(t, 0, refused())

	bad, err := dflock.New([]string{srv.Addr()}, append(in.Options(), dflock.WithAuthToken("wrong"))...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = bad.Close() })
	stop, err = in.Observe(bad)
	require.NoError(t, err)
	_, err = bad.TryLock(ctx, "b")
	require.ErrorIs(t, err, dflock.ErrAuth)
	assert.EqualValues(t, 1, refused(), "a Client whose token is refused")
	up, ok := intValue(h.collect(t), "dflock.client.server.up", serverKVs(t, srv.Addr())...)
	require.True(t, ok)
	assert.EqualValues(t, 1, up, "the refusing server is up")

	stop()
	assert.EqualValues(t, 0, refused(), "the refused Client is no longer observed")
}
