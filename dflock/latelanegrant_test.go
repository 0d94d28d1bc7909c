package dflock

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A lane grant that came long after the acquire was handed to the pool (its
// lane connection took longer to dial than the lease lasts) started on the
// server when the request arrived, not when it was handed over: the lease is
// confirmed by a renewal at once rather than declared lost by the client's
// clock and released.
func TestLaneGrantAfterSlowDialIsNotLostByTheClock(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	var slow atomic.Bool
	slow.Store(true)
	var d net.Dialer
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if slow.Load() {
			select { // the lane's dials outlast the lease
			case <-time.After(1500 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return d.DialContext(ctx, network, addr)
	}
	c := newClient(t, addrsOf(srv), WithDialer(dial))
	ctx := testCtx(t)

	l, err := c.Lock(ctx, "k", LeaseTTL(time.Second))
	require.NoError(t, err)
	slow.Store(false)
	renewed := c.renewStats().Renewed
	require.NoError(t, l.Err(), "the lease was declared lost on arrival")
	// The next renewal, due half a TTL after the confirmation, keeps it.
	awaitRenewals(t, ctx, c, 1, l.Done())
	require.NoError(t, l.Err())
	assert.Greater(t, c.renewStats().Renewed, renewed)
	assert.True(t, lockHeld(srv, "k"))
	assert.Zero(t, c.Snapshot().Lost)
	require.NoError(t, l.Release(ctx))
}
