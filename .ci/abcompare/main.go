//go:build ignore

// The harness of .ci/abcompare/run: Lock+Release through two builds of the
// SDK ("old" and "new", the module copied twice under other paths) and the
// hand-written persistent-connection loop, in one process, against one
// server, alternating short slices so that the machine's drift falls on all
// three alike. It prints medians over the rounds, and medians of the
// per-round ratios.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	newd "ab.example/new/dflock"
	oldd "ab.example/old/dflock"
)

func main() {
	addr := flag.String("server", "", "host:port of the server")
	g := flag.Int("g", 1, "goroutines")
	keysPer := flag.Int("keys", 4, "keys per goroutine; 0: every goroutine on one of -hot shared keys")
	hot := flag.Int("hot", 8, "shared keys when -keys=0")
	slice := flag.Duration("slice", 200*time.Millisecond, "how long each implementation runs per round")
	rounds := flag.Int("rounds", 30, "rounds (each runs every implementation once, in rotating order)")
	flag.Parse()
	if err := run(*addr, *g, *keysPer, *hot, *slice, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "abcompare:", err)
		os.Exit(1)
	}
}

type impl struct {
	name string
	op   func(gi int, key string) error
}

func run(addr string, g, keysPer, hot int, slice time.Duration, rounds int) error {
	ctx := context.Background()
	oc, err := oldd.New([]string{addr})
	if err != nil {
		return err
	}
	defer oc.Close()
	nc, err := newd.New([]string{addr})
	if err != nil {
		return err
	}
	defer nc.Close()
	loops := make([]*loop, g)
	for i := range loops {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		loops[i] = &loop{nc: c, r: bufio.NewReader(c)}
	}
	impls := []impl{
		{"old", func(_ int, key string) error {
			l, err := oc.Lock(ctx, key)
			if err != nil {
				return err
			}
			return l.Release(ctx)
		}},
		{"new", func(_ int, key string) error {
			l, err := nc.Lock(ctx, key)
			if err != nil {
				return err
			}
			return l.Release(ctx)
		}},
		{"loop", func(gi int, key string) error { return loops[gi].lockRelease(key) }},
	}
	key := func(gi, i int) string {
		if keysPer == 0 {
			return fmt.Sprintf("hot:%d", gi%hot)
		}
		return fmt.Sprintf("bench:%d:%d", gi, i%keysPer)
	}
	type series struct{ ops, cpu, p50, p99 []float64 }
	res := map[string]*series{}
	for _, im := range impls {
		res[im.name] = &series{}
		if _, err := measure(im, g, key, 100*time.Millisecond); err != nil { // warm-up
			return err
		}
	}
	for r := range rounds {
		for k := range impls {
			im := impls[(k+r)%len(impls)]
			m, err := measure(im, g, key, slice)
			if err != nil {
				return err
			}
			s := res[im.name]
			s.ops, s.cpu = append(s.ops, m.ops), append(s.cpu, m.cpu)
			s.p50, s.p99 = append(s.p50, m.p50), append(s.p99, m.p99)
		}
	}
	base := res["loop"]
	for _, im := range impls {
		s := res[im.name]
		fmt.Printf("g=%d keys=%d %-4s ops/s %7.0f  cpu %6.1f µs/op  p50 %6.0f µs  p99 %6.0f µs  | ÷loop: ops %.2f (%.2f–%.2f) p50 %.2f cpu %.2f\n",
			g, keysPer, im.name, median(s.ops), median(s.cpu), median(s.p50), median(s.p99),
			ratio(s.ops, base.ops), slices.Min(ratios(s.ops, base.ops)), slices.Max(ratios(s.ops, base.ops)),
			ratio(s.p50, base.p50), ratio(s.cpu, base.cpu))
	}
	o, n := res["old"], res["new"]
	fmt.Printf("g=%d keys=%d new÷old: ops %.2f  cpu %.2f  p50 %.2f  p99 %.2f  (%d rounds of %v)\n",
		g, keysPer, ratio(n.ops, o.ops), ratio(n.cpu, o.cpu), ratio(n.p50, o.p50), ratio(n.p99, o.p99), rounds, slice)
	return nil
}

type result struct{ ops, cpu, p50, p99 float64 }

// measure runs im on g goroutines for d: ops/s, the process's CPU per
// operation (getrusage: the server runs in another process), p50 and p99.
func measure(im impl, g int, key func(gi, i int) string, d time.Duration) (result, error) {
	var stop atomic.Bool
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	lats := make([][]time.Duration, g)
	c0, t0 := cpuTime(), time.Now()
	for gi := range g {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				s := time.Now()
				if err := im.op(gi, key(gi, i)); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				lats[gi] = append(lats[gi], time.Since(s))
			}
		})
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	el, cpu := time.Since(t0), cpuTime()-c0
	if p := failed.Load(); p != nil {
		return result{}, fmt.Errorf("%s: %w", im.name, *p)
	}
	all := slices.Concat(lats...)
	if len(all) == 0 {
		return result{}, fmt.Errorf("%s: no operation completed in %v", im.name, d)
	}
	slices.Sort(all)
	n := float64(len(all))
	return result{
		ops: n / el.Seconds(),
		cpu: float64(cpu.Nanoseconds()) / 1e3 / n,
		p50: float64(all[len(all)/2].Nanoseconds()) / 1e3,
		p99: float64(all[len(all)*99/100].Nanoseconds()) / 1e3,
	}, nil
}

// loop is the persistent-connection baseline of dflock/bench_lock_test.go.
type loop struct {
	nc  net.Conn
	r   *bufio.Reader
	buf []byte
}

func (l *loop) roundTrip(cmd, key, arg string) (string, error) {
	l.buf = append(append(append(append(append(append(l.buf[:0], cmd...), '\n'), key...), '\n'), arg...), '\n')
	if _, err := l.nc.Write(l.buf); err != nil {
		return "", err
	}
	line, err := l.r.ReadSlice('\n')
	return strings.TrimSpace(string(line)), err
}

func (l *loop) lockRelease(key string) error {
	reply, err := l.roundTrip("l", key, "10 33")
	if err != nil {
		return err
	}
	f := strings.Fields(reply)
	if len(f) != 3 || f[0] != "ok" {
		return fmt.Errorf("acquire %q: %q", key, reply)
	}
	if reply, err = l.roundTrip("r", key, f[1]); err != nil {
		return err
	}
	if reply != "ok" {
		return fmt.Errorf("release %q: %q", key, reply)
	}
	return nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(x []float64) float64 {
	y := slices.Clone(x)
	slices.Sort(y)
	return y[len(y)/2]
}

func ratios(a, b []float64) []float64 {
	r := make([]float64, len(a))
	for i := range a {
		r[i] = a[i] / b[i]
	}
	return r
}

func ratio(a, b []float64) float64 { return median(ratios(a, b)) }
