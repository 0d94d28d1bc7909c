package dflock

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dflock-sdk/go/testutil"
)

// BenchmarkSignalThroughput measures Emit → receive end to end on one
// in-process server: P publisher goroutines call Emit (pipelined on the
// control lane), one subscriber reads C. An op is one signal emitted and
// received (or dropped; the drop count is reported, and is 0 when the
// reader keeps up).
//
//	go test -run='^$' -bench=Signal -benchmem ./dflock
func BenchmarkSignalThroughput(b *testing.B) {
	for _, pubs := range []int{1, 8} {
		b.Run("publishers="+strconv.Itoa(pubs), func(b *testing.B) { benchSignals(b, pubs) })
	}
}

func benchSignals(b *testing.B, pubs int) {
	// The in-process server's push buffer is raised from dflockd's 64
	// lines: the server shares the CPUs with the publishers, and its push
	// writer goroutine can fall hundreds of lines behind a full-speed
	// publisher by scheduling alone — a bare bufio reader on a raw socket
	// gets disconnected just the same with 256. The client's reader is not
	// the bottleneck: nothing is dropped locally.
	srv := newServer(b, testutil.Config{PushBuffer: 1 << 16})
	c := newClient(b, addrsOf(srv))
	ctx := context.Background()
	sub, err := c.Listen(ctx, "bench.>", Buffer(1<<16))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Emit(ctx, "bench.warmup", "x"); err != nil {
		b.Fatal(err)
	}
	if _, err := sub.Next(ctx); err != nil {
		b.Fatal(err)
	}

	consumed := make(chan error, 1)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	go func() {
		got := uint64(0)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for got+sub.Dropped() < uint64(b.N) {
			select {
			case sig, ok := <-sub.C():
				if !ok {
					consumed <- fmt.Errorf("subscription closed")
					return
				}
				if sig.Err != nil {
					consumed <- sig.Err
					return
				}
				got++
			case <-tick.C: // the last signals may have been dropped
			}
		}
		consumed <- nil
	}()
	var wg sync.WaitGroup
	for p := 0; p < pubs; p++ {
		n := b.N / pubs
		if p < b.N%pubs {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				if k, err := c.Emit(ctx, "bench.x", "payload"); err != nil || k != 1 {
					b.Errorf("emit: %d receivers, %v", k, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := <-consumed; err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "signals/s")
	b.ReportMetric(float64(sub.Dropped()), "dropped")
}

// BenchmarkSignalListenClose measures the local cost of subscribing: one op
// is Listen of N subscriptions followed by Close of all of them, on one
// server. "same" puts every subscription on one pattern (one server-side
// listen; the rest is local bookkeeping), "distinct" gives each its own
// literal pattern (one listen and one unlisten each). The cost per
// subscription must not grow with N.
//
//	go test -run='^$' -bench=SignalListenClose -benchtime=3x ./dflock
func BenchmarkSignalListenClose(b *testing.B) {
	for _, mode := range []string{"same", "distinct"} {
		for _, n := range []int{1000, 10000} {
			b.Run(fmt.Sprintf("%s/subs=%d", mode, n), func(b *testing.B) {
				srv := newServer(b, testutil.Config{})
				c := newClient(b, addrsOf(srv))
				ctx := context.Background()
				subs := make([]*Subscription, n)
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					for i := range subs {
						pattern := "bench.same"
						if mode == "distinct" {
							pattern = "bench." + strconv.Itoa(i)
						}
						s, err := c.Listen(ctx, pattern, Buffer(1))
						if err != nil {
							b.Fatal(err)
						}
						subs[i] = s
					}
					for _, s := range subs {
						_ = s.Close()
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/sub")
			})
		}
	}
}
