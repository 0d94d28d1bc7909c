package renew

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/wire"
)

// A client process frozen or starved of CPU past a lease's loss deadline
// (GC, SIGSTOP, a paused VM) resumes with the scheduler goroutine's round
// still to come: here it never comes until the test ticks. Whatever the
// holder asks first must already say "lost" — by then the server may have
// handed the lock to someone else — and the loss must be the very one
// that round would have declared: counted once, OnEnd and OnLost called
// once, the release sent (by the scheduler, once poked), no renewal.
func TestOverdueLeaseReportsItsLossWhenAskedBeforeTheSchedulersRound(t *testing.T) {
	t.Parallel()
	asks := map[string]func(t *testing.T, l *Lease, ctx context.Context) error{
		"Err": func(_ *testing.T, l *Lease, _ context.Context) error { return l.Err() },
		"Done": func(t *testing.T, l *Lease, _ context.Context) error {
			select {
			case <-l.Done():
				return l.Err()
			default:
				t.Fatal("Done open")
				return nil
			}
		},
		"Context made before": func(t *testing.T, l *Lease, ctx context.Context) error {
			require.Error(t, ctx.Err())
			return context.Cause(ctx)
		},
		"Context made before, its Done": func(t *testing.T, l *Lease, ctx context.Context) error {
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			default:
				t.Fatal("the Context's Done open")
				return nil
			}
		},
		"Context made after": func(t *testing.T, l *Lease, _ context.Context) error {
			ctx := l.Context()
			require.Error(t, ctx.Err())
			return context.Cause(ctx)
		},
		"Renew": func(_ *testing.T, l *Lease, _ context.Context) error { return l.Renew(context.Background()) },
	}
	for name, ask := range asks {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			clk := newManualClock()
			s := newScheduler(Config{Clock: clk}) // no goroutine: its round is late
			o := okOwner(t)
			o.now = clk.Now
			rec := newLossRecorder("")
			var c Counters
			l := s.Track(Spec{Key: "k", Token: "t", TTL: 10 * time.Second, Owner: o, OnLost: rec, Counters: &c})
			var ends []error
			l.OnEnd(func(err error) { ends = append(ends, err) }) // runs on the goroutine that ends it: this one
			ctx := l.Context()
			child, cancel := context.WithCancel(ctx)
			defer cancel()

			clk.Advance(30 * time.Second) // frozen for three TTLs

			err := ask(t, l, ctx)
			require.ErrorIs(t, err, ErrLost)
			require.ErrorIs(t, err, errExpired)
			assert.Same(t, l.Err(), err, "every view gives the one loss error")
			assert.Same(t, l.Err(), context.Cause(ctx))
			assert.Error(t, child.Err(), "a context derived from the lease's was not cancelled with it")
			assert.Equal(t, []error{l.Err()}, ends, "OnEnd")
			assert.Equal(t, int64(1), c.Lost.Load(), "losses counted")
			assert.Empty(t, o.snapshot(), "anything written before the scheduler's round (no renewal of an overdue lease)")
			require.Len(t, s.wake, 1, "the scheduler goroutine was not poked to send the release")

			// The scheduler's round, late, sends the release and
			// declares nothing more.
			<-s.wake
			s.tick()
			bs := o.snapshot()
			assert.Len(t, requestsFor(bs, wire.CmdRelease, "k"), 1, "releases sent")
			assert.Empty(t, requestsFor(bs, wire.CmdRenew, "k"), "renewals sent")
			l.Err()
			s.tick()
			assert.Len(t, requestsFor(o.snapshot(), wire.CmdRelease, "k"), 1, "releases sent")

			close(s.exited)
			assert.Empty(t, s.Close(), "Close hands back a lease whose release was sent")
			assert.Equal(t, []string{"k"}, rec.snapshot(), "OnLost calls")
			assert.Equal(t, int64(1), c.Lost.Load(), "losses counted")
			assert.Len(t, ends, 1, "OnEnd calls")
		})
	}
}

