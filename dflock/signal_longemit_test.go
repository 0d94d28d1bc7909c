package dflock

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Concurrent long Emits against a server without long signal lines (v1.10,
// v2.x, and v1.11–v1.14) share one pipelined connection, which the server
// closes after the first over-long line. Every one of them must still fail
// with ErrNotSupported (the documented answer), not with a broken-connection
// error that a caller would take as transient and retry.
func TestConcurrentLongEmitsToAServerWithoutLongLinesAreNotSupported(t *testing.T) {
	t.Parallel()
	for _, v := range []testutil.Version{testutil.V1_10, testutil.V2_1} {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{Version: v})
			c := newClient(t, addrsOf(srv))
			ctx := testCtx(t)
			payload := strings.Repeat("x", 1000)
			for round := 0; round < 20; round++ {
				const n = 8
				errs := make([]error, n)
				var wg sync.WaitGroup
				for i := range n {
					wg.Go(func() { _, errs[i] = c.Emit(ctx, "a.b", payload) })
				}
				wg.Wait()
				for i, err := range errs {
					require.ErrorIs(t, err, ErrNotSupported, "round %d emit %d: %v", round, i, err)
				}
			}
		})
	}
}
