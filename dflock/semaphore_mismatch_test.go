package dflock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A limit mismatch refused on every acquire path — the lane try, a
// wait-pool connection, a ticket — is ErrLimitMismatch naming the call,
// and holds nothing on the server or in either client; the slot that is
// held stays renewable and releasable.
func TestSemaphoreLimitMismatchOnEveryPathHoldsNothing(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	waiter := newClient(t, addrsOf(srv), withoutLaneFastPath()) // acquires on the wait pool only
	ctx := testCtx(t)
	s, err := c.Semaphore(ctx, "slots", 1)
	require.NoError(t, err)

	cases := []struct {
		op      string
		c       *Client
		acquire func(c *Client) error
	}{
		{"semaphore", c, func(c *Client) error {
			_, err := c.Semaphore(ctx, "slots", 2, AcquireTimeout(2*time.Second))
			return err
		}},
		{"semaphore", waiter, func(c *Client) error {
			_, err := c.Semaphore(ctx, "slots", 2, AcquireTimeout(2*time.Second))
			return err
		}},
		{"trysemaphore", c, func(c *Client) error {
			_, err := c.TrySemaphore(ctx, "slots", 3)
			return err
		}},
		{"enqueue semaphore", c, func(c *Client) error {
			_, err := c.EnqueueSemaphore(ctx, "slots", 4)
			return err
		}},
	}
	// Twice each: a refused acquire must not have left a waiter, a place
	// or a half-read connection behind.
	for range 2 {
		for _, tc := range cases {
			err := tc.acquire(tc.c)
			require.ErrorIs(t, err, ErrLimitMismatch, tc.op)
			var e *Error
			require.ErrorAs(t, err, &e, tc.op)
			assert.Equal(t, tc.op, e.Op)
		}
	}
	assert.Equal(t, 1, semHolders(srv, "slots"))
	assert.Equal(t, 1, c.Snapshot().Held, "a refused acquire counted as held")
	assert.Zero(t, waiter.Snapshot().Held, "a refused acquire counted as held")
	require.NoError(t, s.Renew(ctx))
	require.NoError(t, s.Release(ctx))
	require.True(t, waitFor(ctx, testTimeout, func() bool { return semHolders(srv, "slots") == 0 }), "slot still held")
	s2, err := waiter.Semaphore(ctx, "slots", 1)
	require.NoError(t, err, "the key is free again, with its limit")
	require.NoError(t, s2.Release(ctx))
}
