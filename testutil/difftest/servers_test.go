package difftest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/dflock-sdk/go/testutil"
)

// serverFlags is one server configuration, expressed as dflockd's flags.
// Zero values mean dflockd's defaults.
type serverFlags struct {
	MaxLocks        int    // -max-locks (0: default 1024)
	MaxWaiters      int    // -max-waiters (0: unlimited)
	MaxConnections  int    // -max-connections (0: unlimited)
	DefaultLease    int    // -default-lease-ttl seconds (0: default 33)
	ReadTimeout     int    // -read-timeout seconds (0: default 23)
	SweepInterval   int    // -lease-sweep-interval seconds (0: default 1)
	GCInterval      int    // -gc-interval seconds (0: default 5)
	GCMaxIdle       int    // -gc-max-idle seconds (0: default 60)
	ShutdownTimeout int    // -shutdown-timeout seconds (0: default 30)
	NoAutoRelease   bool   // -auto-release-on-disconnect=false
	AuthToken       string // -auth-token
	ReplyPerWriteNo bool   // testutil only: leave Config.ReplyPerWrite off (dflockd writes every reply on its own)
}

func (f serverFlags) String() string {
	return fmt.Sprintf("max-locks=%d max-waiters=%d max-connections=%d default-lease-ttl=%d read-timeout=%d sweep=%d gc=%d/%d auto-release=%t auth-token=%q",
		f.MaxLocks, f.MaxWaiters, f.MaxConnections, f.DefaultLease, f.ReadTimeout, f.SweepInterval,
		f.GCInterval, f.GCMaxIdle, !f.NoAutoRelease, f.AuthToken)
}

// args are the dflockd command-line flags for f, listening on port.
func (f serverFlags) args(port int) []string {
	a := []string{"-host", "127.0.0.1", "-port", strconv.Itoa(port)}
	add := func(name string, v int) {
		if v != 0 {
			a = append(a, "-"+name, strconv.Itoa(v))
		}
	}
	add("max-locks", f.MaxLocks)
	add("max-waiters", f.MaxWaiters)
	add("max-connections", f.MaxConnections)
	add("default-lease-ttl", f.DefaultLease)
	add("read-timeout", f.ReadTimeout)
	add("lease-sweep-interval", f.SweepInterval)
	add("gc-interval", f.GCInterval)
	add("gc-max-idle", f.GCMaxIdle)
	add("shutdown-timeout", f.ShutdownTimeout)
	if f.NoAutoRelease {
		a = append(a, "-auto-release-on-disconnect=false")
	}
	if f.AuthToken != "" {
		a = append(a, "-auth-token", f.AuthToken)
	}
	return a
}

// config is the testutil configuration equivalent to f.
func (f serverFlags) config() testutil.Config {
	sec := func(n int) time.Duration { return time.Duration(n) * time.Second }
	return testutil.Config{
		Version:            testutil.V1_10,
		AuthToken:          f.AuthToken,
		ReadTimeout:        sec(f.ReadTimeout),
		DefaultLease:       sec(f.DefaultLease),
		SweepInterval:      sec(f.SweepInterval),
		GCInterval:         sec(f.GCInterval),
		GCMaxIdle:          sec(f.GCMaxIdle),
		ShutdownTimeout:    sec(f.ShutdownTimeout),
		MaxLocks:           f.MaxLocks,
		MaxWaiters:         f.MaxWaiters,
		MaxConnections:     f.MaxConnections,
		DisableAutoRelease: f.NoAutoRelease,
		ReplyPerWrite:      !f.ReplyPerWriteNo,
	}
}

// realServer is a dflockd process.
type realServer struct {
	addr   string
	cmd    *exec.Cmd
	log    *logBuffer
	exited chan error // the result of cmd.Wait
}

// logBuffer collects the process's stderr and reports when it logs that it listens.
type logBuffer struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	listening chan struct{}
	once      sync.Once
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if bytes.Contains(l.buf.Bytes(), []byte("msg=listening")) {
		l.once.Do(func() { close(l.listening) })
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startReal starts the binary with f on a free port and waits until it
// listens. It does not dial it: the first connection a session opens gets
// connection id 1, as on a testutil server.
func startReal(ctx context.Context, binary string, f serverFlags) (*realServer, error) {
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		log := &logBuffer{listening: make(chan struct{})}
		cmd := exec.CommandContext(ctx, binary, f.args(port)...)
		cmd.Stderr = log
		cmd.Stdout = log
		dieWithParent(cmd)
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s: %w", binary, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case <-log.listening:
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			return &realServer{addr: addr, cmd: cmd, log: log, exited: exited}, nil
		case err := <-exited:
			if attempt < 3 && bytes.Contains([]byte(log.String()), []byte("address already in use")) {
				continue // lost the port to someone else
			}
			return nil, fmt.Errorf("dflockd exited before listening (%v): %s", err, log.String())
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			return nil, errors.New("dflockd did not log that it listens within 10s: " + log.String())
		}
	}
}

// terminate asks the process to shut down gracefully (SIGTERM).
func (rs *realServer) terminate() { _ = rs.cmd.Process.Signal(syscall.SIGTERM) }

// stop kills the process and reaps it.
func (rs *realServer) stop() {
	_ = rs.cmd.Process.Kill()
	<-rs.exited
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
