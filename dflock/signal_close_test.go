package dflock

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Listen calls whose listener connection is being dialled when the Client
// closes (the server is stalled, so the dial's handshake waits) fail with an
// error matching ErrClosed, as every other call in flight does — not with
// the cancelled dial's "context canceled", which the listener can hand them
// before Close's cancellation reaches their own context (found by review).
func TestListenWhoseDialCloseCutsIsErrClosed(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c, err := New(addrsOf(srv))
	require.NoError(t, err)
	ctx := testCtx(t)
	resume := srv.Stall(0)
	defer resume()
	const n = 16
	errs := make(chan error, n)
	for i := range n {
		go func() { _, err := c.Listen(ctx, "e.>", Group("g"+strconv.Itoa(i))); errs <- err }()
	}
	time.Sleep(200 * time.Millisecond)
	require.NoError(t, c.Close())
	for range n {
		select {
		case err := <-errs:
			require.ErrorIs(t, err, ErrClosed)
			require.NotErrorIs(t, err, context.Canceled, "the caller's ctx was not cancelled")
		case <-time.After(5 * time.Second):
			t.Fatal("a Listen in flight did not return after Client.Close")
		}
	}
	resume()
}

// A Next called while Close waits for a stalled server's releases fails
// with ErrClosed at once, as Close's doc says every call made after it
// does: the subscriptions close beside the releases, not after their
// deadline (found by review "shut": it waited up to DefaultReleaseTimeout).
func TestNextDuringClosesReleaseWaitIsErrClosed(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	logs := &syncBuffer{}
	c, err := New(addrsOf(srv), WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	require.NoError(t, err)
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "ch")
	require.NoError(t, err)
	_, err = c.Lock(ctx, "k")
	require.NoError(t, err)
	resume := srv.Stall(0) // the release goes unanswered until Close's deadline
	defer resume()
	closed := make(chan struct{})
	go func() { _ = c.Close(); close(closed) }()
	require.Eventually(t, c.closing.Load, 5*time.Second, time.Millisecond)
	_, err = sub.Next(ctx)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, err, ErrSubscriptionClosed)
	// Close logs the unanswered release at its deadline.
	require.NotContains(t, logs.String(), "releases unanswered", "Next waited for Close's release deadline")
	<-closed
	require.Contains(t, logs.String(), "releases unanswered") // the stall did hold the release up
}
