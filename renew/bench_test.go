package renew

import (
	"container/heap"
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/dflock-sdk/go/wire"
)

// nopOwner answers every request ok, synchronously.
type nopOwner struct{}

func (nopOwner) Err() error { return nil }

func (nopOwner) SendBatch(reqs []wire.Request, done func(int, wire.Reply, error)) {
	for i, r := range reqs {
		done(i, wire.Reply{Status: wire.StatusOK, Lease: r.Lease}, nil)
	}
}

func BenchmarkTrackUntrack(b *testing.B) {
	s := New(Config{})
	defer s.Close()
	o := &nopOwner{}
	spec := Spec{Key: "bench", Token: "0123456789abcdef0123456789abcdef", TTL: 60 * time.Second, Owner: o}
	// Some background leases so the heap is not trivially empty.
	for i := range 1000 {
		sp := spec
		sp.Key = "bg" + strconv.Itoa(i)
		s.Track(sp)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.Track(spec).Untrack()
	}
}

// BenchmarkRound measures one renewal round of 10,000 due leases on one
// owner that answers ok at once (send, batch, callbacks, heap fixes).
func BenchmarkRound(b *testing.B) {
	const n = 10000
	s := newScheduler(Config{}) // no goroutine: the benchmark drives tick
	o := &nopOwner{}
	var c Counters
	for i := range n {
		s.Track(Spec{Key: "k" + strconv.Itoa(i), Token: "0123456789abcdef0123456789abcdef", TTL: 60 * time.Second, Owner: o, Counters: &c})
	}
	// Due times spread over the last second, in no order, as leases
	// granted at different moments are: the heap does real work.
	rng := rand.New(rand.NewPCG(1, 2))
	makeDue := func() {
		s.mu.Lock()
		now := s.now()
		for _, l := range s.heap {
			l.renewAt = now - rng.Int64N(int64(time.Second))
			l.next = l.renewAt
		}
		heap.Init(&s.heap)
		s.mu.Unlock()
	}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		makeDue()
		b.StartTimer()
		s.tick()
	}
	b.StopTimer()
	st := s.Stats()
	if c.Renewed.Load() < int64(n) || c.Lost.Load() != 0 || st.Batches != st.Rounds {
		b.Fatalf("unexpected stats %+v, %d renewed, %d lost", st, c.Renewed.Load(), c.Lost.Load())
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/lease")
}

// BenchmarkHeapPerLease reports the heap bytes held per tracked lease.
func BenchmarkHeapPerLease(b *testing.B) {
	const n = 10000
	o := &nopOwner{}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	const token = "0123456789abcdef0123456789abcdef"
	var total float64
	for b.Loop() {
		s := New(Config{})
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		leases := make([]*Lease, n) // counted too: the caller keeps its *Lease
		for i := range n {
			leases[i] = s.Track(Spec{Key: keys[i], Token: token, TTL: 60 * time.Second, Owner: o})
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		// Signed: a collection of earlier garbage can leave less than before.
		total += float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n
		runtime.KeepAlive(leases)
		s.Close()
	}
	b.ReportMetric(total/float64(b.N), "bytes/lease")
}

// BenchmarkHeldLeaseChecks measures what a caller pays to ask a held lease
// whether it still is (Err, Done, its Context's Err), as code that checks
// before each unit of work does.
func BenchmarkHeldLeaseChecks(b *testing.B) {
	s := New(Config{})
	defer s.Close()
	l := s.Track(Spec{Key: "bench", Token: "0123456789abcdef0123456789abcdef", TTL: 60 * time.Second, Owner: &nopOwner{}})
	ctx := l.Context()
	b.Run("Err", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if l.Err() != nil {
				b.Fatal(l.Err())
			}
		}
	})
	b.Run("Done", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			select {
			case <-l.Done():
				b.Fatal(l.Err())
			default:
			}
		}
	})
	b.Run("ContextErr", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if ctx.Err() != nil {
				b.Fatal(ctx.Err())
			}
		}
	})
}
