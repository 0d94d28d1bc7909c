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

// A grant that ends a wait longer than a quarter of its lease is confirmed
// by a renewal at once (confirmLateGrant). If that renewal is refused — the
// 1 s lease lapsed on the server before the renewal reached it (`error`,
// PROTOCOL §6.5) — the caller did not get the lock: by ErrLeaseExpired's
// doc ("An acquire refused so also matches ErrNotAcquired") and
// ErrNotAcquired's ("did I get it?" needs only this one check) the error
// must match ErrNotAcquired. A server shutting down answers the renewal
// error_draining: that is ErrDraining, not a lapsed lease (found by review:
// the error was a bare ErrLeaseExpired in both cases).
func TestLateGrantRefusedConfirmationIsNotAcquired(t *testing.T) {
	for _, tc := range []struct {
		renewReply string
		want       error
	}{
		{"error\n", ErrNotAcquired},
		{"error_draining\n", ErrDraining},
	} {
		t.Run(tc.renewReply[:len(tc.renewReply)-1], func(t *testing.T) {
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
						time.Sleep(400 * time.Millisecond) // the holder releases later
						reply = "ok tok1 1\n"
					}
				case "n", "sn":
					reply = tc.renewReply
				case "r", "sr":
					reply = "error\n"
				default:
					reply = "error\n"
				}
				_, err := nc.Write([]byte(reply))
				return err == nil
			})
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
