package renew

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/wire"
)

// Lease states.
const (
	stateTracked uint8 = iota
	stateLost
	stateReleased
)

// Lease is one tracked lease, made by Scheduler.Track or TrackInto: a zero
// Lease tracks nothing (its Err is ErrNotTracked; its other methods must not
// be called). Its mutable fields are guarded by the scheduler's mutex; err
// (once ended is set) and the identity fields may be read without it.
type Lease struct {
	s        *Scheduler
	key      string
	token    string
	owner    Owner
	server   string
	onLost   LossHandler
	counters *Counters     // nil if the Spec set none
	ttl      time.Duration // whole seconds
	// Guarded by s.mu. Times are nanoseconds since s.epoch (monotonic).
	idx      int32  // position in s.heap, -1 when not in it
	inflight uint32 // renew requests sent and not answered yet
	sem      bool
	state    uint8
	// ended is set, after err is written, when state leaves
	// stateTracked; Err and Done read it without s.mu.
	ended   atomic.Bool
	next    int64 // heap key: renewAt, or deadline while a renew is in flight
	renewAt int64
	// deadline is the loss deadline, confirmed + ttl − margin: written
	// under s.mu, read without it by Overdue.
	deadline  atomic.Int64
	confirmed int64 // send time of the last confirmed grant/renew
	oprev     *Lease
	onext     *Lease                  // intrusive list of the owner's leases
	cancel    context.CancelCauseFunc // nil unless Context was made before the end
	ctx       context.Context
	fin       sync.Once   // finish
	onEnd     func(error) // OnEnd's; like cancel, not written after the end

	err error // written once, before ended is set and done closed
	// done is made by the first call of Done while the lease is tracked
	// (after the end Done returns closedDone and writes nothing): most
	// leases are released without anyone waiting on Done, and a channel is
	// an allocation.
	done chan struct{}
}

// closedDone is the Done of a lease that had ended before Done was first
// called.
var closedDone = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// Key is the lease's lock or semaphore key.
func (l *Lease) Key() string { return l.key }

// Token is the lease's token.
func (l *Lease) Token() string { return l.token }

// TTL is the lease time sent on every renewal (whole seconds).
func (l *Lease) TTL() time.Duration { return l.ttl }

// Owner is the connection that acquired the lease.
func (l *Lease) Owner() Owner { return l.owner }

// Semaphore reports whether the lease is a semaphore slot (sn/sr).
func (l *Lease) Semaphore() bool { return l.sem }

// LossHandler returns the lease's Spec.OnLost (which tells its caller
// whose lease it is, as Counters does).
func (l *Lease) LossHandler() LossHandler { return l.onLost }

// Counters returns the lease's Spec.Counters (which tell its caller whose
// lease it is).
func (l *Lease) Counters() *Counters { return l.counters }

// Done is closed when the lease ends: lost, or untracked for release. It is
// created on first use. Like Err, it first ends a lease past its loss
// deadline.
func (l *Lease) Done() <-chan struct{} {
	if l.hasEnded() { // finished: the Context made before is cancelled first
		return l.endedDone()
	}
	s := l.s
	s.mu.Lock()
	if l.state != stateTracked { // ended meanwhile
		s.mu.Unlock()
		l.finish()
		return l.endedDone()
	}
	if l.done == nil {
		l.done = make(chan struct{})
	}
	d := l.done
	s.mu.Unlock()
	return d
}

// endedDone is the Done of an ended lease: the one made before the end
// (closed by finish), or closedDone. l.done is not written after the end.
func (l *Lease) endedDone() <-chan struct{} {
	if l.done != nil {
		return l.done
	}
	return closedDone
}

// Err is nil while Done is open; after loss it matches ErrLost (and wraps the
// cause); after Untrack it is ErrReleased.
//
// A lease past its loss deadline is lost by the clock whether or not the
// scheduler goroutine has run since: Err ends it itself, exactly as that
// goroutine's next round would (the release is still sent from there), so
// a process resumed after a freeze or CPU starvation longer than the
// lease's life sees the loss at its first check, not a scheduling delay
// later, while another client may hold the lock already.
func (l *Lease) Err() error {
	if l.s == nil {
		return ErrNotTracked // a zero Lease must not read as held
	}
	if l.hasEnded() { // finished: nobody sees the end before Context and Done do
		return l.err
	}
	return nil
}

// hasEnded reports whether the lease has ended, ending it first if it is
// past its loss deadline (Scheduler.expireOverdueLocked), and finishes it
// if so. On a held lease it costs one atomic load and one clock read.
func (l *Lease) hasEnded() bool {
	if !l.ended.Load() {
		s := l.s
		if s == nil || l.deadline.Load() > s.now() {
			return false
		}
		s.mu.Lock()
		ended := s.expireOverdueLocked(l)
		s.mu.Unlock()
		if !ended {
			return false // confirmed meanwhile
		}
	}
	l.finish()
	return true
}

// Overdue reports whether the lease, not yet ended, is past its loss
// deadline (its last confirmed send + TTL − the safety margin): the
// scheduler declares it lost at its next round, due at once, or already
// late, and so does the next call of Err, Done, Context or Renew. An
// acquire whose grant, or the renewal confirming it, was answered that
// late — or that hands over a lease long after tracking it, as a ticket
// granted at enqueue does — must not hand it over as held. It takes no
// lock (it runs on every acquire): one clock read.
func (l *Lease) Overdue() bool {
	s := l.s
	return s != nil && !l.ended.Load() && l.deadline.Load() <= s.now()
}

