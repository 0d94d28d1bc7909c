package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// steppedCtx is a context.WithDeadline(parent, wallTime) after the wall
// clock was stepped forward past its deadline (NTP, a resumed VM):
// Deadline, a wall time without a monotonic reading, has passed by
// time.Until, while Done, armed on the monotonic clock when the context
// was made, still has the time that was really left.
type steppedCtx struct{ context.Context }

func (steppedCtx) Deadline() (time.Time, bool) { return time.Now().Round(0).Add(-time.Minute), true }

// A Lock or Ticket.Wait whose deadline the wall clock has passed but whose
// ctx has not ended keeps waiting on the server until ctx ends. It used to
// wait for Done without being queued, and failed with ErrTimeout even when
// the key was released at once.
func TestWaitWithAWallClockPassedDeadlineStaysQueuedUntilCtxEnds(t *testing.T) {
	for _, how := range []string{"lock", "ticket"} {
		t.Run(how, func(t *testing.T) {
			srv := newServer(t, testutil.Config{})
			holder := newClient(t, []string{srv.Addr()})
			c := newClient(t, []string{srv.Addr()})
			ctx := testCtx(t)
			h, err := holder.Lock(ctx, "k")
			require.NoError(t, err)

			live, cancel := context.WithCancel(ctx)
			defer cancel()
			type result struct {
				l   *Lock
				err error
			}
			got := make(chan result, 1)
			go func() {
				var r result
				if how == "lock" {
					r.l, r.err = c.Lock(steppedCtx{live}, "k")
				} else {
					tk, err := c.Enqueue(ctx, "k")
					if err != nil {
						got <- result{err: err}
						return
					}
					r.l, r.err = tk.Wait(steppedCtx{live})
				}
				got <- r
			}()
			require.True(t, waitFor(ctx, 10*time.Second, func() bool { return lockWaiters(srv, "k") == 1 }),
				"the caller never queued on the server")
			require.NoError(t, h.Release(ctx))
			r := <-got
			require.NoError(t, r.err)
			require.NoError(t, r.l.Release(ctx))
		})
	}
}

// Such a wait still ends when ctx does, with ctx's error.
func TestWaitWithAWallClockPassedDeadlineEndsWithCtx(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	holder := newClient(t, []string{srv.Addr()})
	c := newClient(t, []string{srv.Addr()})
	ctx := testCtx(t)
	h, err := holder.Lock(ctx, "k")
	require.NoError(t, err)
	defer h.Release(ctx)

	live, cancel := context.WithCancel(ctx)
	got := make(chan error, 1)
	go func() {
		_, err := c.Lock(steppedCtx{live}, "k")
		got <- err
	}()
	require.True(t, waitFor(ctx, 10*time.Second, func() bool { return lockWaiters(srv, "k") == 1 }))
	cancel()
	err = <-got
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, err, ErrNotAcquired)
	require.True(t, waitFor(ctx, 10*time.Second, func() bool { return lockWaiters(srv, "k") == 0 }),
		"the withdrawn wait left a waiter on the server")
}
