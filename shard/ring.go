package shard

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// DefaultVirtualNodes is the number of ring points per server used by [Ring].
//
// With n points per server, a server's share of the keys varies by about
// 1/sqrt(n) around the mean. Over 200 random sets of 10 server addresses and
// 200k keys, the busiest server exceeded 1.10x the mean for 1% of the sets at
// 1024 points, 13.5% at 512 and 73% at 160, a common choice for caches
// (go test -run='^$' -bench=RingSpread -benchtime=1x ./shard). A 10-server
// ring takes about 120 KiB.
const DefaultVirtualNodes = 1024

// Ring is the default strategy: consistent hashing with [DefaultVirtualNodes]
// points per server.
//
// The algorithm, which must not change: server address s (its exact bytes)
// owns the points xxhash64(s + "#" + i) for i = 0 .. n-1, with i in decimal.
// A key belongs to the owner of the first point >= xxhash64(key), wrapping
// around to the smallest point. If two servers share a point, the one with the
// lexicographically smaller address owns it.
//
// Do not assign to Ring: processes that place keys differently hold two
// locks for one key. A Client's default placement does not read it (it is
// RingWithVirtualNodes(DefaultVirtualNodes), the same strategy), so
// assigning changes only what passes it explicitly.
var Ring Strategy = RingWithVirtualNodes(DefaultVirtualNodes)

// RingWithVirtualNodes returns the [Ring] strategy with n points per server.
// More points give a more even spread and cost memory (12 bytes per point) and
// a slightly slower lookup. Processes sharing keys must use the same n. Place
// fails if n is below 1 or above [MaxVirtualNodes], or if the ring would have
// more than [MaxRingPoints] points (servers × n).
func RingWithVirtualNodes(n int) Strategy { return ringStrategy{vnodes: n} }

// MaxVirtualNodes bounds the points per server of [RingWithVirtualNodes]:
// 64 times the default, past any gain in spread (which improves as
// 1/sqrt(n)).
const MaxVirtualNodes = 1 << 16

// MaxRingPoints bounds the points of a whole ring (servers × virtual
// nodes): 48 MiB of ring, built on every Place.
const MaxRingPoints = 1 << 22

type ringStrategy struct{ vnodes int }

func (r ringStrategy) Place(servers []string) (Placement, error) {
	if r.vnodes < 1 || r.vnodes > MaxVirtualNodes {
		return nil, fmt.Errorf("dflock: shard: virtual nodes must be between 1 and %d, got %d", MaxVirtualNodes, r.vnodes)
	}
	if err := checkServers(servers); err != nil {
		return nil, err
	}
	if len(servers) > MaxRingPoints/r.vnodes {
		return nil, fmt.Errorf("dflock: shard: %d servers × %d virtual nodes exceed the ring's %d points",
			len(servers), r.vnodes, MaxRingPoints)
	}
	type point struct {
		hash   uint64
		server int32
	}
	pts := make([]point, 0, len(servers)*r.vnodes)
	buf := make([]byte, 0, 64)
	for si, s := range servers {
		for i := range r.vnodes {
			buf = append(buf[:0], s...)
			buf = append(buf, '#')
			buf = strconv.AppendInt(buf, int64(i), 10)
			pts = append(pts, point{xxhash.Sum64(buf), int32(si)})
		}
	}
	slices.SortFunc(pts, func(a, b point) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return cmp.Compare(servers[a.server], servers[b.server])
	})
	p := &ringPlacement{
		hashes: make([]uint64, len(pts)),
		owners: make([]int32, len(pts)),
	}
	for i, pt := range pts {
		p.hashes[i], p.owners[i] = pt.hash, pt.server
	}
	return p, nil
}

// ringPlacement keeps hashes and owners in separate slices so the binary
// search touches only the 8-byte hashes.
type ringPlacement struct {
	hashes []uint64 // sorted ascending
	owners []int32  // owners[i] is the server index owning hashes[i]
}

func (p *ringPlacement) Server(key string) int {
	// The first point >= the key's hash; equal points sort by address, and
	// BinarySearch returns the first of them.
	i, _ := slices.BinarySearch(p.hashes, xxhash.Sum64String(key))
	if i == len(p.hashes) {
		i = 0
	}
	return int(p.owners[i])
}
