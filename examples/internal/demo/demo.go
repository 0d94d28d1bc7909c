// Package demo gives the example programs their servers: the comma-separated
// addresses in DFLOCK_SERVERS when it is set, otherwise in-process dflockd
// servers (package testutil) on random loopback ports, so every example runs
// with nothing installed.
package demo

import (
	"fmt"
	"os"
	"strings"

	"github.com/dflock-sdk/go/testutil"
)

// Servers returns the addresses to use and a function that stops whatever
// Servers started. n is how many embedded servers to start when
// DFLOCK_SERVERS is unset.
func Servers(n int) (addrs []string, stop func(), err error) {
	if env := strings.TrimSpace(os.Getenv("DFLOCK_SERVERS")); env != "" {
		for _, a := range strings.Split(env, ",") {
			if a = strings.TrimSpace(a); a != "" {
				addrs = append(addrs, a)
			}
		}
		fmt.Printf("using DFLOCK_SERVERS: %s\n", strings.Join(addrs, ", "))
		return addrs, func() {}, nil
	}
	var started []*testutil.Server
	stop = func() {
		for _, s := range started {
			_ = s.Close()
		}
	}
	for range n {
		s, err := testutil.Start(testutil.Config{})
		if err != nil {
			stop()
			return nil, nil, fmt.Errorf("starting embedded server: %w", err)
		}
		started = append(started, s)
		addrs = append(addrs, s.Addr())
	}
	fmt.Printf("DFLOCK_SERVERS is unset: started %d embedded dflockd server(s) at %s\n", n, strings.Join(addrs, ", "))
	return addrs, stop, nil
}
