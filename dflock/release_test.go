package dflock

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A Release waiting for an answer that does not come stops waiting when
// Close begins, with an error matching ErrClosed, although its own ctx has
// not ended; Close waits for the answer's handling (here: the connection it
// closes). Release selects on ctx and the Client's lifetime rather than
// merging them into one context.
func TestReleaseWaitingForAnAnswerEndsWithClose(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	c, err := New([]string{px.Addr()})
	require.NoError(t, err)
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)

	px.Blackhole(true)
	released := make(chan error, 1)
	go func() { released <- l.Release(ctx) }()
	// Release has untracked the lease: it is past the Client's entry
	// check, so Close finds it in progress.
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("Release did not untrack the lease")
	}
	require.ErrorIs(t, l.Err(), ErrReleased)
	closed := make(chan struct{})
	go func() {
		_ = c.Close()
		close(closed)
	}()
	select {
	case err := <-released:
		assert.ErrorIs(t, err, ErrClosed)
		assert.NoError(t, ctx.Err())
	case <-ctx.Done():
		t.Fatal("Release still waiting after Close began")
	}
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("Close did not return")
	}
}
