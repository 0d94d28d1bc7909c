//go:build !unix

package testutil

import (
	"errors"
	"fmt"
	"time"
)

// ProcessCPU is the user plus system CPU time the calling process has used
// so far; it needs getrusage (unix).
func ProcessCPU() (time.Duration, error) {
	return 0, fmt.Errorf("testutil: process CPU time: %w", errors.ErrUnsupported)
}
