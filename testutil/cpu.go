package testutil

import (
	"errors"
	"testing"
	"time"
)

// ProcessCPUOrSkip is ProcessCPU for a benchmark: it skips tb where the
// figure cannot be had and fails it on any other error.
func ProcessCPUOrSkip(tb testing.TB) time.Duration {
	tb.Helper()
	d, err := ProcessCPU()
	if errors.Is(err, errors.ErrUnsupported) {
		tb.Skip(err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return d
}
