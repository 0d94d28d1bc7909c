//go:build unix

package testutil

import (
	"syscall"
	"time"
)

// ProcessCPU is the user plus system CPU time the calling process has used
// so far: what a benchmark reports as the client's CPU when the server
// runs in a process of its own (RunProcess). Off unix it returns an error
// matching errors.ErrUnsupported.
func ProcessCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
