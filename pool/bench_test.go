package pool

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// benchParallelism × GOMAXPROCS goroutines share the lane, as in a busy
// service.
const benchParallelism = 32

// BenchmarkLaneDo measures a round trip on the control lane from many
// goroutines (b.RunParallel): ping, and renew of a held lease.
func BenchmarkLaneDo(b *testing.B) {
	srv := newServer(b, testutil.Config{})
	ctx := context.Background()
	b.Run("ping", func(b *testing.B) {
		p := newPool(b, Config{Addr: srv.Addr()})
		if _, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing}); err != nil {
			b.Fatal(err)
		}
		before := p.Stats()
		b.ReportAllocs()
		b.SetParallelism(benchParallelism)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			req := wire.Request{Cmd: wire.CmdPing}
			for pb.Next() {
				if _, _, err := p.Do(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportPipelining(b, before, p.Stats())
	})
	b.Run("renew", func(b *testing.B) {
		p := newPool(b, Config{Addr: srv.Addr()})
		var next atomic.Int64
		before := p.Stats()
		b.ReportAllocs()
		b.SetParallelism(benchParallelism)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			key := fmt.Sprintf("bench-renew-%d", next.Add(1))
			g, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdLock, Key: key, Lease: 60})
			if err != nil || g.Status != wire.StatusOK {
				b.Errorf("lock: %+v %v", g, err)
				return
			}
			req := wire.Request{Cmd: wire.CmdRenew, Key: key, Token: g.Token, Lease: 60}
			for pb.Next() {
				if r, _, err := p.Do(ctx, req); err != nil || r.Status != wire.StatusOK {
					b.Errorf("renew: %+v %v", r, err)
					return
				}
			}
		})
		reportPipelining(b, before, p.Stats())
	})
}

func reportPipelining(b *testing.B, before, after Stats) {
	if w := after.Writes - before.Writes; w > 0 {
		b.ReportMetric(float64(after.Requests-before.Requests)/float64(w), "req/write")
	}
}

// BenchmarkAcquireRelease measures taking an idle wait-pool connection and
// giving it back (no I/O).
func BenchmarkAcquireRelease(b *testing.B) {
	srv := newServer(b, testutil.Config{})
	p := newPool(b, Config{Addr: srv.Addr()})
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c, err := p.Acquire(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			c.Release()
		}
	})
}

// BenchmarkLaneDoSerial is the latency of one caller alone on the lane.
func BenchmarkLaneDoSerial(b *testing.B) {
	srv := newServer(b, testutil.Config{})
	p := newPool(b, Config{Addr: srv.Addr()})
	ctx := context.Background()
	req := wire.Request{Cmd: wire.CmdPing}
	if _, _, err := p.Do(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := p.Do(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAcquireBurst measures a burst of callers that all need a new
// wait-pool connection at once (a service starting, or a hot key's waiters
// arriving together): burstCallers Acquire from an empty pool, dials paced
// by the gate, then every connection is released. deferrals/conn counts the
// times a caller was woken, tried to dial and was deferred again.
func BenchmarkAcquireBurst(b *testing.B) {
	const burstCallers = 64
	srv := newServer(b, testutil.Config{})
	b.ReportAllocs()
	var deferrals, conns int64
	for b.Loop() {
		p := newPool(b, Config{Addr: srv.Addr(), MaxConns: burstCallers})
		deferrals += int64(acquireBurst(b, p, burstCallers))
		conns += p.Stats().Dials
		p.Close()
	}
	b.ReportMetric(float64(deferrals)/float64(conns), "deferrals/conn")
}

// BenchmarkAcquireBurstAfterBackoff is the burst arriving while dials are
// held back after a failed one (a 20 ms backoff, after which the dial
// succeeds): every caller is deferred once on arrival; the backoff's end
// then wakes one caller, not all of them.
func BenchmarkAcquireBurstAfterBackoff(b *testing.B) {
	const burstCallers = 64
	srv := newServer(b, testutil.Config{})
	b.ReportAllocs()
	var deferrals uint64
	for b.Loop() {
		p := newPool(b, Config{Addr: srv.Addr(), MaxConns: burstCallers})
		backOff(p, 20*time.Millisecond)
		deferrals += acquireBurst(b, p, burstCallers)
		p.Close()
	}
	b.ReportMetric(float64(deferrals)/float64(b.N)/burstCallers, "deferrals/caller")
}