// A renewal sent before the freeze and answered ok after the holder found
// the lease lost does not revive it: the lease stays lost, its release
// goes out, and no further renewal is sent.
func TestLateRenewalAnswerDoesNotReviveALeaseItsHolderFoundLost(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	o := newOwner(t, func(r wire.Request) answer {
		if r.Cmd == wire.CmdRenew {
			return answer{kind: answerOK, gate: gate}
		}
		return answer{}
	})
	answerRenewal := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(answerRenewal) // before the owner's cleanup waits for its answers
	s, clk := manualScheduler(t, Config{})
	o.now = clk.Now
	var c Counters
	l := s.Track(Spec{Key: "k", Token: "t", TTL: 10 * time.Second, Owner: o, Counters: &c})
	clk.Advance(5 * time.Second)
	s.tick()
	require.Len(t, requestsFor(o.snapshot(), wire.CmdRenew, "k"), 1, "a renewal in flight")

	clk.Advance(30 * time.Second)
	lost := l.Err()
	require.ErrorIs(t, lost, ErrLost)

	answerRenewal() // the ok comes in
	o.waitAnswered(t, 1, waitShort)
	assert.Equal(t, int64(1), c.Renewed.Load(), "the answer is counted, as the server applied it")
	assert.Same(t, lost, l.Err(), "a late ok revived the lease")
	assert.False(t, l.Overdue())
	assert.ErrorIs(t, l.Renew(context.Background()), ErrLost)
	s.tick()
	bs := o.snapshot()
	assert.Len(t, requestsFor(bs, wire.CmdRenew, "k"), 1, "renewals sent")
	assert.Len(t, requestsFor(bs, wire.CmdRelease, "k"), 1, "releases sent")
	assert.Equal(t, int64(1), c.Lost.Load())
}

// A lease its holder found lost after the scheduler goroutine's last round
// has no release sent yet when Close stops that goroutine: Close hands it
// back, lost, with the leases it still tracked, so that its release is sent
// too.
func TestCloseHandsBackALeaseFoundLostAfterTheLastRound(t *testing.T) {
	t.Parallel()
	clk := newManualClock()
	s := newScheduler(Config{Clock: clk})
	close(s.exited) // no goroutine: the poked round never runs
	o := okOwner(t)
	kept := s.Track(Spec{Key: "kept", Token: "t1", TTL: time.Minute, Owner: o})
	clk.Advance(30 * time.Second)
	gone := s.Track(Spec{Key: "gone", Token: "t2", TTL: 10 * time.Second, Owner: o})
	clk.Advance(30 * time.Second)
	require.ErrorIs(t, gone.Err(), ErrLost)

	held := s.Close()
	assert.ElementsMatch(t, []*Lease{kept, gone}, held)
	assert.ErrorIs(t, kept.Err(), ErrReleased)
	assert.ErrorIs(t, gone.Err(), errExpired)
	assert.Empty(t, o.snapshot(), "written by Close itself")
}

// Holders that find their leases overdue while the scheduler's own round
// declares them lost too: each lease is lost exactly once (counted,
// notified, released once), whoever gets there first.
func TestOverdueLeasesAreLostOnceWhenHoldersAndTheRoundRace(t *testing.T) {
	t.Parallel()
	const n = 64
	o := okOwner(t)
	clk := newManualClock()
	o.now = clk.Now
	rec := newLossRecorder("")
	s := New(Config{Clock: clk})
	var c Counters
	leases := make([]*Lease, n)
	for i := range leases {
		leases[i] = s.Track(Spec{Key: fmt.Sprint("k", i), Token: "t", TTL: 10 * time.Second, Owner: o, OnLost: rec, Counters: &c})
	}
	var ends atomic.Int64
	for _, l := range leases {
		l.OnEnd(func(error) { ends.Add(1) })
	}
	// The scheduler's timer fires inside Advance, so its round races the
	// holders' checks below.
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			<-start
			for i := range leases {
				l := leases[(i+g*n/4)%n]
				switch g {
				case 0:
					_ = l.Err()
				case 1:
					<-l.Done()
				case 2:
					<-l.Context().Done()
				default:
					_ = l.Renew(context.Background())
				}
			}
		})
	}
	clk.Advance(30 * time.Second)
	close(start)
	wg.Wait()
	o.waitFor(t, waitShort, "every release", func(bs []sentBatch) bool {
		total := 0
		for _, b := range bs {
			for _, r := range b.reqs {
				if r.Cmd == wire.CmdRelease {
					total++
				}
			}
		}
		return total >= n
	})
	assert.Empty(t, s.Close(), "Close hands back leases")
	bs := o.snapshot()
	for _, l := range leases {
		assert.ErrorIs(t, l.Err(), errExpired, l.Key())
		assert.Len(t, requestsFor(bs, wire.CmdRelease, l.Key()), 1, "releases of %s", l.Key())
		assert.Empty(t, requestsFor(bs, wire.CmdRenew, l.Key()), "renewals of %s", l.Key())
	}
	assert.Len(t, rec.snapshot(), n, "OnLost calls")
	assert.False(t, rec.overlap.Load())
	assert.Equal(t, int64(n), c.Lost.Load(), "losses counted")
	assert.Equal(t, int64(n), ends.Load(), "OnEnd calls")
}

