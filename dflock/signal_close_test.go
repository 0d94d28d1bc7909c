package dflock

import (
	"context"
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
