package dflock

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dflock-sdk/go/testutil"
)

// The headline benchmarks: Lock+Release through one shared Client beside
// what users would otherwise write, on the same server in the same run.
// docs/performance.md has the commands and the tables; in short:
//
//	go test -run='^$' -bench='^BenchmarkLockRelease' -benchtime=1s ./dflock
//
// repeated a few times and compared with benchstat -col /impl.
//
// Flags (after the package): -benchserver proc|inproc|host:port, -benchpacing dflockd|coalesce.
var (
	benchServer = flag.String("benchserver", "proc",
		"server of the headline benchmarks: proc (a child process, so that client CPU is measured alone), "+
			"inproc (quicker; CPU figures then include the server), or host:port of a running server")
	benchPacing = flag.String("benchpacing", "dflockd",
		"reply pacing of a proc or inproc server: dflockd (one write per reply, as the released server) or coalesce")
)

// benchChildEnv carries the flags of a server process that re-executes the
// test binary (see TestBenchServerProcess).
const benchChildEnv = "DFLOCK_BENCH_SERVER_ARGS"

// TestBenchServerProcess is the body of the benchmarks' server process: the
// test binary runs itself with this test selected and the server's flags in
// the environment. Run directly, it skips.
func TestBenchServerProcess(t *testing.T) {
	args, ok := os.LookupEnv(benchChildEnv)
	if !ok {
		t.Skip("the server process of the benchmarks; runs only when they start it")
	}
	if err := testutil.RunProcess(context.Background(), strings.Fields(args), os.Stdin, os.Stdout); err != nil {
		t.Fatal(err)
	}
}

// benchTarget is the server every implementation of a headline benchmark
// runs against.
type benchTarget struct {
	addr string
	// separate is true when the server runs outside this process, so the
	// process's CPU time is the client's alone.
	separate bool
}

func startBenchTarget(b *testing.B) benchTarget {
	b.Helper()
	var perWrite bool
	switch *benchPacing {
	case "dflockd":
		perWrite = true
	case "coalesce":
	default:
		b.Fatalf("-benchpacing %q: want dflockd or coalesce", *benchPacing)
	}
	switch *benchServer {
	case "inproc":
		srv := newServer(b, testutil.Config{MaxLocks: -1, ReplyPerWrite: perWrite})
		return benchTarget{addr: srv.Addr()}
	case "proc":
		args := []string{"-max-locks", "-1", "-exit-on-eof"}
		if perWrite {
			args = append(args, "-reply-per-write")
		}
		return benchTarget{addr: startServerProcess(b, args), separate: true}
	default:
		return benchTarget{addr: *benchServer, separate: true}
	}
}

// startServerProcess re-executes the test binary as a server process and
// returns its address. The process exits when its stdin is closed, at
// cleanup (or when this process dies); a process that does not is killed.
// Cleanup returns once the process has exited.
func startServerProcess(b testing.TB, args []string) string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBenchServerProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), benchChildEnv+"="+strings.Join(args, " "))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start the server process: %v", err)
	}
	kill := func() { _ = cmd.Process.Kill() }
	b.Cleanup(func() {
		_ = stdin.Close()
		hung := time.AfterFunc(testTimeout, kill) // one that does not exit
		if err := cmd.Wait(); err != nil {
			b.Errorf("server process: %v", err)
		}
		hung.Stop()
	})
	hung := time.AfterFunc(testTimeout, kill) // one that never announces itself
	defer hung.Stop()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("read the server process's address: %v", err)
	}
	return strings.TrimSpace(line)
}

// benchImpl is one way of doing Lock+Release. setup runs untimed, once per
// benchmark run with g goroutines, and returns the per-goroutine operation
// and a teardown.
type benchImpl struct {
	name  string
	setup func(b *testing.B, addr string, g int) (op func(gi int, key string) error, teardown func())
}

var benchImpls = []benchImpl{
	{"dflock", setupDflock},
	{"persistent", setupPersistent},
	{"dialperlock", setupDialPerLock},
}

func setupDflock(b *testing.B, addr string, _ int) (func(int, string) error, func()) {
	c, err := New([]string{addr})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	return func(_ int, key string) error {
		l, err := c.Lock(ctx, key)
		if err != nil {
			return err
		}
		return l.Release(ctx)
	}, func() { _ = c.Close() }
}

// setupPersistent is the loop users write by hand: a connection per
// goroutine, dialled once, and on it a blocking `l` then `r`. It renews
// nothing: its critical section is empty.
func setupPersistent(b *testing.B, addr string, g int) (func(int, string) error, func()) {
	conns := make([]*persistentConn, g)
	for i := range conns {
		nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			for _, pc := range conns[:i] {
				_ = pc.nc.Close()
			}
			b.Fatal(err)
		}
		conns[i] = &persistentConn{nc: nc, r: bufio.NewReader(nc)}
	}
	return func(gi int, key string) error {
			return conns[gi].lockRelease(key)
		}, func() {
			for _, pc := range conns {
				_ = pc.nc.Close()
			}
		}
}

