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

// earlyWaitBudget is how long the spin tests let one blocking call run.
// The server-side wait each request asks for is at least a second, so a
// well-behaved client sends at most a couple of requests in this time.
const earlyWaitBudget = 300 * time.Millisecond

// A server that answers a blocking `l k <secs>` with `timeout` long before
// <secs> have passed (a broken or hostile server, or a middlebox speaking
// for it) gets the wait re-issued a few times at once, then at a growing
// pause: not a tight request loop lasting as long as the caller's ctx.
func TestEarlyLockTimeoutIsNotReissuedInATightLoop(t *testing.T) {
	t.Parallel()
	var locks atomic.Int64
	addr := testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
		out := "ok"
		if f[0] == "l" {
			locks.Add(1)
			out = "timeout" // held, and (wrongly) at once even for a blocking wait
		}
		_, err := nc.Write([]byte(out + "\n"))
		return err == nil
	})
	c := newClient(t, []string{addr})
	ctx, cancel := context.WithTimeout(testCtx(t), earlyWaitBudget)
	defer cancel()
	_, err := c.Lock(ctx, "a")
	require.ErrorIs(t, err, ErrTimeout)
	// One lane try, one blocking wait asking for at least a second; a few
	// more at most for a client that paces re-issues.
	assert.LessOrEqual(t, locks.Load(), int64(10),
		"Lock re-issued a blocking wait the server ended early %d times in %v", locks.Load(), earlyWaitBudget)
}

// The same for a two-phase Wait, whose `w k <secs>` answered `timeout` is
// followed by `e` and another `w`.
func TestEarlyTicketTimeoutIsNotReissuedInATightLoop(t *testing.T) {
	t.Parallel()
	var waits atomic.Int64
	addr := testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
		out := "ok"
		switch f[0] {
		case "e":
			out = "queued"
		case "w":
			waits.Add(1)
			out = "timeout"
		}
		_, err := nc.Write([]byte(out + "\n"))
		return err == nil
	})
	c := newClient(t, []string{addr})
	ctx, cancel := context.WithTimeout(testCtx(t), earlyWaitBudget)
	defer cancel()
	tk, err := c.Enqueue(ctx, "a")
	require.NoError(t, err)
	_, err = tk.Wait(ctx)
	require.ErrorIs(t, err, ErrNotAcquired)
	assert.LessOrEqual(t, waits.Load(), int64(10),
		"Ticket.Wait re-issued a wait the server ended early %d times in %v", waits.Load(), earlyWaitBudget)
}
