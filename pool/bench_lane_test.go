package pool

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// BenchmarkLaneLockRelease is an uncontended try-acquire and release (Do(l)
// then Do(r)) per op, at 1 and 8 goroutines, on the lane ("pool"), on the
// lane with inline writes off ("pool-flusher": every request through the
// flush goroutine) and on the baseline a team would migrate from: one
// persistent connection per goroutine, writing l, reading its reply,
// writing r, reading its reply ("persistent"). All run on the same server
// in the same run, one after the other, so that their ratios survive a
// loaded machine better than numbers from separate runs; repeat the run
// (-count=1, several times) and compare medians. p50-µs is the median
// latency of one op; cpu-µs/op is the CPU time of the whole test process,
// the client's alone only with an external server.
//
// "scripted" is a tiny server that answers from fixed bytes and allocates
// nothing per request, so allocs/op there are the client's own; "testutil"
// is the in-process dflockd, writing every reply on its own as dflockd
// does. DFLOCK_BENCH_ADDR adds a server in another process ("external"),
// e.g. testutil/cmd/dflockd-test -reply-per-write; keys are bench-lr-<n>.
func BenchmarkLaneLockRelease(b *testing.B) {
	servers := []struct {
		name string
		addr func(testing.TB) string
	}{
		{"scripted", scriptedServer},
		{"testutil", func(t testing.TB) string { return newServer(t, testutil.Config{ReplyPerWrite: true}).Addr() }},
	}
	if addr := os.Getenv("DFLOCK_BENCH_ADDR"); addr != "" {
		// A server in another process (a dflockd, say): the client's
		// runtime then schedules the client's goroutines only, as in
		// production.
		servers = append(servers, struct {
			name string
			addr func(testing.TB) string
		}{"external", func(testing.TB) string { return addr }})
	}
	for _, s := range servers {
		b.Run(s.name, func(b *testing.B) {
			addr := s.addr(b)
			for _, g := range []int{1, 8} {
				b.Run(fmt.Sprintf("g=%d/pool", g), func(b *testing.B) {
					p := newPool(b, Config{Addr: addr})
					before := p.Stats()
					runLockRelease(b, g, func(int) (lockReleaser, func()) {
						return poolLockRelease(p), func() {}
					})
					reportPipelining(b, before, p.Stats())
				})
				b.Run(fmt.Sprintf("g=%d/pool-flusher", g), func(b *testing.B) {
					// The lane with inline writes off: every request goes
					// through the flush goroutine, as before they existed.
					p := newPool(b, Config{Addr: addr})
					before := p.Stats()
					runLockRelease(b, g, func(i int) (lockReleaser, func()) {
						if i == 0 {
							setInline(b, p, false)
						}
						return poolLockRelease(p), func() {}
					})
					reportPipelining(b, before, p.Stats())
				})
				b.Run(fmt.Sprintf("g=%d/persistent", g), func(b *testing.B) {
					runLockRelease(b, g, func(int) (lockReleaser, func()) {
						return persistentLockRelease(b, addr)
					})
				})
			}
		})
	}
}

// lockReleaser does one try-acquire and release of key.
type lockReleaser func(ctx context.Context, key string) error

func poolLockRelease(p *Pool) lockReleaser {
	return func(ctx context.Context, key string) error {
		g, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdLock, Key: key, Lease: 30})
		if err != nil {
			return err
		}
		if g.Status != wire.StatusOK {
			return fmt.Errorf("lock %s: %v", key, g.Status)
		}
		r, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdRelease, Key: key, Token: g.Token})
		if err != nil {
			return err
		}
		if r.Status != wire.StatusOK {
			return fmt.Errorf("release %s: %v", key, r.Status)
		}
		return nil
	}
}

func persistentLockRelease(b *testing.B, addr string) (lockReleaser, func()) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	wc := wire.NewConn(nc, wire.ConnOptions{})
	roundTrip := func(req wire.Request) (wire.Reply, error) {
		if err := wc.WriteRequests(req); err != nil {
			return wire.Reply{}, err
		}
		return wc.ReadReply(req.Cmd)
	}
	return func(_ context.Context, key string) error {
		g, err := roundTrip(wire.Request{Cmd: wire.CmdLock, Key: key, Lease: 30})
		if err != nil {
			return err
		}
		if g.Status != wire.StatusOK {
			return fmt.Errorf("lock %s: %v", key, g.Status)
		}
		r, err := roundTrip(wire.Request{Cmd: wire.CmdRelease, Key: key, Token: g.Token})
		if err != nil {
			return err
		}
		if r.Status != wire.StatusOK {
			return fmt.Errorf("release %s: %v", key, r.Status)
		}
		return nil
	}, func() { _ = wc.Close() }
}

// runLockRelease runs b.N ops spread over g goroutines, each on its own key,
// and reports the median op latency.
func runLockRelease(b *testing.B, g int, mk func(i int) (lockReleaser, func())) {
	ctx := context.Background()
	fns := make([]lockReleaser, g)
	keys := make([]string, g)
	for i := range g {
		var closeFn func()
		fns[i], closeFn = mk(i)
		b.Cleanup(closeFn)
		keys[i] = fmt.Sprintf("bench-lr-%d", i)
		if err := fns[i](ctx, keys[i]); err != nil { // warm up: dial
			b.Fatal(err)
		}
	}
	lat := make([][]time.Duration, g)
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	b.ReportAllocs()
	cpu0 := testutil.ProcessCPUOrSkip(b)
	b.ResetTimer()
	for i := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := make([]time.Duration, 0, b.N/g+1)
			for left.Add(-1) >= 0 {
				t := time.Now()
				if err := fns[i](ctx, keys[i]); err != nil {
					b.Error(err)
					return
				}
				l = append(l, time.Since(t))
			}
			lat[i] = l
		}()
	}
	wg.Wait()
	b.StopTimer()
	// The whole process: the client's share only with an external server.
	b.ReportMetric(float64((testutil.ProcessCPUOrSkip(b)-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
	all := slices.Concat(lat...)
	if len(all) > 0 {
		slices.Sort(all)
		b.ReportMetric(float64(all[len(all)/2].Nanoseconds())/1e3, "p50-µs")
	}
}

// scriptedServer is a minimal server for allocation counts: it answers l
// with a fixed grant and everything else with ok, one write per reply (as
// dflockd does), from fixed bytes, so it allocates nothing per request.
func scriptedServer(t testing.TB) string {
	return testutil.ServeRaw(t, serveScripted)
}

var (
	scriptedGrant = []byte("ok 0123456789abcdef0123456789abcdef 30\n")
	scriptedOK    = []byte("ok\n")
)

func serveScripted(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		cmd, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		lock := string(cmd) == "l\n"
		for range 2 {
			if _, err := r.ReadSlice('\n'); err != nil {
				return
			}
		}
		reply := scriptedOK
		if lock {
			reply = scriptedGrant
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}

// setInline turns inline writes on or off on every lane connection of p,
// after dialling them all.
func setInline(t testing.TB, p *Pool, on bool) {
	t.Helper()
	if _, _, err := p.Do(context.Background(), wire.Request{Cmd: wire.CmdPing}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for p.Stats().LaneConns < len(p.lanes) {
		if time.Now().After(deadline) {
			t.Fatal("lane connections not dialled")
		}
		time.Sleep(time.Millisecond)
	}
	for i := range p.lanes {
		c := p.lanes[i].conn.Load().c
		c.mu.Lock()
		c.inline = on
		c.mu.Unlock()
	}
}
