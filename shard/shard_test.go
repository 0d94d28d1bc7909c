package shard_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/shard"
)

// servers returns n distinct addresses "10.0.0.1:6388" ...
func servers(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("10.0.0.%d:6388", i+1)
	}
	return s
}

func keys(n int) []string {
	k := make([]string, n)
	for i := range k {
		k[i] = "key-" + strconv.Itoa(i)
	}
	return k
}

func place(t *testing.T, s shard.Strategy, servers []string) shard.Placement {
	t.Helper()
	p, err := s.Place(servers)
	require.NoError(t, err)
	return p
}

func TestCRC32MatchesTheOfficialClientsGoldenVectors(t *testing.T) {
	t.Parallel()
	// docs/protocol.md §9: key -> server index for 1, 2, 3 and 5 servers.
	golden := []struct {
		key  string
		want [4]int
	}{
		{"my-key", [4]int{0, 1, 2, 2}},
		{"a", [4]int{0, 1, 0, 2}},
		{"orders:42", [4]int{0, 1, 1, 2}},
		{"user/17", [4]int{0, 1, 0, 2}},
		{"\u00e9", [4]int{0, 0, 2, 1}}, // é, UTF-8 c3 a9
	}
	for i, n := range []int{1, 2, 3, 5} {
		p := place(t, shard.CRC32, servers(n))
		for _, g := range golden {
			assert.Equal(t, g.want[i], p.Server(g.key), "key %q, %d servers", g.key, n)
		}
	}
}

func TestCRC32DependsOnListPositionsNotAddresses(t *testing.T) {
	t.Parallel()
	s := servers(5)
	p := place(t, shard.CRC32, s)
	r := slices.Clone(s)
	slices.Reverse(r)
	reversed := place(t, shard.CRC32, r)
	for _, k := range keys(1000) {
		assert.Equal(t, p.Server(k), reversed.Server(k), "key %q", k)
	}
}

func TestRingPlacementIsPinned(t *testing.T) {
	t.Parallel()
	// The Ring algorithm is part of the compatibility promise: processes on
	// different SDK versions must agree. These vectors were checked against an
	// independent linear-scan implementation of the documented algorithm; a
	// change here breaks mutual exclusion in fleets that mix SDK versions.
	s := servers(5)
	p := place(t, shard.Ring, s)
	golden := map[string]string{
		"my-key":    "10.0.0.4:6388",
		"a":         "10.0.0.5:6388",
		"orders:42": "10.0.0.4:6388",
		"user/17":   "10.0.0.4:6388",
		"\u00e9":    "10.0.0.3:6388",
		"":          "10.0.0.1:6388",
		"k1":        "10.0.0.3:6388",
		"k2":        "10.0.0.2:6388",
		"k3":        "10.0.0.5:6388",
		"k4":        "10.0.0.3:6388",
		"k5":        "10.0.0.2:6388",
	}
	for k, want := range golden {
		assert.Equal(t, want, s[p.Server(k)], "key %q", k)
	}
}

func TestRingSpreadsKeysEvenly(t *testing.T) {
	t.Parallel()
	const nKeys, nServers = 200_000, 10
	p := place(t, shard.Ring, servers(nServers))
	counts := make([]int, nServers)
	for _, k := range keys(nKeys) {
		counts[p.Server(k)]++
	}
	mean := float64(nKeys) / nServers
	busiest := float64(slices.Max(counts)) / mean
	idlest := float64(slices.Min(counts)) / mean
	t.Logf("%d keys over %d servers: busiest %.4f x mean, idlest %.4f x mean, counts %v",
		nKeys, nServers, busiest, idlest, counts)
	assert.LessOrEqual(t, busiest, 1.10)
}

