package dflock

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Run with:
//
//	go test -run='^$' -bench=. -benchmem -count=5 ./dflock
//
// Every benchmark reports p50 and p99 latency of one Lock+Release in µs.

var benchGoroutines = []int{1, 8, 64, 256}

func benchServers(b *testing.B, n int) []*testutil.Server {
	srvs := make([]*testutil.Server, n)
	for i := range srvs {
		srvs[i] = newServer(b, testutil.Config{MaxLocks: -1, ReplyPerWrite: true})
	}
	return srvs
}

// runOps runs b.N calls of op spread over g goroutines (each with its own
// index, for key choice) and reports allocations and latency percentiles.
func runOps(b *testing.B, g int, op func(gi, i int) error) {
	b.Helper()
	lat := make([][]time.Duration, g)
	per := b.N/g + 1
	for i := range lat {
		lat[i] = make([]time.Duration, 0, per)
	}
	var next atomic.Int64
	var failed atomic.Pointer[error]
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for gi := range g {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				start := time.Now()
				if err := op(gi, i); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				lat[gi] = append(lat[gi], time.Since(start))
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if p := failed.Load(); p != nil {
		b.Fatal(*p)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Nanoseconds())/1e3, "p50-µs")
		b.ReportMetric(float64(all[len(all)*99/100].Nanoseconds())/1e3, "p99-µs")
	}
}

// benchKeys gives every goroutine a few keys of its own.
func benchKeys(g int) [][]string {
	keys := make([][]string, g)
	for gi := range keys {
		for k := range 4 {
			keys[gi] = append(keys[gi], fmt.Sprintf("bench:%d:%d", gi, k))
		}
	}
	return keys
}

// BenchmarkLaneFastPath measures whether trying the control lane first
// pays: lane=on is the default; lane=always tries the lane on every Lock,
// even on a key found held a moment ago (no hot-key memory); lane=off
// sends every Lock straight to a wait-pool connection as a blocking
// acquire. "contended" has all goroutines on one key, where a lane try is
// a wasted round trip. The variants of a case run one after the other, so
// that they see the same machine load.
func BenchmarkLaneFastPath(b *testing.B) {
	for _, contended := range []bool{false, true} {
		for _, g := range []int{1, 8, 64} {
			if contended && g == 1 {
				continue
			}
			for _, lane := range []string{"on", "always", "off"} {
				name := fmt.Sprintf("contended=%v/goroutines=%d/lane=%s", contended, g, lane)
				b.Run(name, func(b *testing.B) {
					srvs := benchServers(b, 1)
					opts := []Option{}
					if lane == "off" {
						opts = append(opts, withoutLaneFastPath())
					}
					c := newClient(b, addrsOf(srvs...), opts...)
					if lane == "always" {
						c.servers[0].hot.ttl = time.Nanosecond // forgotten at once
					}
					ctx := context.Background()
					keys := benchKeys(g)
					runOps(b, g, func(gi, i int) error {
						key := "hot"
						if !contended {
							key = keys[gi][i%len(keys[gi])]
						}
						l, err := c.Lock(ctx, key)
						if err != nil {
							return err
						}
						return l.Release(ctx)
					})
				})
			}
		}
	}
}

// baselineClient does what the official dflockd clients do for every lock:
// dial a new TCP connection, acquire with a blocking `l`, start a goroutine
// that renews at half the lease, and at the end stop it, release and close.
type baselineClient struct {
	servers []string
}

func (bc *baselineClient) lockRelease(key string) error {
	addr := bc.servers[crc32Index(key, len(bc.servers))]
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer nc.Close()
	r := bufio.NewReader(nc)
	var mu sync.Mutex
	roundTrip := func(req string) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := nc.Write([]byte(req)); err != nil {
			return "", err
		}
		line, err := r.ReadString('\n')
		return strings.TrimSpace(line), err
	}
	reply, err := roundTrip("l\n" + key + "\n10 33\n")
	if err != nil {
		return err
	}
	f := strings.Fields(reply)
	if len(f) != 3 || f[0] != "ok" {
		return fmt.Errorf("baseline: acquire %q: %q", key, reply)
	}
	token := f[1]
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // the per-lock renew goroutine
		defer close(done)
		t := time.NewTicker(33 * time.Second / 2)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if _, err := roundTrip("n\n" + key + "\n" + token + " 33\n"); err != nil {
					return
				}
			case <-stop:
				return
			}
		}
	}()
	close(stop)
	<-done
	reply, err = roundTrip("r\n" + key + "\n" + token + "\n")
	if err != nil {
		return err
	}
	if reply != "ok" {
		return fmt.Errorf("baseline: release %q: %q", key, reply)
	}
	return nil
}

func crc32Index(key string, n int) int {
	if n == 1 {
		return 0
	}
	var h uint32 = 0xFFFFFFFF
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		for range 8 {
			if h&1 != 0 {
				h = h>>1 ^ 0xEDB88320
			} else {
				h >>= 1
			}
		}
	}
	return int(^h % uint32(n))
}

// holdFootprint acquires n leases across 3 servers and measures what
// holding them costs the client.
type holdFootprint struct {
	goroutines      int     // client goroutines while holding (delta)
	conns           int     // open connections (all servers)
	heapPerLease    float64 // bytes
	renewals        int64   // renewals measured (at least n: a full cycle)
	renewalWrites   int64   // writes that carried them
	renewalsS       float64 // renewals per second (a measurement, machine-dependent)
	renewalPerWrite float64
}

// Hold leases for 60 s and renew them every 2 s (TTL × ratio): a slow
// machine delays renewals without losing leases, and batching still has
// about 125 leases due per 25 ms round to group (10,000 leases / 2 s).
const (
	holdTTL      = 60 * time.Second
	holdInterval = 2 * time.Second
)

