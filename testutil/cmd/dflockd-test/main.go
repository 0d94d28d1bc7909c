// Command dflockd-test runs the testutil server in a process of its own, for
// benchmarks that must measure a client's CPU time apart from the server's,
// or that pin the server to other CPUs than the client (taskset). It prints
// the address it listens on and serves until SIGINT or SIGTERM (or, with
// -exit-on-eof, until its stdin ends). -h lists the flags.
//
//	go run ./testutil/cmd/dflockd-test -addr 127.0.0.1:6388 -reply-per-write -max-locks -1
//
// It is test infrastructure, not a dflockd replacement: state lives in
// memory and the defaults are dflockd's.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/dflock-sdk/go/testutil"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := testutil.RunProcessWithStderr(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp): // -h: the flag list is printed
	case err != nil:
		fmt.Fprintln(os.Stderr, "dflockd-test:", err)
		os.Exit(2)
	}
}
