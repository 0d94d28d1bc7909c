package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A blocking wait whose deadline passes with a grant on its way, on a
// server with auto-release off: the server's own timeout (the time that was
// left, rounded up) ends within a second, so the client keeps the
// connection, reads the answer in the background and releases the grant,
// instead of closing the connection, which would leave the lock held by
// nobody until its lease ran out. The grant is made 150 ms before the
// caller's deadline and takes 300 ms to arrive.
func TestBlockingWaitPastItsDeadlineReleasesAGrantOnItsWay(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"Lock", "Ticket.Wait"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv, px, holder, c := autoReleaseOffBehindProxy(t)
			ctx := testCtx(t)

			h, err := holder.Lock(ctx, "k")
			require.NoError(t, err)
			var tk *Ticket
			if name == "Ticket.Wait" {
				tk, err = c.Enqueue(ctx, "k")
				require.NoError(t, err)
			} else {
				// Found held (the key goes straight to the wait pool from
				// now on), with a wait-pool connection left idle in the
				// pool: its own wait timed out, read in the background.
				// (Long enough for the lane try under load: 10 ms could
				// end before the wait was sent, and no connection was
				// left idle; so, at two tests per CPU, could 200 ms. The
				// server's timeout is a second either way. Three tries:
				// under heavy load even 500 ms went to the lane once.)
				for try := 1; ; try++ {
					_, err = c.Lock(ctx, "k", AcquireTimeout(500*time.Millisecond))
					require.ErrorIs(t, err, ErrNotAcquired)
					given := false
					for end := time.Now().Add(2 * DefaultReleaseTimeout); !given && time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
						given = c.Snapshot().Servers[0].Conns.Idle == 1
					}
					if given {
						break
					}
					require.Less(t, try, 3, "the timed-out wait's connection was not given back")
				}
			}
			px.SetLatency(300 * time.Millisecond)
			deadline := time.Now().Add(1500 * time.Millisecond)
			wctx, cancel := context.WithDeadline(ctx, deadline)
			defer cancel()
			errc := blockedWait(t, ctx, wctx, srv, c, tk, "k")
			time.Sleep(time.Until(deadline.Add(-150 * time.Millisecond)))
			require.NoError(t, h.Release(ctx)) // granted to c's wait: the grant is in the proxy
			err = <-errc
			require.ErrorIs(t, err, ErrNotAcquired, "the grant arrived after the deadline")
			assert.Eventually(t, func() bool { return !lockHeld(srv, "k") }, 2*DefaultReleaseTimeout, 5*time.Millisecond,
				"the grant on its way when the deadline passed is held by nobody: %+v", srv.Stats())
		})
	}
}