func TestRingAddingAServerMovesFewKeysAllToTheNewServer(t *testing.T) {
	t.Parallel()
	const nKeys = 200_000
	ten := servers(10)
	added := "10.0.0.11:6388"
	// The new server goes first, so any dependence on list order shows.
	eleven := append([]string{added}, ten...)
	before, after := place(t, shard.Ring, ten), place(t, shard.Ring, eleven)
	moved := 0
	for _, k := range keys(nKeys) {
		was, is := ten[before.Server(k)], eleven[after.Server(k)]
		if was != is {
			moved++
			if is != added {
				assert.Failf(t, "key moved to an old server", "key %q moved from %s to %s", k, was, is)
			}
		}
	}
	frac := float64(moved) / nKeys
	t.Logf("adding an 11th server moved %d of %d keys (%.4f; ideal 1/11 = %.4f)", moved, nKeys, frac, 1.0/11)
	assert.LessOrEqual(t, frac, 1.0/11+0.01)
}

func TestRingDependsOnAddressesNotOrder(t *testing.T) {
	t.Parallel()
	s := servers(7)
	p := place(t, shard.Ring, s)
	shuffled := slices.Clone(s)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) {
		shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
	})
	q := place(t, shard.Ring, shuffled)
	for _, k := range keys(10_000) {
		assert.Equal(t, s[p.Server(k)], shuffled[q.Server(k)], "key %q", k)
	}
}

func TestRingRemovingAServerMovesOnlyItsKeys(t *testing.T) {
	t.Parallel()
	s := servers(6)
	before := place(t, shard.Ring, s)
	rest := slices.Delete(slices.Clone(s), 2, 3)
	after := place(t, shard.Ring, rest)
	for _, k := range keys(20_000) {
		if was := s[before.Server(k)]; was != s[2] {
			assert.Equal(t, was, rest[after.Server(k)], "key %q", k)
		}
	}
}

func TestPlacementIsDeterministic(t *testing.T) {
	t.Parallel()
	for name, st := range map[string]shard.Strategy{
		"Ring":     shard.Ring,
		"CRC32":    shard.CRC32,
		"Ring(40)": shard.RingWithVirtualNodes(40),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			a, b := place(t, st, servers(9)), place(t, st, servers(9))
			for _, k := range keys(10_000) {
				i := a.Server(k)
				require.Equal(t, i, b.Server(k), "key %q", k)
				require.Equal(t, i, a.Server(k), "key %q asked twice", k)
				require.True(t, i >= 0 && i < 9, "key %q: index %d out of range", k, i)
			}
		})
	}
}

func TestPlacementIsSafeForConcurrentUse(t *testing.T) {
	t.Parallel()
	p := place(t, shard.Ring, servers(4))
	ks := keys(2000)
	want := make([]int, len(ks))
	for i, k := range ks {
		want[i] = p.Server(k)
	}
	errs := make(chan string, 8)
	for range 8 {
		go func() {
			for i, k := range ks {
				if got := p.Server(k); got != want[i] {
					errs <- fmt.Sprintf("key %q: got %d, want %d", k, got, want[i])
					return
				}
			}
			errs <- ""
		}()
	}
	for range 8 {
		assert.Empty(t, <-errs)
	}
}

func TestASingleServerOwnsEveryKey(t *testing.T) {
	t.Parallel()
	for _, st := range []shard.Strategy{shard.Ring, shard.CRC32, shard.RingWithVirtualNodes(1)} {
		p := place(t, st, []string{"127.0.0.1:6388"})
		for _, k := range keys(1000) {
			assert.Equal(t, 0, p.Server(k))
		}
	}
}

func TestPlaceRejectsBadServerLists(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		servers []string
		msg     string
	}{
		{"nil", nil, "dflock: shard: servers is empty"},
		{"empty", []string{}, "dflock: shard: servers is empty"},
		{"empty address", []string{"a:1", ""}, "dflock: shard: servers[1] is empty"},
		{"duplicate", []string{"a:1", "b:1", "a:1"}, `dflock: shard: servers[2] "a:1" duplicates servers[0]`},
	}
	for _, st := range []shard.Strategy{shard.Ring, shard.CRC32} {
		for _, c := range cases {
			p, err := st.Place(c.servers)
			assert.Nil(t, p, c.name)
			assert.EqualError(t, err, c.msg, c.name)
		}
	}
}

