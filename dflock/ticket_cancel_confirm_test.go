package dflock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A Wait whose grant came for a place queued longer than a quarter of its
// lease confirms it with a renewal before holding it. A Cancel during that
// round trip ends the Wait (as Ticket.Cancel documents) and the slot goes
// back to the server: nothing is held by nobody.
func TestTicketCancelDuringConfirmingRenewalReleasesTheGrant(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	holder := newClient(t, addrsOf(srv))
	c := newClient(t, []string{px.Addr()})
	ctx := testCtx(t)
	a, err := holder.Semaphore(ctx, "s", 2)
	require.NoError(t, err)
	b, err := holder.Semaphore(ctx, "s", 2)
	require.NoError(t, err)
	tk, err := c.EnqueueSemaphore(ctx, "s", 2, LeaseTTL(4*time.Second))
	require.NoError(t, err)
	require.False(t, tk.Acquired())
	require.NoError(t, a.Release(ctx))  // the place is granted while nobody waits
	time.Sleep(1200 * time.Millisecond) // queued longer than a quarter of the lease
	px.SetLatency(300 * time.Millisecond)
	sn0 := srv.Stats().Requests["sn"]
	type result struct {
		s   *Semaphore
		err error
	}
	ch := make(chan result, 1)
	go func() { s, err := tk.Wait(ctx); ch <- result{s, err} }()
	awaitRequests(t, ctx, srv, "sn", sn0+1) // the grant was read; its confirming renewal is under way
	require.NoError(t, tk.Cancel())
	r := <-ch
	px.SetLatency(0)
	if r.s != nil {
		// Cancel came after the Wait held the grant (a slow machine):
		// then it is the caller's, as documented.
		require.NoError(t, r.err)
		require.NoError(t, r.s.Release(ctx))
	} else {
		require.ErrorIs(t, r.err, ErrNotAcquired)
	}
	require.Eventually(t, func() bool { return semHolders(srv, "s") == 1 }, 10*time.Second, 10*time.Millisecond,
		"only the holder's remaining slot is held")
	st, err := c.Stats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Client.Held)
	require.NoError(t, b.Release(ctx))
	require.Equal(t, 0, semHolders(srv, "s"))
}
