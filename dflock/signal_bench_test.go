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