// Context is cancelled when Done closes; context.Cause gives Err(). It is
// created on first use. Its Err and Done end a lease past its loss
// deadline first, as the lease's own do; context.Cause, which only reads,
// and contexts derived from it follow once the lease has ended.
func (l *Lease) Context() context.Context {
	s := l.s
	s.mu.Lock()
	s.expireOverdueLocked(l)
	if l.ctx == nil {
		ctx, cancel := context.WithCancelCause(context.Background())
		l.ctx = ctx
		if l.state == stateTracked {
			l.cancel = cancel // finish cancels it
		} else {
			// Made after the end: cancelled now, and l.cancel, which
			// finish reads without s.mu, is not written after the end.
			cancel(l.err)
		}
	}
	ended := l.state != stateTracked
	s.mu.Unlock()
	if ended {
		l.finish()
	}
	return (*leaseContext)(l)
}

// leaseContext is a Lease's Context: l.ctx (written once, before Context
// first returns), with Err and Done that check the loss deadline first, as
// the Lease's do. Value goes straight to l.ctx, so the context package
// finds the cancelCtx under it: context.Cause works, and a context derived
// from it is cancelled with it directly (Done is l.ctx's own channel), not
// by a goroutine that watches Done. A conversion of the Lease pointer, it
// costs no allocation.
type leaseContext Lease

func (c *leaseContext) Deadline() (time.Time, bool) { return c.ctx.Deadline() }

func (c *leaseContext) Done() <-chan struct{} {
	(*Lease)(c).hasEnded()
	return c.ctx.Done()
}

func (c *leaseContext) Err() error {
	(*Lease)(c).hasEnded()
	return c.ctx.Err()
}

func (c *leaseContext) Value(key any) any { return c.ctx.Value(key) }

// String names the context as the context package names its own (fmt
// would otherwise print the Lease's fields, read without its mutex).
func (c *leaseContext) String() string {
	return "renew.Lease(" + strconv.Quote(c.key) + ").Context"
}

// finish completes the end of the lease once endLocked has ended it:
// cancels the Context, runs OnEnd's function, then closes Done, so that
// whoever wakes on Done finds both done. Whoever ends the lease calls it after
// releasing s.mu, and so does whoever observes the end (Err, Done,
// Context, Untrack, the notifier before OnLost): it runs once, and a
// caller returns only when it has run.
func (l *Lease) finish() {
	if l.cancel == nil && l.done == nil && l.onEnd == nil {
		return // nothing was made or registered before the end
	}
	l.fin.Do(func() {
		if l.cancel != nil {
			l.cancel(l.err)
		}
		if l.onEnd != nil {
			l.onEnd(l.err)
		}
		if l.done != nil {
			close(l.done)
		}
	})
}

// OnEnd registers f to be called with Err when the lease ends, as its
// Context is cancelled: before Done closes and before anyone hears of the
// end. A context.AfterFunc on Context runs later, on a goroutine of its
// own; f is for what must not lag (a function's context that must be
// cancelled before the loss is reported). f runs on whatever goroutine
// ends the lease (a connection reader, the renewal scheduler), so it must
// be quick and must not block: cancelling a context is. One f at a time;
// if the lease has ended already, f runs now. stop unregisters it.
func (l *Lease) OnEnd(f func(err error)) (stop func()) {
	s := l.s
	s.mu.Lock()
	if l.state != stateTracked {
		s.mu.Unlock()
		l.finish()
		f(l.err)
		return func() {}
	}
	l.onEnd = f
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		if l.state == stateTracked { // after the end, finish reads it without s.mu
			l.onEnd = nil
		}
		s.mu.Unlock()
	}
}

// Untrack stops renewing the lease (before the caller releases it), closing
// Done with Err ErrReleased. It reports false if the lease was already lost
// (Err says why) or untracked.
func (l *Lease) Untrack() bool {
	s := l.s
	s.mu.Lock()
	if l.state != stateTracked {
		s.mu.Unlock()
		l.finish() // ended by another goroutine, which may not have finished
		return false
	}
	s.unlinkLocked(l)
	s.endLocked(l, stateReleased, ErrReleased)
	s.mu.Unlock()
	l.finish()
	return true
}

// Renew renews the lease now and waits for the answer (or ctx). A refusal
// loses the lease and returns its loss error. If ctx ends first Renew
// returns ctx.Err(); the renewal still completes and is applied. If the
// lease ends first (lost by the client's clock on a silent connection,
// released), Renew returns Err at once: no answer can change that. A lease
// already past its loss deadline is lost, as Err would find it, and no
// renewal is sent: the server may have handed it on, and an ok from a
// server that has not would not make the time in between held.
func (l *Lease) Renew(ctx context.Context) error {
	s := l.s
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.expireOverdueLocked(l) {
		err := l.err
		s.mu.Unlock()
		l.finish() // seen ended: finished before anyone hears of it
		return err
	}
	l.inflight++
	s.scheduleLocked(l)
	s.stats.Batches++
	s.mu.Unlock()
	if l.counters != nil {
		l.counters.Sent.Add(1)
	}

	ch := make(chan error, 1)
	b := &batch{s: s, leases: []*Lease{l}, reply: ch}
	b.send(l.owner, []wire.Request{renewRequest(l)})
	select {
	case err := <-ch:
		return err
	case <-l.Done():
		return l.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}
