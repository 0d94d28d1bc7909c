package dflock

import (
	"testing"
	"time"

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
	c, tk, _ := grantedTicketOnDroppedConn(t)
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

// A queued ticket whose place is granted while the server is paused, then
// cancelled: the withdrawal (`w key 0`) goes unanswered past
// DefaultReleaseTimeout, and the server, resumed, answers it with the
// grant. On a server with auto-release off that grant must still be
// released — read on the abandoned connection, which lingers for it —
// not held by nobody until its lease runs out (found by review: the
// connection was closed and the lock stayed held).
func TestCancelOfAPlaceGrantedOnAPausedServerReleasesTheGrant(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	h, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "k")
	require.NoError(t, err)
	require.False(t, tk.Acquired())
	require.NoError(t, h.Release(ctx)) // the place is granted to the ticket
	require.True(t, waitFor(ctx, testTimeout, func() bool { return lockHeld(srv, "k") }))

	resume := srv.Stall(0)
	t.Cleanup(resume)
	start := time.Now()
	require.NoError(t, tk.Cancel())
	require.GreaterOrEqual(t, time.Since(start), DefaultReleaseTimeout, "the withdrawal was not left unanswered")
	resume()
	require.True(t, waitFor(ctx, testTimeout, func() bool { return !lockHeld(srv, "k") }),
		"the grant the resumed server answered to the cancelled ticket is held by nobody")
}
