package pool

import (
	"errors"
	"testing"
	"time"

	"github.com/dflock-sdk/go/testutil"
)

// processCPU is the user+system CPU time of this process so far.
func processCPU(tb testing.TB) time.Duration {
	d, err := testutil.ProcessCPU()
	if errors.Is(err, errors.ErrUnsupported) {
		tb.Skip(err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return d
}
