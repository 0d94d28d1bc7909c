package dflock

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Cancel repeats its outcome, as Release does: a ticket granted at enqueue
// whose lease was lost meanwhile reports the loss on every Cancel, not only
// the first (it was nil from the second on), and after Close too (found by
// review: nil, though Close had not given this ticket up).
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
	again := tk.Cancel()
	require.ErrorIs(t, again, ErrLockLost)
	assert.Equal(t, first.Error(), again.Error())
	require.NoError(t, c.Close())
	again = tk.Cancel()
	require.ErrorIs(t, again, ErrLockLost, "a Cancel after Close forgot the outcome of the release the first Cancel made")
	assert.Equal(t, first.Error(), again.Error())
}
