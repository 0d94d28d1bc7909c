package renew

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/wire"
)

// testOwner is a test double of the network peer: it records every
// SendBatch and answers each request as its script says, in FIFO order on
// what behaves like one reader goroutine per connection (a callback that
// blocks holds up every later answer of that owner, as on *pool.Conn).
type testOwner struct {
	script func(req wire.Request) answer
	now    func() time.Time // stamps sentBatch.at: the scheduler's clock

	mu       sync.Mutex
	failed   error // Err's answer (set by fail)
	batches  []sentBatch
	answered int           // done callbacks made
	changed  chan struct{} // signalled (non-blocking) on every record/answer
	last     chan struct{} // closed when the latest batch's answers are done
	wg       sync.WaitGroup
}

type sentBatch struct {
	at   time.Time
	reqs []wire.Request
}

type answerKind int

const (
	answerOK        answerKind = iota // ok <TTL>
	answerRefuse                      // error
	answerNever                       // no reply
	answerTransport                   // connection broken
	answerSync                        // ok, synchronously inside SendBatch
)

type answer struct {
	kind  answerKind
	gate  <-chan struct{} // if non-nil, wait for it before answering
	delay time.Duration
}

var errTransport = errors.New("test: connection reset")

// newOwner makes a test owner whose answering goroutines are awaited at
// cleanup (create it before the scheduler, so the scheduler closes first).
func newOwner(t testing.TB, script func(wire.Request) answer) *testOwner {
	if script == nil {
		script = func(wire.Request) answer { return answer{} }
	}
	o := &testOwner{script: script, now: time.Now, changed: make(chan struct{}, 1)}
	t.Cleanup(o.wg.Wait)
	return o
}

func okOwner(t testing.TB) *testOwner { return newOwner(t, nil) }

func (o *testOwner) answeredOne() {
	o.mu.Lock()
	o.answered++
	o.mu.Unlock()
	o.signal()
}

// waitAnswered waits until n answers have been delivered.
func (o *testOwner) waitAnswered(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		got := o.answered
		o.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-o.changed:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %d answers (got %d)", n, got)
		}
	}
}

func (o *testOwner) signal() {
	select {
	case o.changed <- struct{}{}:
	default:
	}
}

// Err reports the failure recorded by fail.
func (o *testOwner) Err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.failed
}

// fail marks the owner's connection as failed (Err turns non-nil).
func (o *testOwner) fail(err error) {
	o.mu.Lock()
	o.failed = err
	o.mu.Unlock()
}

func (o *testOwner) SendBatch(reqs []wire.Request, done func(int, wire.Reply, error)) {
	cp := append([]wire.Request(nil), reqs...)
	o.mu.Lock()
	o.batches = append(o.batches, sentBatch{at: o.now(), reqs: cp})
	o.mu.Unlock()
	o.signal()
	answers := make([]answer, len(cp))
	async := false
	for i, r := range cp {
		answers[i] = o.script(r)
		if answers[i].kind == answerSync {
			done(i, wire.Reply{Status: wire.StatusOK, Lease: r.Lease}, nil)
			o.answeredOne()
		} else {
			async = true
		}
	}
	if !async {
		return
	}
	o.mu.Lock()
	prev, mine := o.last, make(chan struct{})
	o.last = mine
	o.mu.Unlock()
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		defer close(mine)
		if prev != nil {
			<-prev // the previous batch's answers come first
		}
		for i, r := range cp {
			a := answers[i]
			if a.gate != nil {
				<-a.gate
			}
			if a.delay > 0 {
				time.Sleep(a.delay) // simulated network latency
			}
			switch a.kind {
			case answerOK:
				done(i, wire.Reply{Status: wire.StatusOK, Lease: r.Lease}, nil)
			case answerRefuse:
				done(i, wire.Reply{Status: wire.StatusError}, nil)
			case answerTransport:
				done(i, wire.Reply{}, errTransport)
			default:
				continue
			}
			o.answeredOne()
		}
	}()
}

