package dflock

import (
	"errors"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// dflockd v1.15+ answers a blocking l/sl with error_lease_expired when the
// slot it granted lapsed before the waiter observed it (PROTOCOL §6.2,
// "rare race"): the caller did not get the lock. ErrNotAcquired's doc:
// "did I get it?" needs only this one check — and a ticket's Wait that
// meets the same answer does match it. Lock and Semaphore do not.
func TestBlockingAcquireAnsweredLeaseExpiredIsNotAcquired(t *testing.T) {
	t.Parallel()
	addr := testutil.ServeRequests(t, func(nc net.Conn, req [3]string) bool {
		var reply string
		switch req[0] {
		case "ping":
			reply = "ok\n"
		case "l", "sl":
			if req[2][0] == '0' {
				reply = "timeout\n" // the lane try: held
			} else {
				reply = "error_lease_expired\n"
			}
		case "e", "se":
			reply = "queued\n"
		case "w", "sw":
			reply = "error_lease_expired\n"
		default:
			reply = "error\n"
		}
		_, err := nc.Write([]byte(reply))
		return err == nil
	})
	c := newClient(t, []string{addr})
	ctx := testCtx(t)

	_, lerr := c.Lock(ctx, "k")
	_, serr := c.Semaphore(ctx, "s", 2)
	tk, err := c.Enqueue(ctx, "t")
	require.NoError(t, err)
	_, werr := tk.Wait(ctx)
	t.Logf("Lock: %v\nSemaphore: %v\nTicket.Wait: %v", lerr, serr, werr)
	for name, err := range map[string]error{"Lock": lerr, "Semaphore": serr, "Ticket.Wait": werr} {
		require.ErrorIs(t, err, ErrLeaseExpired, name)
		assert.True(t, errors.Is(err, ErrNotAcquired), "%s answered error_lease_expired does not match ErrNotAcquired", name)
	}
}
