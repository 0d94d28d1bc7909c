package renew

import "container/heap"

// leaseHeap is a min-heap of leases ordered by Lease.next
// (container/heap.Interface); each lease knows its index.
type leaseHeap []*Lease

func (h leaseHeap) Len() int           { return len(h) }
func (h leaseHeap) Less(i, j int) bool { return h[i].next < h[j].next }
func (h leaseHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = int32(i)
	h[j].idx = int32(j)
}

// removeOwner takes every lease of owner o out of h in one pass and
// restores the heap: for the many leases of a broken connection, cheaper
// than one heap.Remove each.
func (h *leaseHeap) removeOwner(o Owner) {
	kept := (*h)[:0]
	for _, l := range *h {
		if l.owner == o {
			l.idx = -1
			continue
		}
		l.idx = int32(len(kept))
		kept = append(kept, l)
	}
	clear((*h)[len(kept):])
	*h = kept
	heap.Init(h)
}

func (h *leaseHeap) Push(x any) {
	l := x.(*Lease)
	l.idx = int32(len(*h))
	*h = append(*h, l)
}

func (h *leaseHeap) Pop() any {
	old := *h
	n := len(old) - 1
	l := old[n]
	old[n] = nil
	l.idx = -1
	*h = old[:n]
	if c := cap(old); c > keepHeapCap && n < c/4 {
		// A peak of held leases has passed: a Client lives for weeks
		// and need not keep that peak's array (the positions, and so
		// the leases' idx, stay).
		*h = append(make(leaseHeap, 0, c/2), old[:n]...)
	}
	return l
}

// keepHeapCap is the capacity below which the heap never shrinks.
const keepHeapCap = 4096
