package renew

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Done is made on first use (most leases are released without anyone
// waiting on it): one taken while the lease is held is closed when it ends,
// one first taken afterwards is closed already, and every call returns the
// same channel. Goroutines taking Done while the lease ends race on nothing.
func TestDoneIsClosedWhetherFirstTakenBeforeOrAfterTheEnd(t *testing.T) {
	t.Parallel()
	s := newTestScheduler(t, Config{})
	o := okOwner(t)
	before := s.Track(Spec{Key: "before", Token: "t", TTL: time.Minute, Owner: o})
	after := s.Track(Spec{Key: "after", Token: "t", TTL: time.Minute, Owner: o})
	released := s.Track(Spec{Key: "released", Token: "t", TTL: time.Minute, Owner: okOwner(t)})
	done := before.Done()
	select {
	case <-done:
		t.Fatal("Done closed while the lease is held")
	default:
	}
	assert.Equal(t, done, before.Done())
	require.NoError(t, after.Err())

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			<-after.Done()
			assert.ErrorIs(t, after.Err(), ErrLost)
		})
	}
	s.OwnerFailed(o, errors.New("boom"))
	wg.Wait()
	waitDone(t, before, waitShort)
	assert.ErrorIs(t, before.Err(), ErrLost)

	require.True(t, released.Untrack())
	select {
	case <-released.Done():
	default:
		t.Fatal("Done first taken after Untrack is not closed")
	}
	assert.Equal(t, ErrReleased, released.Err())
}

// Tracking and untracking the one lease of an owner allocates the Lease and
// nothing else: not its Done channel (made on first use), not the owner's
// index entry (kept while the owner is idle), not a loss closure (OnLost is
// an interface, which dflock satisfies with a pointer it has anyway).
func TestTrackAndUntrackAllocateOnlyTheLease(t *testing.T) { // not parallel: AllocsPerRun counts the process's allocations
	s, _ := manualScheduler(t, Config{})
	var c Counters
	var onLost LossHandler = lossFunc(func(*Lease, error) {})
	allocs := testing.AllocsPerRun(100, func() {
		l := s.Track(Spec{Key: "k", Token: "t", TTL: time.Minute, Owner: nopOwner{}, OnLost: onLost, Counters: &c})
		if !l.Untrack() {
			panic("lease not held")
		}
	})
	assert.Equal(t, 1.0, allocs)
}

// The index entries of owners without leases are kept for the owners that
// became idle last, and no more: a client that cycles through many
// connections (wait-pool connections dialled and closed) must not
// accumulate them. OwnerFailed drops an idle entry at once.
func TestIdleOwnersKeptAreBounded(t *testing.T) {
	t.Parallel()
	s := newTestScheduler(t, Config{})
	owners := make([]*testOwner, 3*len(s.idle))
	for i := range owners {
		owners[i] = okOwner(t)
		l := s.Track(Spec{Key: fmt.Sprint("k", i), Token: "t", TTL: time.Minute, Owner: owners[i]})
		require.True(t, l.Untrack())
	}
	held := s.Track(Spec{Key: "held", Token: "t", TTL: time.Minute, Owner: owners[0]})
	ownerCount := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.owners)
	}
	assert.Equal(t, len(s.idle)+1, ownerCount(), "the last %d idle owners and the one holding a lease", len(s.idle))

	last := owners[len(owners)-1]
	s.OwnerFailed(last, errors.New("boom"))
	assert.Equal(t, len(s.idle), ownerCount())
	// The next owners to go idle push the rest out; held's owner stays.
	for i := range len(s.idle) {
		l := s.Track(Spec{Key: fmt.Sprint("again", i), Token: "t", TTL: time.Minute, Owner: okOwner(t)})
		require.True(t, l.Untrack())
	}
	assert.Equal(t, len(s.idle)+1, ownerCount())
	s.mu.Lock()
	assert.Equal(t, 1, s.owners[owners[0]].n)
	s.mu.Unlock()
	assert.NoError(t, held.Err())
}
