package testutil

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"
)

// RunProcess is the body of a server running in a process of its own
// (testutil/cmd/dflockd-test, or a test binary that re-executes itself), so
// that a benchmark can measure the client's CPU time apart from the
// server's. It parses args, starts a Server, writes its address and a
// newline to stdout, and serves until ctx ends or — with -exit-on-eof —
// stdin reaches end of file, which is what a parent that dies or closes
// the pipe causes. It closes the Server before it returns. With
// -exit-on-eof, a goroutine reading stdin remains after it returns until
// stdin ends (a read cannot be interrupted portably): RunProcess is meant
// for a process's main, which exits.
//
// Flags: -addr (default 127.0.0.1:0), -version (1.16, 1.10 or 2.1),
// -reply-per-write (Config.ReplyPerWrite), -max-locks (Config.MaxLocks,
// negative = unlimited), -exit-on-eof, -latency (serve through a Proxy
// that delays every chunk by this much each way, up to 1s: a network's
// round trip on loopback, preserving order and pipelining). With -latency
// the Proxy listens on -addr and the Server on a random loopback port
// behind it; the printed address is always the one to connect to.
//
// RunProcess prints no usage; RunProcessWithStderr does.
func RunProcess(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	return RunProcessWithStderr(ctx, args, stdin, stdout, io.Discard)
}

// RunProcessWithStderr is RunProcess, writing the flag list to stderr when
// args ask for help (-h or -help; it then returns an error wrapping
// flag.ErrHelp, which a main should treat as success) or are wrong (it then
// returns the error, for the caller to print). It writes nothing else to
// stderr.
func RunProcessWithStderr(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dflockd-test", flag.ContinueOnError)
	// Parse prints nothing (the caller prints the error); usage does.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	usage := func(err error) error {
		fmt.Fprintln(stderr, "Usage: dflockd-test [flags]")
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		return err
	}
	var cfg Config
	var version string
	var exitOnEOF bool
	var latency time.Duration
	fs.StringVar(&cfg.Addr, "addr", "127.0.0.1:0", "listen address (with -latency, the latency proxy's)")
	fs.StringVar(&version, "version", "1.16", "dflockd version to imitate: 1.16, 1.10 or 2.1")
	fs.BoolVar(&cfg.ReplyPerWrite, "reply-per-write", false, "write every reply on its own, as dflockd does")
	fs.IntVar(&cfg.MaxLocks, "max-locks", DefaultMaxLocks, "distinct keys; negative = unlimited")
	fs.BoolVar(&exitOnEOF, "exit-on-eof", false, "exit when stdin reaches end of file")
	fs.DurationVar(&latency, "latency", 0, "serve through a Proxy on -addr that delays every chunk by this much each way (a network's round trip on loopback), up to 1s")
	if err := fs.Parse(args); err != nil {
		return usage(fmt.Errorf("testutil: %w", err))
	}
	if fs.NArg() > 0 {
		return usage(fmt.Errorf("testutil: unexpected argument %q", fs.Arg(0)))
	}
	switch version {
	case "1.16":
		cfg.Version = V1_16
	case "1.10":
		cfg.Version = V1_10
	case "2.1":
		cfg.Version = V2_1
	default:
		return usage(fmt.Errorf("testutil: -version %q: want 1.16, 1.10 or 2.1", version))
	}
	if cfg.MaxLocks == 0 {
		return usage(errors.New("testutil: -max-locks 0: want a positive cap or a negative one for none"))
	}
	if latency < 0 || latency > time.Second {
		return usage(fmt.Errorf("testutil: -latency %v: want between 0 and 1s", latency))
	}
	listen := cfg.Addr
	if latency > 0 {
		cfg.Addr = "127.0.0.1:0" // behind the proxy, which listens on -addr
	}
	srv, err := Start(cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	addr := srv.Addr()
	if latency > 0 {
		px, err := listenProxy(listen, addr)
		if err != nil {
			return fmt.Errorf("testutil: listen: %w", err)
		}
		defer px.Close()
		px.SetLatency(latency)
		addr = px.Addr()
	}
	if _, err := fmt.Fprintln(stdout, addr); err != nil {
		return fmt.Errorf("testutil: announce the address: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if exitOnEOF {
		// Returns when stdin ends; a stdin that never ends is left to the
		// process exit (a read cannot be interrupted portably).
		go func() {
			_, _ = io.Copy(io.Discard, stdin)
			cancel()
		}()
	}
	<-ctx.Done()
	return nil
}
