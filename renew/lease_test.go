package renew

import (
	"errors"
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
