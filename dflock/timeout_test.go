package dflock

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Regression: an AcquireTimeout that ran out between the wait-pool
// connection arriving and the blocking request being sent failed with a
// bare context.DeadlineExceeded (waitSeconds saw the deadline passed before
// the context's own timer had closed Done), which matched neither ErrTimeout
// nor ErrNotAcquired. Tiny timeouts on a held key hit that window often.
func TestTinyAcquireTimeoutIsErrTimeout(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	c := newClient(t, []string{srv.Addr()})
	ctx := testCtx(t)
	held, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	defer held.Release(ctx)

	for i := range 300 {
		d := time.Duration(1+i%100) * 10 * time.Microsecond // 10 µs .. 1 ms
		l, err := c.Lock(ctx, "k", AcquireTimeout(d))
		require.Nil(t, l)
		require.Error(t, err)
		require.Truef(t, errors.Is(err, ErrTimeout) && errors.Is(err, ErrNotAcquired),
			"timeout %v: %v matches ErrTimeout %v, ErrNotAcquired %v", d, err,
			errors.Is(err, ErrTimeout), errors.Is(err, ErrNotAcquired))
	}
}
