package renew

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/dflock-sdk/go/wire"
)

// Stress under -race with rounds actually running: many owners (more than
// the idle ring holds), renewals answered or left unanswered (losses by the
// clock, with their releases), owners failing, Track/Untrack/Renew racing
// the scheduler goroutine driven by a ManualClock, then Close. Every lease
// ends exactly once: lost (OnLost once), untracked (Untrack true) or
// handed back by Close.
func TestEveryLeaseEndsExactlyOnceUnderRounds(t *testing.T) {
	type slot struct {
		mu sync.Mutex
		o  *testOwner
	}
	clk := newManualClock()
	var silent sync.Map // *testOwner → true: answers nothing
	mkOwner := func() *testOwner {
		var o *testOwner
		o = newOwner(t, func(wire.Request) answer {
			if _, ok := silent.Load(o); ok {
				return answer{kind: answerNever}
			}
			return answer{kind: answerSync}
		})
		o.now = clk.Now
		return o
	}
	slots := make([]*slot, 40)
	for i := range slots {
		slots[i] = &slot{o: mkOwner()}
	}
	var lostCalls sync.Map // *Lease → *atomic count
	var twice atomic.Int64
	onLost := lossFunc(func(l *Lease, err error) {
		v, _ := lostCalls.LoadOrStore(l, new(atomic.Int64))
		if v.(*atomic.Int64).Add(1) > 1 {
			twice.Add(1)
		}
	})
	s := New(Config{Clock: clk})
	var all sync.Map // *Lease → untracked bool (*atomic.Bool)
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			for i := range 400 {
				if i%8 == 0 {
					clk.Advance(9 * time.Millisecond)
				}
				sl := slots[(g*7+i)%len(slots)]
				sl.mu.Lock()
				o := sl.o
				sl.mu.Unlock()
				l := s.Track(Spec{Key: "k", Token: "t", TTL: 2 * time.Second, Owner: o, Sent: clk.Now(), OnLost: onLost})
				un := new(atomic.Bool)
				all.Store(l, un)
				switch i % 5 {
				case 0:
					if l.Untrack() {
						un.Store(true)
					}
				case 1:
					if i%15 == 1 {
						silent.Store(o, true)
					}
				case 2:
					if i%20 == 2 {
						sl.mu.Lock()
						if sl.o == o {
							o.fail(errTransport)
							sl.o = mkOwner()
						}
						sl.mu.Unlock()
						s.OwnerFailed(o, errTransport)
					}
				}
			}
		})
	}
	wg.Wait()
	held := s.Close()
	heldSet := map[*Lease]bool{}
	for _, l := range held {
		heldSet[l] = true
	}
	n, bad, expired := 0, 0, 0
	all.Range(func(k, v any) bool {
		n++
		l := k.(*Lease)
		if errors.Is(l.Err(), errExpired) {
			expired++
		}
		ends := 0
		if v.(*atomic.Bool).Load() {
			ends++
		}
		if heldSet[l] {
			ends++
		}
		if _, ok := lostCalls.Load(l); ok {
			ends++
		} else if errors.Is(l.Err(), ErrLost) {
			bad++ // lost without OnLost
			return true
		}
		if ends != 1 {
			bad++
		}
		return true
	})
	assert.Zero(t, twice.Load(), "OnLost twice")
	assert.Zero(t, bad, "of %d leases, ended other than exactly once", n)
	t.Logf("%d leases, %d handed back, %d lost by the clock, %d rounds", n, len(held), expired, s.Stats().Rounds)
}