// snapshot returns the batches recorded so far.
func (o *testOwner) snapshot() []sentBatch {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]sentBatch(nil), o.batches...)
}

// waitFor waits until cond(batches) holds, failing the test after timeout.
func (o *testOwner) waitFor(t *testing.T, timeout time.Duration, what string, cond func([]sentBatch) bool) []sentBatch {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if b := o.snapshot(); cond(b) {
			return b
		}
		select {
		case <-o.changed:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; batches: %d", timeout, what, len(o.snapshot()))
		}
	}
}

func (o *testOwner) waitBatches(t *testing.T, n int, timeout time.Duration) []sentBatch {
	t.Helper()
	return o.waitFor(t, timeout, "batches", func(b []sentBatch) bool { return len(b) >= n })
}

// requests returns every recorded request with cmd for key, with its send time.
func requestsFor(bs []sentBatch, cmd wire.Command, key string) []time.Time {
	var at []time.Time
	for _, b := range bs {
		for _, r := range b.reqs {
			if r.Cmd == cmd && r.Key == key {
				at = append(at, b.at)
			}
		}
	}
	return at
}

// valueOwner is an Owner whose dynamic type is not comparable, as a user's
// value-receiver Owner holding a slice is.
type valueOwner []string

func (valueOwner) SendBatch([]wire.Request, func(int, wire.Reply, error)) {}
func (valueOwner) Err() error                                             { return nil }

// holderOwner is comparable as a type, but hashing one that holds a
// valueOwner panics.
type holderOwner struct{ inner any }

func (holderOwner) SendBatch([]wire.Request, func(int, wire.Reply, error)) {}
func (holderOwner) Err() error                                             { return nil }

// Track answers an owner it cannot use — not comparable (a map key of the
// scheduler), or a nil pointer (its Err would dereference it) — with a
// lease lost at once that names Spec.Owner. Both panicked under the
// scheduler's mutex, wedging every later call if the panic was recovered
// (review "low"). A zero Lease, never tracked, is not held either.
func TestTrackRefusesAnOwnerItCannotUse(t *testing.T) {
	t.Parallel()
	s := New(Config{})
	defer s.Close()
	for name, o := range map[string]Owner{
		"not comparable":           valueOwner{"a"},
		"holding a non-comparable": holderOwner{inner: valueOwner{"a"}},
		"nil pointer":              (*testOwner)(nil),
	} {
		var l *Lease
		require.NotPanics(t, func() { l = s.Track(Spec{Key: "k", Token: "t", TTL: 30 * time.Second, Owner: o}) }, name)
		require.ErrorIs(t, l.Err(), ErrLost, name)
		require.ErrorContains(t, l.Err(), "Spec.Owner", name)
	}
	require.Zero(t, s.Stats().Leases)
	var zero Lease
	require.ErrorIs(t, zero.Err(), ErrNotTracked)
}

// nilSafeOwner's Err does not dereference its receiver (a common Go idiom),
// so a nil *nilSafeOwner passes ownerErrLocked; its SendBatch does.
type nilSafeOwner struct{ n int }

func (o *nilSafeOwner) SendBatch([]wire.Request, func(int, wire.Reply, error)) { o.n++ }
func (o *nilSafeOwner) Err() error                                             { return nil }

// A nil pointer whose Err is nil-safe is refused too: tracked as held, its
// first renewal called SendBatch on nil on the scheduler goroutine, where a
// panic ends the program (review "rv6": the recover-based check alone let
// it through).
func TestTrackRefusesANilPointerOwnerWithANilSafeErr(t *testing.T) {
	s := New(Config{})
	defer s.Close()
	l := s.Track(Spec{Key: "k", Token: "t", TTL: 30 * time.Second, Owner: (*nilSafeOwner)(nil)})
	require.ErrorIs(t, l.Err(), ErrLost, "a nil-pointer owner must not be believed held")
}