// With clk nil the renewal cycle takes real time (holdInterval) and
// renewalsS is what the machine achieved. Otherwise the scheduler runs on
// clk, which is stepped through the cycle as soon as each round has been
// answered: the cycle takes only as long as the renewals themselves, and
// renewalsS measures that rather than the interval.
func measureHold(tb testing.TB, n int, clk *testutil.ManualClock) holdFootprint {
	srvs := []*testutil.Server{
		newServer(tb, testutil.Config{MaxLocks: -1}),
		newServer(tb, testutil.Config{MaxLocks: -1}),
		newServer(tb, testutil.Config{MaxLocks: -1}),
	}
	cc := &connCounter{}
	opts := []Option{WithDialer(cc.dial), WithRenewRatio(float64(holdInterval) / float64(holdTTL))}
	if clk != nil {
		opts = append(opts, withClock(clk))
	}
	c, err := New(addrsOf(srvs...), opts...)
	require.NoError(tb, err)
	defer c.Close()
	ctx := context.Background()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("hold:%d", i)
	}
	// Warm up the connections so that they do not count as per-lease cost.
	for _, s := range srvs {
		for i := 0; ; i++ {
			k := fmt.Sprintf("warm:%d", i)
			if c.ServerFor(k) == s.Addr() {
				l, err := c.Lock(ctx, k)
				require.NoError(tb, err)
				require.NoError(tb, l.Release(ctx))
				break
			}
		}
	}
	// Lane dials finish in the background: wait until every lane is up on
	// both sides before taking the baseline.
	const lanes = 3 * DefaultLaneConns
	require.Eventually(tb, func() bool {
		for i, s := range srvs {
			if s.Stats().Connections != DefaultLaneConns || c.servers[i].pool.Stats().LaneConns != DefaultLaneConns {
				return false
			}
		}
		return cc.open.Load() == lanes
	}, testTimeout, time.Millisecond)
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	g0 := runtime.NumGoroutine()

	locks := make([]*Lock, n)
	var wg sync.WaitGroup
	const workers = 64
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				l, err := c.Lock(ctx, keys[i], LeaseTTL(holdTTL))
				if err != nil {
					tb.Error(err)
					return
				}
				locks[i] = l
			}
		})
	}
	wg.Wait()
	require.False(tb, tb.Failed())
	runtime.GC()
	runtime.ReadMemStats(&m1)
	var fp holdFootprint
	fp.goroutines = runtime.NumGoroutine() - g0
	fp.heapPerLease = float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / float64(n)
	fp.conns = int(cc.open.Load())

	// One full renewal cycle, however long the machine takes for it. The
	// keepalive (10 s) pings no lane that carries renewals, so the writes
	// counted are renewal batches.
	s0, w0, t0 := c.renewStats(), cc.writes.Load(), time.Now()
	if clk != nil {
		// No acquire is in flight, so the clock may move.
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		require.True(tb, stepRenewals(tb, ctx, c, clk, holdInterval/8, int64(n), nil))
	} else {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for deadline := time.Now().Add(2 * time.Minute); c.renewStats().Renewed-s0.Renewed < int64(n); {
			<-tick.C
			if time.Now().After(deadline) {
				tb.Fatalf("no full renewal cycle: %+v after %+v", c.renewStats(), s0)
			}
		}
	}
	s1, w1, el := c.renewStats(), cc.writes.Load(), time.Since(t0).Seconds()
	fp.renewals = s1.Renewed - s0.Renewed
	fp.renewalWrites = w1 - w0
	fp.renewalsS = float64(fp.renewals) / el
	fp.renewalPerWrite = float64(fp.renewals) / float64(max(fp.renewalWrites, 1))
	require.Zero(tb, s1.Lost)
	for _, l := range locks {
		require.NoError(tb, l.Err())
	}
	// Released as they were acquired, pipelined by the workers.
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				if err := locks[i].Release(ctx); err != nil {
					tb.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	runtime.KeepAlive(locks)
	return fp
}

// Holding 10,000 leases costs no goroutine and no connection per lease,
// and their renewals are batched. How fast the machine renews is reported,
// not asserted (BenchmarkHold10000Leases measures it).
func TestHoldTenThousandLeasesFootprint(t *testing.T) {
	if testing.Short() {
		t.Skip("holds 10,000 leases")
	}
	fp := measureHold(t, 10000, testutil.NewManualClock(time.Now().Round(0)))
	t.Logf("10,000 leases on 3 servers: %d extra goroutines, %d connections, %.0f B heap per lease; "+
		"%d renewals in %d writes (%.0f per write), %.0f renewals/s",
		fp.goroutines, fp.conns, fp.heapPerLease, fp.renewals, fp.renewalWrites, fp.renewalPerWrite, fp.renewalsS)
	assert.LessOrEqual(t, fp.goroutines, 10, "goroutines grow with leases")
	assert.LessOrEqual(t, fp.conns, 3*DefaultLaneConns+3, "connections grow with leases")
	assert.Less(t, fp.heapPerLease, 2048.0, "heap per lease")
	assert.GreaterOrEqual(t, fp.renewalPerWrite, 10.0, "renewals are not batched")
}

func BenchmarkHold10000Leases(b *testing.B) {
	var fp holdFootprint
	for range b.N {
		fp = measureHold(b, 10000, nil)
	}
	b.ReportMetric(float64(fp.goroutines), "goroutines")
	b.ReportMetric(float64(fp.conns), "conns")
	b.ReportMetric(fp.heapPerLease, "heap-B/lease")
	b.ReportMetric(fp.renewalPerWrite, "renewals/write")
	b.ReportMetric(fp.renewalsS, "renewals/s")
}
