package renew

import (
	"container/heap"
	"testing"

	"github.com/stretchr/testify/require"
)

// After a peak of held leases the heap gives its array back (review-mem
// F3: 200k leases held then released kept a 262,144-slot array), and stays
// a heap whose leases know their places.
func TestHeapShrinksAfterAPeak(t *testing.T) {
	t.Parallel()
	var h leaseHeap
	for i := range 100_000 {
		heap.Push(&h, &Lease{next: int64((i * 7919) % 100_000)})
	}
	peak := cap(h)
	for h.Len() > 10 {
		heap.Pop(&h)
	}
	require.LessOrEqual(t, cap(h), keepHeapCap, "the heap kept its peak's array (%d slots)", peak)
	for i, l := range h {
		require.Equal(t, int32(i), l.idx)
	}
	prev := int64(-1)
	for h.Len() > 0 {
		l := heap.Pop(&h).(*Lease)
		require.GreaterOrEqual(t, l.next, prev)
		prev = l.next
	}
}
