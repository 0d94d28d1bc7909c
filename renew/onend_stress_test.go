package renew

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Stress under -race: OnEnd, its stop, Untrack, OwnerFailed, Err/Done/
// Context and Close racing. f runs at most once; when it is never stopped
// it runs exactly once, and before Done closes; an OnEnd on an ended lease
// runs f before it returns, after the Context is cancelled.
func TestOnEndStress(t *testing.T) {
	owners := make([]*testOwner, 8)
	for i := range owners {
		owners[i] = okOwner(t)
	}
	s := New(Config{})
	closed := false
	t.Cleanup(func() {
		if !closed {
			s.Close()
		}
	})
	var bad atomic.Int64
	var mu sync.Mutex
	var ex []string
	note := func(f string, a ...any) {
		bad.Add(1)
		mu.Lock()
		if len(ex) < 5 {
			ex = append(ex, fmt.Sprintf(f, a...))
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	stopAll := make(chan struct{})
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stopAll:
					return
				default:
				}
				o := owners[rand.IntN(len(owners))]
				l := s.Track(Spec{Key: fmt.Sprintf("k%d-%d", g, i), Token: "t", TTL: time.Minute, Owner: o})
				var runs atomic.Int32
				stopIt := rand.IntN(2) == 0
				var stop func()
				reg := func() {
					stop = l.OnEnd(func(err error) {
						if runs.Add(1) > 1 {
							note("f ran twice")
						}
						if err == nil {
							note("f ran with nil err")
						}
					})
				}
				var inner sync.WaitGroup
				if rand.IntN(3) == 0 {
					inner.Go(func() { s.OwnerFailed(o, errors.New("drop")) })
				}
				if rand.IntN(3) == 0 {
					inner.Go(func() { l.Untrack() })
				}
				if rand.IntN(2) == 0 {
					inner.Go(func() { _ = l.Err(); <-l.Context().Done() })
				}
				reg()
				if stopIt {
					stop()
				}
				inner.Wait()
				l.Untrack()
				<-l.Done()
				if l.Context().Err() == nil {
					note("context live after Done")
				}
				if !stopIt && runs.Load() != 1 {
					note("f not stopped ran %d times after Done closed", runs.Load())
				}
				// After the end: f runs at once, after Context is cancelled.
				var late atomic.Bool
				l.OnEnd(func(error) {
					if l.ctx != nil && l.Context().Err() == nil {
						note("late f before Context cancel")
					}
					late.Store(true)
				})
				if !late.Load() {
					note("OnEnd on an ended lease did not run f at once")
				}
			}
		})
	}
	time.Sleep(1500 * time.Millisecond)
	// Close racing OnEnd/stop on live leases.
	wg.Go(func() {
		for range 200 {
			l := s.Track(Spec{Key: "c", Token: "t", TTL: time.Minute, Owner: owners[0]})
			stop := l.OnEnd(func(error) {})
			stop()
		}
	})
	s.Close()
	closed = true
	close(stopAll)
	wg.Wait()
	require0(t, bad.Load(), ex)
}

func require0(t *testing.T, n int64, ex []string) {
	t.Helper()
	if n != 0 {
		t.Fatalf("%d violations: %v", n, ex)
	}
}
