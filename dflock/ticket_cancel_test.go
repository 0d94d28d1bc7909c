package dflock

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Cancel repeats its outcome, as Release does: a ticket granted at enqueue
// whose lease was lost meanwhile reports the loss on every Cancel, not only
// the first.
func TestRepeatedCancelOfAGrantedTicketRepeatsItsOutcome(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	tk, err := c.Enqueue(ctx, "k")
	require.NoError(t, err)
	require.True(t, tk.Acquired())
	srv.DropConnections() // the lease is lost with its connection
	first := tk.Cancel()
	require.ErrorIs(t, first, ErrLockLost)
	for range 2 {
		again := tk.Cancel()
		require.ErrorIs(t, again, ErrLockLost)
		assert.Equal(t, first.Error(), again.Error())
	}
}

// After Close too, as Release's does (found by review: nil, though Close
// had not given this ticket up: the first Cancel had released it).
func TestRepeatedCancelAfterCloseRepeatsItsOutcome(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	tk, err := c.Enqueue(ctx, "k")
	require.NoError(t, err)
	require.True(t, tk.Acquired())
	srv.DropConnections() // the lease is lost with its connection
	first := tk.Cancel()
	require.ErrorIs(t, first, ErrLockLost)
	require.NoError(t, c.Close())
	again := tk.Cancel()
	require.ErrorIs(t, again, ErrLockLost, "a Cancel after Close forgot the outcome of the release the first Cancel made")
}