func TestRingWithVirtualNodesRejectsOutOfBounds(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, -1, shard.MaxVirtualNodes + 1, math.MaxInt/2 + 1, math.MaxInt} {
		p, err := shard.RingWithVirtualNodes(n).Place(servers(2))
		assert.Nil(t, p)
		assert.EqualError(t, err, fmt.Sprintf("dflock: shard: virtual nodes must be between 1 and %d, got %d", shard.MaxVirtualNodes, n))
	}
	p, err := shard.RingWithVirtualNodes(shard.MaxVirtualNodes).Place(servers(2))
	require.NoError(t, err)
	assert.NotNil(t, p)
	// Each bound holds, but not their product.
	n := shard.MaxRingPoints/shard.MaxVirtualNodes + 1
	p, err = shard.RingWithVirtualNodes(shard.MaxVirtualNodes).Place(servers(n))
	assert.Nil(t, p)
	assert.EqualError(t, err, fmt.Sprintf("dflock: shard: %d servers × %d virtual nodes exceed the ring's %d points",
		n, shard.MaxVirtualNodes, shard.MaxRingPoints))
}

func TestServerDoesNotAllocate(t *testing.T) {
	long := string(make([]byte, 300)) // longer than any stack buffer for []byte(key)
	for name, st := range map[string]shard.Strategy{"Ring": shard.Ring, "CRC32": shard.CRC32} {
		p := place(t, st, servers(10))
		allocs := testing.AllocsPerRun(100, func() {
			p.Server("orders:42")
			p.Server(long)
		})
		assert.Zero(t, allocs, name)
	}
}

func BenchmarkServer(b *testing.B) {
	for _, n := range []int{3, 10, 100} {
		for name, st := range map[string]shard.Strategy{"Ring": shard.Ring, "CRC32": shard.CRC32} {
			b.Run(fmt.Sprintf("%s/servers=%d", name, n), func(b *testing.B) {
				p, err := st.Place(servers(n))
				require.NoError(b, err)
				ks := keys(4096)
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					p.Server(ks[i&4095])
					i++
				}
			})
		}
	}
}

func BenchmarkRingPlace(b *testing.B) {
	s := servers(10)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := shard.Ring.Place(s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRingSpread measures, rather than times, how evenly Ring spreads
// 200k keys over 10 servers with random addresses, for several virtual node
// counts. It backs the numbers in the DefaultVirtualNodes doc:
//
//	go test -run='^$' -bench=RingSpread -benchtime=1x ./shard
func BenchmarkRingSpread(b *testing.B) {
	const nKeys, nServers, fleets = 200_000, 10, 200
	ks := keys(nKeys)
	for _, vnodes := range []int{160, 512, shard.DefaultVirtualNodes} {
		b.Run(fmt.Sprintf("vnodes=%d", vnodes), func(b *testing.B) {
			for b.Loop() {
				r := rand.New(rand.NewPCG(42, uint64(vnodes)))
				var worst, over float64
				for range fleets {
					s := make([]string, nServers)
					for i := range s {
						s[i] = fmt.Sprintf("10.%d.%d.%d:6388", r.IntN(256), r.IntN(256), r.IntN(256))
					}
					p, err := shard.RingWithVirtualNodes(vnodes).Place(s)
					if err != nil {
						b.Skip("random addresses collided:", err)
					}
					counts := make([]int, nServers)
					for _, k := range ks {
						counts[p.Server(k)]++
					}
					busiest := float64(slices.Max(counts)) / (nKeys / nServers)
					worst = max(worst, busiest)
					if busiest > 1.10 {
						over++
					}
				}
				b.ReportMetric(worst, "worst-busiest/mean")
				b.ReportMetric(100*over/fleets, "%fleets-over-1.10")
			}
		})
	}
}
