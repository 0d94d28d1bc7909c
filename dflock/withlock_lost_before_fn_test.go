package dflock

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A WithLock whose lease is lost before its function begins (a grant read
// just before its connection broke) runs the function with its ctx
// already cancelled by the loss: the lease Context's AfterFunc runs on a
// goroutine of its own, which could come after the function had begun.
func TestWithLockFunctionStartsCancelledUnderALostLease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	srv.DropConnections() // the lane connection that owns the lease
	<-l.Done()
	require.ErrorIs(t, l.Err(), ErrLockLost)

	for range 100 { // the AfterFunc's goroutine, when it comes first, hides the gap
		var atStart error
		err = runHeld(ctx, l.h, func(fctx context.Context) error {
			atStart = context.Cause(fctx)
			return nil
		})
		require.ErrorIs(t, atStart, ErrLockLost, "fn began with a live ctx under a lost lease")
		assert.ErrorIs(t, err, ErrLockLost)
	}
}
