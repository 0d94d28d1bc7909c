//go:build !unix

package dflock

import (
	"testing"
	"time"
)

// processCPU: the CPU figures need getrusage.
func processCPU(tb testing.TB) time.Duration {
	tb.Skip("process CPU time is measured with getrusage (unix only)")
	return 0
}
