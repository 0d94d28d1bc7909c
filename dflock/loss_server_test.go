package dflock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/renew"
)

// In a multi-server Client, a lease lost because its server
// stopped answering reports an Err (and Context cause, and OnLeaseLost
// error) that says which server, as one lost to a broken connection does
// (through the pool's error), and whether it was a semaphore slot.
func TestLeaseLossNamesItsServer(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	_, pb, c := healthyAndProxied(t, WithLeaseTTL(2*time.Second))
	kb := keyOn(t, c, pb.Addr(), "b")
	l, err := c.Lock(ctx, kb)
	require.NoError(t, err)
	s, err := c.Semaphore(ctx, kb, 2)
	require.NoError(t, err)
	pb.Blackhole(true)
	defer pb.Blackhole(false)
	for i, h := range []interface {
		Done() <-chan struct{}
		Err() error
	}{l, s} {
		select {
		case <-h.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("no loss")
		}
		require.ErrorIs(t, h.Err(), ErrLockLost)
		assert.Contains(t, h.Err().Error(), pb.Addr(), "the loss of a lease on one of two servers does not name the server")
		var le *renew.LostError
		require.ErrorAs(t, h.Err(), &le)
		assert.Equal(t, pb.Addr(), le.Server)
		assert.Equal(t, i == 1, le.Semaphore)
		if i == 1 {
			assert.Contains(t, h.Err().Error(), "semaphore slot lost")
		}
	}
}
