package dflock

import (
	"errors"
	"net"
	"testing"
	"time"

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
	addr := heldKeyServer(t, func() string { return "error_lease_expired" },
		map[string]string{"e": "queued", "se": "queued", "w": "error_lease_expired", "sw": "error_lease_expired"})
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

// heldKeyServer is a scripted server on which every key is held: a lane try
// (l/sl with timeout 0) answers timeout, a blocking l/sl gets blocking()'s
// answer, ping ok, and every other command its answer in replies, or the
// bare error.
func heldKeyServer(t *testing.T, blocking func() string, replies map[string]string) string {
	return testutil.ServeRequests(t, func(nc net.Conn, req [3]string) bool {
		reply, ok := replies[req[0]]
		switch {
		case req[0] == "ping":
			reply = "ok"
		case req[0] == "l" || req[0] == "sl":
			if req[2][0] == '0' {
				reply = "timeout" // the lane try: held
			} else {
				reply = blocking()
			}
		case !ok:
			reply = "error"
		}
		_, err := nc.Write([]byte(reply + "\n"))
		return err == nil
	})
}

// A grant that ends a wait longer than a quarter of its lease is confirmed
// by a renewal at once (confirmLateGrant). If that renewal is refused — the
// 1 s lease lapsed on the server before the renewal reached it (`error`,
// PROTOCOL §6.5) — the caller did not get the lock: the error matches
// ErrNotAcquired. A server shutting down answers the renewal
// error_draining: that is ErrDraining, not a lapsed lease (found by review:
// the error was a bare ErrLeaseExpired in both cases).
func TestLateGrantRefusedConfirmationIsNotAcquired(t *testing.T) {
	for _, tc := range []struct {
		renewReply string
		want       error
	}{
		{"error", ErrNotAcquired},
		{"error_draining", ErrDraining},
	} {
		t.Run(tc.renewReply, func(t *testing.T) {
			t.Parallel()
			addr := heldKeyServer(t, func() string {
				time.Sleep(400 * time.Millisecond) // the holder releases later
				return "ok tok1 1"
			}, map[string]string{"n": tc.renewReply, "sn": tc.renewReply})
			c := newClient(t, []string{addr})
			ctx := testCtx(t)
			_, lerr := c.Lock(ctx, "k", LeaseTTL(time.Second))
			_, serr := c.Semaphore(ctx, "s", 2, LeaseTTL(time.Second))
			t.Logf("Lock: %v\nSemaphore: %v", lerr, serr)
			for name, err := range map[string]error{"Lock": lerr, "Semaphore": serr} {
				require.Error(t, err, name)
				assert.True(t, errors.Is(err, tc.want), "%s: %v does not match %v", name, err, tc.want)
			}
		})
	}
}
