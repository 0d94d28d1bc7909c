package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A process frozen or starved of CPU past its lock's life resumes with the
// renewal scheduler's round still to come (its timer, its goroutine).
// The check the package doc recommends before acting on the lock — Err,
// Done, the Context — must already say "lost": the server may have given
// the lock to someone else meanwhile.
//
// Deterministic: the check runs in a timer of the shared ManualClock that
// falls due before the scheduler's own, so the clock has already passed
// the loss deadline while the scheduler has not been poked.
func TestLockPastItsLossDeadlineReportsTheLossToTheFirstCheck(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Clock: clk})
	c := newClient(t, addrsOf(srv), withClock(clk))
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "k", LeaseTTL(2*time.Second)) // loss deadline 1.8 s after the acquire was sent
	require.NoError(t, err)
	lctx := l.Context()

	type seen struct {
		err, ctxErr, cause error
		done               bool
	}
	res := make(chan seen, 1)
	clk.AfterFunc(time.Nanosecond, func() { // due before the scheduler's renewal timer
		s := seen{err: l.Err(), ctxErr: lctx.Err(), cause: context.Cause(lctx)}
		select {
		case <-l.Done():
			s.done = true
		default:
		}
		res <- s
	})
	clk.Advance(3 * time.Second) // frozen past the lease's life
	r := <-res
	require.ErrorIs(t, r.err, ErrLockLost, "Err right after the freeze")
	assert.ErrorIs(t, r.ctxErr, context.Canceled, "Context().Err right after the freeze")
	assert.Same(t, r.err, r.cause, "context.Cause")
	assert.True(t, r.done, "Done open right after the freeze")
	require.True(t, waitFor(ctx, testTimeout, func() bool { return c.Snapshot().Lost == 1 }), "loss not counted")
	err = l.Renew(ctx)
	assert.ErrorIs(t, err, ErrLockLost, "Renew")
	assert.Equal(t, int64(1), c.Snapshot().Lost, "losses counted")
}
