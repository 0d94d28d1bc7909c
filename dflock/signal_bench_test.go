package dflock

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
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

// BenchmarkSignalSaturation measures delivery and loss when publishers
// emit flat out, against an in-process server with dflockd's 64-line push
// buffer, one write per push, and the measured build's behaviour when a
// push buffer is full (drop the signal, keep the connection; see
// docs/signals.md). An op is one Emit of a 16-byte payload; a separate
// publisher Client emits. Reported:
//
//   - deliveries/s: signals handed to subscriptions, per second from the
//     first Emit until the last counted signal has arrived;
//   - lost%: 100 × (emits × expected receivers − deliveries) / (emits ×
//     expected receivers), where a queue group expects one receiver.
//
// Cases: "1sub" is one subscription and one publisher; the others have 8
// publishers. "plain16" is 16 subscriptions of one pattern, in one Client
// or 4 Clients of 4 (which is what spreading a Client's subscriptions over
// 4 connections would do); "group4" is a queue group of 4 members sharing
// one connection (WithGroupConns(1)), one connection each (the default), or
// in 4 Clients.
//
//	go test -run='^$' -bench=SignalSaturation -benchtime=20000x ./dflock
func BenchmarkSignalSaturation(b *testing.B) {
	cases := []struct {
		name       string
		pubs       int
		clients    int
		subs       int // per Client
		group      bool
		groupConns int // 0: the default
	}{
		{name: "1sub", pubs: 1, clients: 1, subs: 1},
		{name: "plain16/1client", pubs: 8, clients: 1, subs: 16},
		{name: "plain16/4clients", pubs: 8, clients: 4, subs: 4},
		{name: "group4/1client-shared", pubs: 8, clients: 1, subs: 4, group: true, groupConns: 1},
		{name: "group4/1client", pubs: 8, clients: 1, subs: 4, group: true},
		{name: "group4/4clients", pubs: 8, clients: 4, subs: 1, group: true},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			var opts []Option
			if tc.groupConns > 0 {
				opts = append(opts, WithGroupConns(tc.groupConns))
			}
			var lopts []ListenOption
			expect := tc.clients * tc.subs // receivers per signal
			perCopy := tc.subs             // subscriptions one counted copy reaches
			if tc.group {
				lopts = append(lopts, Group("workers"))
				expect, perCopy = 1, 1
			}
			benchSaturation(b, tc.pubs, tc.clients, tc.subs, expect, perCopy, opts, lopts)
		})
	}
}

func benchSaturation(b *testing.B, pubs, clients, subsPer, expect, perCopy int, opts []Option, lopts []ListenOption) {
	srv := newServer(b, testutil.Config{SignalOverflow: testutil.OverflowDrop})
	ctx := context.Background()
	lopts = append(lopts, Buffer(MaxSignalBuffer)) // nothing is dropped locally
	var subs []*Subscription
	for range clients {
		c := newClient(b, addrsOf(srv), opts...)
		for range subsPer {
			s, err := c.Listen(ctx, "sat", lopts...)
			if err != nil {
				b.Fatal(err)
			}
			subs = append(subs, s)
		}
	}
	pub := newClient(b, addrsOf(srv))
	if _, err := pub.Emit(ctx, "warmup", "x"); err != nil {
		b.Fatal(err)
	}

	var arrived atomic.Int64
	var consumers sync.WaitGroup
	for _, s := range subs {
		consumers.Add(1)
		go func() {
			defer consumers.Done()
			for sig := range s.C() {
				if sig.Err == nil {
					arrived.Add(1)
				}
			}
		}()
	}
	defer func() {
		for _, s := range subs {
			_ = s.Close()
		}
		consumers.Wait()
	}()

	const payload = "0123456789abcdef"
	var counted atomic.Int64 // receivers counted by the server
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for p := range pubs {
		n := b.N / pubs
		if p < b.N%pubs {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				k, err := pub.Emit(ctx, "sat", payload)
				if err != nil {
					b.Error(err)
					return
				}
				counted.Add(int64(k))
			}
		}()
	}
	wg.Wait()
	// Every copy the server counted reaches the Client; wait for them all.
	want := counted.Load() * int64(perCopy)
	deadline := time.Now().Add(time.Minute)
	for {
		dropped := int64(0)
		for _, s := range subs {
			dropped += int64(s.Dropped())
		}
		if arrived.Load()+dropped >= want {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d counted signals arrived", arrived.Load()+dropped, want)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	got := arrived.Load()
	total := int64(b.N) * int64(expect)
	b.ReportMetric(float64(got)/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(100*float64(total-got)/float64(total), "lost%")
}
