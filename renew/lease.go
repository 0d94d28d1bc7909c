package renew

import (
	"context"
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

// Lease is one tracked lease. Its mutable fields are guarded by the
// scheduler's mutex; err (once ended is set) and the identity fields may be
// read without it.
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
	// stateTracked; Err reads it without s.mu.
	ended     atomic.Bool
	next      int64 // heap key: renewAt, or deadline while a renew is in flight
	renewAt   int64
	deadline  int64 // loss deadline: confirmed + ttl − margin
	confirmed int64 // send time of the last confirmed grant/renew
	oprev     *Lease
	onext     *Lease // intrusive list of the owner's leases
	cancel    context.CancelCauseFunc
	ctx       context.Context

	err error // written once, before ended is set and done closed
	// done is made by the first call of Done, already closed if the lease
	// has ended: most leases are released without anyone waiting on Done,
	// and a channel is an allocation.
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
// created on first use.
func (l *Lease) Done() <-chan struct{} {
	s := l.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if l.done == nil {
		if l.state != stateTracked {
			l.done = closedDone
		} else {
			l.done = make(chan struct{})
		}
	}
	return l.done
}

// Err is nil while Done is open; after loss it matches ErrLost (and wraps the
// cause); after Untrack it is ErrReleased.
func (l *Lease) Err() error {
	if l.ended.Load() {
		return l.err
	}
	return nil
}

// Context is cancelled when Done closes; context.Cause gives Err(). It is
// created on first use.
func (l *Lease) Context() context.Context {
	s := l.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if l.ctx == nil {
		l.ctx, l.cancel = context.WithCancelCause(context.Background())
		if l.state != stateTracked {
			// Already ended; the finaliser may or may not have run, so
			// cancel here (cancelling twice is harmless).
			l.cancel(l.err)
		}
	}
	return l.ctx
}

// Untrack stops renewing the lease (before the caller releases it), closing
// Done with Err ErrReleased. It reports false if the lease was already lost
// (Err says why) or untracked.
func (l *Lease) Untrack() bool {
	s := l.s
	s.mu.Lock()
	if l.state != stateTracked {
		s.mu.Unlock()
		return false
	}
	s.unlinkLocked(l)
	e := s.endLocked(l, stateReleased, ErrReleased)
	s.mu.Unlock()
	e.finish()
	return true
}

// Renew renews the lease now and waits for the answer (or ctx). A refusal
// loses the lease and returns its loss error. If ctx ends first Renew
// returns ctx.Err(); the renewal still completes and is applied. If the
// lease ends first (lost by the client's clock on a silent connection,
// released), Renew returns Err at once: no answer can change that.
func (l *Lease) Renew(ctx context.Context) error {
	s := l.s
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if l.state != stateTracked {
		err := l.err
		s.mu.Unlock()
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
