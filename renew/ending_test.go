package renew

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A connection that breaks with many leases ends them all in OwnerFailed.
// Cancelling a lease's Context runs through every context derived from it
// and starts a goroutine for each context.AfterFunc on it (WithLock
// registers one per lease): done under the scheduler's mutex, that held
// the renewal rounds and every reply's confirmation for hundreds of
// milliseconds with tens of thousands of leases — lateness that another
// lease's loss deadline pays for. The mutex is free by the time any
// Context is cancelled.
func TestOwnerFailedCancelsContextsWithoutTheMutex(t *testing.T) {
	t.Parallel()
	const n = 2000
	o := okOwner(t)
	s, _ := manualScheduler(t, Config{}) // no scheduler goroutine to hold the mutex meanwhile
	var once sync.Once
	free := make(chan bool, 1)
	leases := make([]*Lease, n)
	for i := range leases {
		l := s.Track(Spec{Key: fmt.Sprint("k", i), Token: "t", TTL: time.Minute, Owner: o})
		leases[i] = l
		child, cancel := context.WithCancel(l.Context())
		t.Cleanup(cancel)
		context.AfterFunc(child, func() {
			once.Do(func() {
				ok := s.mu.TryLock()
				if ok {
					s.mu.Unlock()
				}
				free <- ok
			})
		})
	}
	boom := errors.New("boom")
	s.OwnerFailed(o, boom)
	select {
	case ok := <-free:
		assert.True(t, ok, "a lease's Context was cancelled while the scheduler's mutex was held")
	case <-time.After(waitShort):
		t.Fatal("no AfterFunc ran")
	}
	// OwnerFailed returned: every lease ended, Context cancelled before
	// Done closed.
	for _, l := range leases {
		select {
		case <-l.Done():
		default:
			t.Fatalf("%s: Done still open after OwnerFailed returned", l.Key())
		}
		require.ErrorIs(t, context.Cause(l.Context()), boom)
	}
}

// Untrack (a release) returns with Done closed and the Context cancelled,
// though both happen after the mutex is released.
func TestUntrackReturnsWithDoneClosedAndContextCancelled(t *testing.T) {
	t.Parallel()
	s := newTestScheduler(t, Config{})
	l := s.Track(Spec{Key: "k", Token: "t", TTL: time.Minute, Owner: okOwner(t)})
	ctx, done := l.Context(), l.Done()
	require.True(t, l.Untrack())
	select {
	case <-done:
	default:
		t.Fatal("Done open after Untrack returned")
	}
	assert.ErrorIs(t, context.Cause(ctx), ErrReleased)
	assert.ErrorIs(t, l.Err(), ErrReleased)
}

// OwnerFailed of an owner holding a large share of the leases takes them
// out of the heap in one pass: the heap stays a heap, with every other
// owner's lease in it at the index it records.
func TestOwnerFailedBulkRemovalKeepsTheHeap(t *testing.T) {
	t.Parallel()
	a, b := okOwner(t), okOwner(t)
	s := newTestScheduler(t, Config{})
	var lb []*Lease
	for i := range 300 {
		s.Track(Spec{Key: fmt.Sprint("a", i), Token: "t", TTL: time.Duration(30+i%7) * time.Second, Owner: a})
		lb = append(lb, s.Track(Spec{Key: fmt.Sprint("b", i), Token: "t", TTL: time.Duration(30+i%5) * time.Second, Owner: b}))
	}
	s.OwnerFailed(a, errors.New("boom"))
	s.mu.Lock()
	defer s.mu.Unlock()
	require.Len(t, s.heap, len(lb))
	for i, l := range s.heap {
		require.Equal(t, int32(i), l.idx, "lease %s", l.key)
		require.Equal(t, Owner(b), l.owner)
		if i > 0 {
			require.LessOrEqual(t, s.heap[(i-1)/2].next, l.next, "heap order at %d", i)
		}
	}
	for _, l := range lb {
		require.Equal(t, stateTracked, l.state)
		require.GreaterOrEqual(t, l.idx, int32(0))
	}
}

// OnEnd's function runs as the lease ends, before Done closes (whoever
// wakes on Done finds it has run); at once if the lease has ended; never
// once stopped.
func TestOnEndRunsBeforeDoneCloses(t *testing.T) {
	t.Parallel()
	s, _ := manualScheduler(t, Config{})
	o := okOwner(t)
	l := s.Track(Spec{Key: "k", Token: "t", TTL: time.Minute, Owner: o})
	var got error
	l.OnEnd(func(err error) { got = err })
	done := l.Done()
	boom := errors.New("boom")
	s.OwnerFailed(o, boom)
	<-done
	require.ErrorIs(t, got, ErrLost, "the function ran before Done closed")
	require.ErrorIs(t, got, boom)

	var late error
	l.OnEnd(func(err error) { late = err })
	require.ErrorIs(t, late, ErrLost, "registered after the end: runs at once")

	l2 := s.Track(Spec{Key: "k2", Token: "t", TTL: time.Minute, Owner: okOwner(t)})
	ran := false
	stop := l2.OnEnd(func(error) { ran = true })
	stop()
	require.True(t, l2.Untrack())
	require.False(t, ran, "stopped before the end")
}
