package renew

import (
	"testing"
	"time"

	"github.com/dflock-sdk/go/wire"
)

// A renewal is counted as Renewed only once the scheduler has applied it
// (moved the lease's loss deadline). dflock's tests (awaitConfirmed) and
// users of Stats advance a clock once Renewed says the replies arrived; if
// the count comes first, an Advance in the gap finds the lease still in
// flight with its old deadline and declares it lost
// (TestRenewalKeepsShortLeaseHeld's rare flake).
func TestRenewedIsCountedOnlyOnceApplied(t *testing.T) {
	gate := make(chan struct{})
	o := newOwner(t, func(wire.Request) answer { return answer{gate: gate} })
	clk := newManualClock()
	s := newTestScheduler(t, Config{Ratio: 0.05, Clock: clk})
	var c Counters
	l := s.Track(Spec{Key: "k", Token: "t", Owner: o, TTL: 2 * time.Second, Counters: &c})
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	clk.Advance(1500 * time.Millisecond)
	for dl := time.Now().Add(waitShort); c.Sent.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(dl) {
			t.Fatal("no renewal sent")
		}
	}
	// Hold the scheduler's mutex: the reply cannot be applied meanwhile.
	s.mu.Lock()
	close(gate)
	counted := false
	for dl := time.Now().Add(300 * time.Millisecond); time.Now().Before(dl); time.Sleep(time.Millisecond) {
		if c.Renewed.Load() > 0 {
			counted = true
			break
		}
	}
	s.mu.Unlock()
	if counted {
		t.Fatal("the renewal was counted as Renewed before the scheduler applied it (lease deadline not yet moved)")
	}
	for dl := time.Now().Add(waitShort); c.Renewed.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(dl) {
			t.Fatal("renewal never counted")
		}
	}
}