// The lease's Context is its own type, so that its Err can check the
// clock, but to the context package it is still the cancelCtx under it: a
// context derived from it is cancelled before the lease's end is reported
// (no goroutine watching Done in between), and context.Cause gives Err.
func TestLeaseContextCancelsDerivedContextsDirectly(t *testing.T) {
	t.Parallel()
	s := newTestScheduler(t, Config{})
	l := s.Track(Spec{Key: "k", Token: "t", TTL: time.Minute, Owner: okOwner(t)})
	ctx := l.Context()
	assert.Same(t, ctx, l.Context(), "one Context per lease")
	child, cancel := context.WithCancel(ctx)
	defer cancel()
	var after atomic.Bool
	stop := context.AfterFunc(ctx, func() { after.Store(true) })
	defer stop()
	require.NoError(t, child.Err())
	require.True(t, l.Untrack())
	assert.ErrorIs(t, child.Err(), context.Canceled, "a derived context was still live when Untrack returned")
	assert.ErrorIs(t, context.Cause(child), ErrReleased)
	assert.ErrorIs(t, context.Cause(ctx), ErrReleased)
	assert.Contains(t, fmt.Sprint(ctx), `"k"`)
	assert.Contains(t, fmt.Sprint(child), `"k"`)
}

// Asking a held lease whether it still is — which code that checks before
// each unit of work does all the time — costs no allocation.
func TestHeldLeaseChecksDoNotAllocate(t *testing.T) { // not parallel: AllocsPerRun counts the process's allocations
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	s := newTestScheduler(t, Config{})
	l := s.Track(Spec{Key: "k", Token: "t", TTL: time.Minute, Owner: okOwner(t)})
	ctx := l.Context()
	allocs := testing.AllocsPerRun(100, func() {
		_ = l.Err()
		_ = l.Done()
		_ = ctx.Err()
		_ = ctx.Done()
		_ = l.Context()
	})
	assert.Zero(t, allocs)
}

// The release of a lease its holder found lost frees the lock for the
// next holder, whose work must not overlap this one's: the round that
// writes it waits until the holder's goroutine, which ended the lease, has
// finished it (its Context cancelled, OnEnd run), as for the leases the
// round ends itself.
func TestReleaseOfALeaseFoundLostByItsHolderWaitsForItsOnEnd(t *testing.T) {
	t.Parallel()
	var onEndReturned, early atomic.Bool
	o := newOwner(t, func(r wire.Request) answer {
		if r.Cmd == wire.CmdRelease && !onEndReturned.Load() {
			early.Store(true)
		}
		return answer{}
	})
	s, clk := manualScheduler(t, Config{})
	o.now = clk.Now
	l := s.Track(Spec{Key: "k", Token: "t", TTL: 10 * time.Second, Owner: o})
	entered, unblock := make(chan struct{}), make(chan struct{})
	l.OnEnd(func(error) {
		close(entered)
		<-unblock // a slow OnEnd on the holder's goroutine
		onEndReturned.Store(true)
	})
	clk.Advance(30 * time.Second)
	errc := make(chan error, 1)
	go func() { errc <- l.Err() }()
	<-entered // ended under the mutex, being finished
	ticked := make(chan struct{})
	go func() {
		defer close(ticked)
		s.tick()
	}()
	// Wait until the round has taken the release (and let go of the
	// mutex); then give it a moment to write it too early. (A bounded
	// wait for something that must not happen: it can miss the fault,
	// never invent it.)
	require.Eventually(t, func() bool {
		if len(requestsFor(o.snapshot(), wire.CmdRelease, "k")) > 0 {
			return true // written already
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.round) > 0
	}, waitShort, time.Millisecond)
	select {
	case <-o.changed:
	case <-time.After(50 * time.Millisecond):
	}
	close(unblock)
	<-ticked
	require.ErrorIs(t, <-errc, errExpired)
	assert.Len(t, requestsFor(o.snapshot(), wire.CmdRelease, "k"), 1, "releases sent")
	assert.False(t, early.Load(), "the release was written before the holder's OnEnd returned")
}
