package dflock

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/dflock-sdk/go/testutil"
)

// BenchmarkHoldLeases measures what holding leases costs the client: one
// Client holds n leases of TTL 4 s (renewed every ~2 s) on one server, and
// over a few renewal rounds the benchmark reports
//
//   - client-cpu-µs/lease/round: this process's CPU time (getrusage) per
//     renewal, with the server in a process of its own (-benchserver=proc,
//     the default). With -benchserver=inproc the server's share is included
//     and the unit reads proc-cpu-µs/lease/round instead;
//   - renewals/write: renew requests per renewal batch (RenewStats
//     Sent/Batches), one write each;
//   - goroutines and heap-B/lease: the growth from holding the leases;
//   - allocs/lease/round: heap allocations per renewal.
//
// Run with, for example:
//
//	go test -run='^$' -bench='^BenchmarkHoldLeases' -benchtime=1x -count=3 ./dflock
func BenchmarkHoldLeases(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint("leases=", n), func(b *testing.B) {
			var f holdFigures
			for range b.N {
				f = measureHoldRounds(b, n, 3)
			}
			unit := "client-cpu-µs/lease/round"
			if !f.separate {
				unit = "proc-cpu-µs/lease/round" // client and server together
			}
			b.ReportMetric(f.cpuPerRenewal, unit)
			b.ReportMetric(f.perWrite, "renewals/write")
			b.ReportMetric(float64(f.goroutines), "goroutines")
			b.ReportMetric(f.heapPerLease, "heap-B/lease")
			b.ReportMetric(f.allocsPerRenewal, "allocs/lease/round")
		})
	}
}

type holdFigures struct {
	separate         bool // the server ran in another process
	cpuPerRenewal    float64
	perWrite         float64
	goroutines       int
	heapPerLease     float64
	allocsPerRenewal float64
}

const (
	benchHoldTTL = 4 * time.Second
	// benchHoldInterval is the renewal interval of benchHoldTTL at the
	// default renew ratio.
	benchHoldInterval = time.Duration(float64(benchHoldTTL) * DefaultRenewRatio)
)

func measureHoldRounds(b *testing.B, n, rounds int) holdFigures {
	b.Helper()
	b.StopTimer()
	target := startBenchTarget(b)
	c := newClient(b, []string{target.addr})
	ctx := context.Background()
	// The lane connections are part of the Client, not of the leases.
	warm, err := c.Lock(ctx, "hold:warm")
	if err != nil {
		b.Fatal(err)
	}
	if err := warm.Release(ctx); err != nil {
		b.Fatal(err)
	}

	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	g0 := runtime.NumGoroutine()
	locks := make([]*Lock, n)
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	const workers = 64
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				l, err := c.Lock(ctx, fmt.Sprint("hold:", i), LeaseTTL(benchHoldTTL))
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				locks[i] = l
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	f := holdFigures{
		separate:     target.separate,
		goroutines:   runtime.NumGoroutine() - g0,
		heapPerLease: float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / float64(n),
	}

	// One round to settle (the grants were spread over the time the
	// acquires took), then the measured rounds.
	awaitHoldRenewals(b, c, int64(n))
	s0 := c.renewStats()
	runtime.ReadMemStats(&m0)
	cpu0 := testutil.ProcessCPUOrSkip(b)
	b.StartTimer()
	// Sleep through the rounds rather than poll for them: waking every
	// 50 ms cost the process ~3 ms of CPU per second on the 2-vCPU VM these
	// figures come from — as much as 1,000 leases' renewals — so the poll
	// measured itself (with 10 leases held: ~1,000 µs per lease per round).
	// The figures divide by the renewals actually made in the window.
	time.Sleep(time.Duration(rounds)*benchHoldInterval + benchHoldInterval/4)
	b.StopTimer()
	cpu := testutil.ProcessCPUOrSkip(b) - cpu0
	runtime.ReadMemStats(&m1)
	s1 := c.renewStats()

	renewals := float64(s1.Renewed - s0.Renewed)
	if renewals < float64(rounds*n) {
		b.Fatalf("%v renewals in %d renewal intervals of %d leases", renewals, rounds, n)
	}
	f.cpuPerRenewal = float64(cpu.Nanoseconds()) / 1e3 / renewals
	f.perWrite = float64(s1.Sent-s0.Sent) / float64(max(s1.Batches-s0.Batches, 1))
	f.allocsPerRenewal = float64(m1.Mallocs-m0.Mallocs) / renewals
	if s1.Lost != 0 {
		b.Fatalf("%d leases lost while held", s1.Lost)
	}
	for _, l := range locks {
		if err := l.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
	return f
}

// awaitHoldRenewals waits until the Client has renewed k more leases. It polls
// the scheduler's counters every 50 ms: cheap beside what is measured, and
// a benchmark has no event to wait on.
func awaitHoldRenewals(b *testing.B, c *Client, k int64) {
	b.Helper()
	base := c.renewStats().Renewed
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(2 * time.Minute)
	for c.renewStats().Renewed-base < k {
		if time.Now().After(deadline) {
			b.Fatalf("%d renewals in 2 minutes, want %d: %+v", c.renewStats().Renewed-base, k, c.renewStats())
		}
		<-tick.C
	}
}