type persistentConn struct {
	nc  net.Conn
	r   *bufio.Reader
	buf []byte
}

func (pc *persistentConn) roundTrip(cmd, key, arg string) (string, error) {
	pc.buf = append(append(append(append(append(append(pc.buf[:0], cmd...), '\n'), key...), '\n'), arg...), '\n')
	if _, err := pc.nc.Write(pc.buf); err != nil {
		return "", err
	}
	line, err := pc.r.ReadSlice('\n')
	return strings.TrimSpace(string(line)), err
}

func (pc *persistentConn) lockRelease(key string) error {
	reply, err := pc.roundTrip("l", key, "10 33")
	if err != nil {
		return err
	}
	f := strings.Fields(reply)
	if len(f) != 3 || f[0] != "ok" {
		return fmt.Errorf("persistent: acquire %q: %q", key, reply)
	}
	if reply, err = pc.roundTrip("r", key, f[1]); err != nil {
		return err
	}
	if reply != "ok" {
		return fmt.Errorf("persistent: release %q: %q", key, reply)
	}
	return nil
}

func setupDialPerLock(_ *testing.B, addr string, _ int) (func(int, string) error, func()) {
	bc := &baselineClient{servers: []string{addr}}
	return func(_ int, key string) error { return bc.lockRelease(key) }, func() {}
}

// BenchmarkLockRelease: uncontended Lock+Release, each goroutine on keys
// of its own.
func BenchmarkLockRelease(b *testing.B) {
	target := startBenchTarget(b)
	for _, g := range benchGoroutines {
		keys := benchKeys(g)
		for _, impl := range benchImpls {
			b.Run(fmt.Sprintf("impl=%s/g=%d", impl.name, g), func(b *testing.B) {
				runLockBench(b, target, impl, g, func(gi, i int) string { return keys[gi][i%len(keys[gi])] })
			})
		}
	}
}

// BenchmarkLockReleaseContended: 64 goroutines over 8 keys, 8 per key.
func BenchmarkLockReleaseContended(b *testing.B) {
	const g, nkeys = 64, 8
	target := startBenchTarget(b)
	keys := make([]string, nkeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("hot:%d", i)
	}
	for _, impl := range benchImpls {
		b.Run(fmt.Sprintf("impl=%s/g=%d/keys=%d", impl.name, g, nkeys), func(b *testing.B) {
			runLockBench(b, target, impl, g, func(gi, _ int) string { return keys[gi%nkeys] })
		})
	}
}

// runLockBench runs b.N operations of impl over g goroutines after an
// untimed warm-up (connections dialled, pools filled), and reports ops/s,
// p50 and p99 latency, and CPU per operation: the client's alone when the
// server is in another process, else the whole process's.
func runLockBench(b *testing.B, target benchTarget, impl benchImpl, g int, key func(gi, i int) string) {
	op, teardown := impl.setup(b, target.addr, g)
	defer teardown()
	var failed atomic.Pointer[error]
	fail := func(err error) { failed.CompareAndSwap(nil, &err) }
	var wg sync.WaitGroup
	for gi := range g { // warm-up: every goroutine once, concurrently
		wg.Go(func() {
			if err := op(gi, key(gi, 0)); err != nil {
				fail(err)
			}
		})
	}
	wg.Wait()
	if p := failed.Load(); p != nil {
		b.Fatal(*p)
	}

	lat := make([][]time.Duration, g)
	for i := range lat {
		lat[i] = make([]time.Duration, 0, b.N/g+1)
	}
	var next atomic.Int64
	b.ReportAllocs()
	cpu0 := testutil.ProcessCPUOrSkip(b)
	b.ResetTimer()
	start := time.Now()
	for gi := range g {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				t0 := time.Now()
				if err := op(gi, key(gi, i+1)); err != nil {
					fail(err)
					return
				}
				lat[gi] = append(lat[gi], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := testutil.ProcessCPUOrSkip(b) - cpu0
	if p := failed.Load(); p != nil {
		b.Fatal(*p)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(all[len(all)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Nanoseconds())/1e3, "p99-µs")
	unit := "client-cpu-µs/op"
	if !target.separate {
		unit = "proc-cpu-µs/op" // client and server together
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N), unit)
}

// The benchmarks' server process serves, and exits cleanly when its stdin
// closes at cleanup (a kill would fail Wait, and so the test).
func TestBenchServerProcessStartsServesAndExits(t *testing.T) {
	t.Parallel()
	var addr string
	t.Run("serve", func(t *testing.T) {
		addr = startServerProcess(t, []string{"-reply-per-write", "-exit-on-eof"})
		c := newClient(t, []string{addr})
		ctx := testCtx(t)
		l, err := c.Lock(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
	// The subtest's cleanup waited for the process: its port is closed.
	if nc, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		_ = nc.Close()
		t.Fatalf("%s still accepts connections after cleanup", addr)
	}
}
