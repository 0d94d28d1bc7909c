package renew

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/wire"
)

// Scheduler renews leases. Goroutine-safe.
//
// All state lives under one mutex: a min-heap of leases keyed by their next
// event (the renewal time, or the loss deadline while a renewal is in
// flight) and an index owner → intrusive list of its leases. One goroutine
// sleeps until one timer, armed for the heap's top, pokes it through a
// non-blocking wake channel. Track and reply callbacks that create an
// earlier event re-arm the timer themselves, under the mutex, rather than
// wake the goroutine to do it: a lease held for less than a renewal
// interval (most are) then never wakes it.
//
// No user code and no logging runs on the scheduler goroutine or in reply
// callbacks (which run on connection readers): losses are queued under the
// mutex, in the order they happen, for a notifier goroutine that calls
// each lease's Spec.OnLost.
type Scheduler struct {
	cfg   Config
	epoch time.Time
	real  bool // cfg.Clock is realClock (see now)

	mu     sync.Mutex
	heap   leaseHeap
	owners map[Owner]*ownerState
	// idle remembers the owners whose last lease ended most recently: their
	// ownerState stays in owners until it falls out of this ring still
	// without a lease, so that an owner holding one lease at a time (a lane
	// connection at low load) does not allocate one per lease, while at
	// most len(idle) states (and the connections they name) are kept
	// without a lease.
	idle     [16]idleOwner
	idleNext int
	idleSeq  uint64
	armed    int64 // event time the goroutine will wake for; MaxInt64 when idle
	// timer pokes the goroutine at armed; replaced (armTimerLocked) when
	// armed changes. pokeFn is s.poke, bound once.
	timer  interface{ Stop() bool }
	pokeFn func()
	// maxEarly bounds Lease.early over the tracked leases (it never shrinks:
	// a stale bound only costs a few extra heap pops per round).
	maxEarly int64
	closed   bool
	stats    Stats // Leases and ReleaseFailed are filled in by Stats()

	// Loss notifications, guarded by mu. lostQ is appended to by endLocked
	// and swapped out whole by the notifier; notifying says a notifier
	// goroutine is running (at most one, which keeps the order); once
	// notifyShut is set (by Close) nothing more is queued.
	lostQ      []*Lease
	notifying  bool
	notifyShut bool
	notifyWG   sync.WaitGroup

	// expired holds the leases declared lost by the clock whose best-effort
	// release no round has sent yet (guarded by mu). tick declares most of
	// them and sends their releases in the same round; a caller that finds
	// its lease overdue (Lease.Err, Done, Context, Renew) ends it at once
	// but leaves the write to the scheduler goroutine, poking it, rather
	// than do I/O on its own goroutine; Close hands back what is left.
	expired []expiredLease

	// Written by reply callbacks on connection readers, without the mutex.
	releaseFailed atomic.Int64

	// Used by the scheduler goroutine only (no lock needed for the slices'
	// contents; ownerState.renew/rel/inRound are likewise goroutine-only).
	requeue []*Lease
	ended   []*Lease // the leases tick ended, to finish after s.mu
	round   []*ownerState

	wake   chan struct{}
	quit   chan struct{}
	exited chan struct{}
}

// ownerState indexes one owner's leases.
type ownerState struct {
	owner   Owner
	head    *Lease // guarded by mu
	n       int    // guarded by mu
	idleSeq uint64 // guarded by mu: when n last fell to 0 (see Scheduler.idle)

	// Scheduler goroutine only: this round's renewals and releases.
	renew   []*Lease
	rel     []*Lease
	inRound bool
}

// expiredLease is an entry of Scheduler.expired: l's owner's state, taken
// while l was still linked to it (unlinking may let it drop out of owners).
type expiredLease struct {
	l  *Lease
	st *ownerState
}

// idleOwner is an entry of Scheduler.idle: st became idle as its seq'th.
type idleOwner struct {
	st  *ownerState
	seq uint64
}

// batch is one SendBatch of renewals: its callback finds the lease by index.
type batch struct {
	s      *Scheduler
	sent   int64
	leases []*Lease
	reply  chan<- error // explicit Renew: its one lease's outcome (buffered)

	// For Config.OnBatch only. Replies come in order but possibly from two
	// goroutines (inside SendBatch, then the owner's reader), hence atomics.
	left             atomic.Int32
	renewed, refused atomic.Int32
	err              atomic.Pointer[error]
}

// send writes the batch to o, stamping its send time.
func (b *batch) send(o Owner, reqs []wire.Request) {
	b.left.Store(int32(len(reqs)))
	b.sent = b.s.now()
	o.SendBatch(reqs, b.done)
}

func (b *batch) done(i int, r wire.Reply, err error) {
	if i < 0 || i >= len(b.leases) {
		return
	}
	s := b.s
	out, lerr := s.complete(b.leases[i], b.sent, r, err)
	if b.reply != nil {
		b.reply <- lerr
	}
	if s.cfg.OnBatch == nil {
		return
	}
	switch out {
	case outRenewed:
		b.renewed.Add(1)
	case outRefused:
		b.refused.Add(1)
	default:
		e := err // a copy: taking err's address would move it to the heap on every call
		b.err.CompareAndSwap(nil, &e)
	}
	if b.left.Add(-1) != 0 {
		return
	}
	info := BatchInfo{
		Size:    len(b.leases),
		Renewed: int(b.renewed.Load()),
		Refused: int(b.refused.Load()),
		Latency: max(time.Duration(subSat(s.now(), b.sent)), 0),
	}
	for _, l := range b.leases {
		if l.counters != nil {
			info.Counters = l.counters
			break
		}
	}
	if p := b.err.Load(); p != nil {
		info.Err = *p
	}
	s.cfg.OnBatch(info)
}

// countSent adds leases' renewals to their Counters, one atomic add per run
// of leases sharing one (all of an owner's, as dflock uses them).
func countSent(leases []*Lease) {
	var c *Counters
	n := int64(0)
	for _, l := range leases {
		if l.counters != c {
			if c != nil {
				c.Sent.Add(n)
			}
			c, n = l.counters, 0
		}
		n++
	}
	if c != nil {
		c.Sent.Add(n)
	}
}

// New starts a scheduler (one goroutine, stopped by Close).
func New(cfg Config) *Scheduler {
	s := newScheduler(cfg)
	go s.run()
	return s
}

// newScheduler builds a scheduler without starting its goroutine (tests and
// benchmarks drive tick directly).
func newScheduler(cfg Config) *Scheduler {
	cfg = cfg.withDefaults()
	return newSchedulerAt(cfg, cfg.Clock.Now())
}

// newSchedulerAt builds a scheduler whose clock starts at epoch (tests use an
// epoch far in the past to exercise large clock values).
func newSchedulerAt(cfg Config, epoch time.Time) *Scheduler {
	s := &Scheduler{
		cfg:    cfg.withDefaults(),
		epoch:  epoch,
		owners: make(map[Owner]*ownerState),
		armed:  math.MaxInt64,
		wake:   make(chan struct{}, 1),
		quit:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	s.pokeFn = s.poke
	_, s.real = s.cfg.Clock.(realClock)
	return s
}

// now is the scheduler's clock in nanoseconds since epoch (monotonic on the
// real clock; Sub saturates). It runs on every Lease.Err and Done of a held
// lease, so on the real clock it reads only the monotonic clock
// (time.Since's fast path), not the wall clock that time.Now reads too.
func (s *Scheduler) now() int64 {
	if s.real {
		return int64(time.Since(s.epoch))
	}
	return int64(s.cfg.Clock.Now().Sub(s.epoch))
}

func (s *Scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Track starts renewing a granted lease. Owner must be a non-nil pointer
// (or another hashable value). A lease that cannot be tracked — the
// scheduler is closed, the TTL is under one second, the owner is nil, not
// hashable, or its Err panics (a nil pointer, typically) or reports it
// broken — is returned already lost (its Err says why) so that nothing
// silently appears held.
func (s *Scheduler) Track(spec Spec) *Lease {
	l := new(Lease)
	s.TrackInto(l, spec)
	return l
}

// nilPointer reports whether o holds a nil pointer (no allocation).
func nilPointer(o Owner) bool {
	v := reflect.ValueOf(o)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// ownerErrLocked is o.Err(), or, as invalid, why o cannot own a lease: the
// lookups of the owners map would panic on a value that is not hashable (a
// slice, or a struct holding one in an interface field), and so does Err on
// many nil pointers. Under s.mu such a panic, if recovered by the caller,
// left the scheduler locked for good; caught here it costs nothing on the
// way through (a reflect check of the type cost an allocation per Track).
func (s *Scheduler) ownerErrLocked(o Owner) (invalid, err error) {
	defer func() {
		if r := recover(); r != nil {
			invalid = fmt.Errorf("dflock: invalid Spec.Owner (%T): %v", o, r)
		}
	}()
	_ = s.owners[o]
	return nil, o.Err()
}

// TrackInto is Track for a Lease the caller allocated, so that a struct of
// the caller's embedding the Lease costs one allocation, not two. l must be
// a zero Lease, never tracked before, and must not be copied afterwards.
func (s *Scheduler) TrackInto(l *Lease, spec Spec) {
	l.s = s
	l.key, l.token = spec.Key, spec.Token
	l.owner, l.server = spec.Owner, spec.Server
	l.onLost, l.counters = spec.OnLost, spec.Counters
	l.ttl = spec.TTL.Truncate(time.Second)
	l.sem = spec.Semaphore
	l.idx = -1
	// A grant cannot have been sent in the future; treating such a Sent as
	// now keeps a bogus value from postponing both renewal and loss.
	sent := s.now()
	if !spec.Sent.IsZero() {
		sent = min(int64(spec.Sent.Sub(s.epoch)), sent) // Sub saturates
	}

	s.mu.Lock()
	var cause error
	switch {
	case s.closed:
		cause = errClosed
	case l.ttl < time.Second:
		cause = fmt.Errorf("dflock: lease TTL %v is below one second and cannot be renewed", spec.TTL)
	case l.owner == nil:
		cause = errors.New("dflock: lease has no owning connection")
	case nilPointer(l.owner):
		// Its Err may not dereference it; the round's SendBatch would.
		cause = fmt.Errorf("dflock: invalid Spec.Owner: a nil %T", l.owner)
	default:
		// The grant may have been read just before its connection broke,
		// and OwnerFailed may already have run (finding no lease of this
		// owner): the server released the lease with the connection.
		invalid, err := s.ownerErrLocked(l.owner)
		switch {
		case invalid != nil:
			cause = invalid
		case err != nil:
			cause = fmt.Errorf("%w: %w", ErrOwnerFailed, err)
		}
	}
	if cause != nil {
		// Nothing to finish: Done and Context of a new lease are not made.
		// A scheduler already closed must not notify (Spec.OnLost): Close
		// may still be waiting for its goroutine, before notifyShut is set.
		if s.closed {
			l.onLost = nil
		}
		s.endLocked(l, stateLost, &LostError{Key: l.key, Server: l.server, Semaphore: l.sem, Cause: cause})
		s.mu.Unlock()
		return
	}
	iv := s.confirmLocked(l, sent, l.ttl)
	// Jitter only the first renewal. It spreads clients that acquired
	// together (a fleet restarting at once) over a tenth of the interval;
	// from then on a lease keeps its phase, renewed with whatever shares
	// its rounds, and jitter at every renewal would only renew each round
	// earlier (at the soonest of its leases' draws) without spreading
	// anything coalescing does not gather again.
	if j := int64(scaleDur(iv, s.cfg.jitter)); j > 0 {
		l.renewAt = subSat(l.renewAt, rand.Int64N(j+1))
	}
	s.maxEarly = max(s.maxEarly, int64(iv/4))
	l.next = min(l.renewAt, l.deadline.Load())
	heap.Push(&s.heap, l)
	s.linkLocked(l)
	s.wakeIfEarlierLocked(l.next)
	s.mu.Unlock()
}

// OwnerFailed declares every lease owned by o lost with cause err.
func (s *Scheduler) OwnerFailed(o Owner, err error) {
	if o == nil {
		return
	}
	if err == nil {
		err = errors.New("connection closed")
	}
	cause := fmt.Errorf("%w: %w", ErrOwnerFailed, err)
	s.mu.Lock()
	st := s.owners[o]
	if st == nil {
		s.mu.Unlock()
		return
	}
	if st.n >= 64 && st.n >= len(s.heap)/16 {
		s.heap.removeOwner(o) // then endLocked finds them out of the heap
	}
	ended := make([]*Lease, 0, st.n)
	// The errors in chunks, not one allocation each under the mutex; small
	// chunks, as a kept error keeps its chunk's keys.
	var errs []LostError
	for l := st.head; l != nil; {
		next := l.onext
		l.oprev, l.onext = nil, nil
		if len(errs) == 0 {
			errs = make([]LostError, max(min(st.n-len(ended), lostErrorChunk), 1))
		}
		e := &errs[0]
		errs = errs[1:]
		*e = LostError{Key: l.key, Server: l.server, Semaphore: l.sem, Cause: cause}
		s.endLocked(l, stateLost, e)
		ended = append(ended, l)
		l = next
	}
	st.head, st.n = nil, 0
	delete(s.owners, o)
	s.mu.Unlock()
	finishAll(ended)
}

// Close stops the scheduler and returns the leases it still tracked,
// untracked, so the caller can release them; their Done is closed with
// ErrReleased. It also returns, lost already, the leases that their holders
// found past their loss deadline after the last round, whose best-effort
// release no round has sent. Leases tracked afterwards are lost at once
// with ErrClosed.
//
// Before it returns, Close waits until Spec.OnLost has been called for
// every loss that happened before the leases were handed back; no OnLost
// call is made after Close returns (Config.OnBatch and OnReleaseLost may
// be: an owner's reader delivers a batch's answers whenever they come).
// Close is idempotent; later calls return nil at once.
func (s *Scheduler) Close() []*Lease {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.quit)
	<-s.exited

	s.mu.Lock()
	held := make([]*Lease, len(s.heap))
	copy(held, s.heap)
	for _, l := range s.heap {
		l.idx = -1
	}
	s.heap = nil
	for _, l := range held {
		l.oprev, l.onext = nil, nil
		s.endLocked(l, stateReleased, ErrReleased)
	}
	// Lost by the clock after the goroutine's last round (found overdue by
	// their holders): already ended and notified, their releases not sent.
	for _, e := range s.expired {
		held = append(held, e.l)
	}
	clear(s.expired)
	s.expired = s.expired[:0]
	clear(s.owners)
	s.idle = [len(s.idle)]idleOwner{}
	// Every lease is now ended, so no further loss can be queued (a late
	// reply finds its lease untracked); Track after Close returns its
	// lease lost without a notification.
	s.notifyShut = true
	s.mu.Unlock()
	finishAll(held)
	s.notifyWG.Wait()
	return held
}

// Stats returns a snapshot of the scheduler's counters.
func (s *Scheduler) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Leases = len(s.heap)
	st.ReleaseFailed = s.releaseFailed.Load()
	return st
}

// run is the scheduler goroutine. The timer only pokes the wake channel: a
// stale timer firing late costs a spurious tick, never a missed one, since
// every tick reads the clock afresh.
func (s *Scheduler) run() {
	defer close(s.exited)
	defer func() {
		s.mu.Lock()
		s.armTimerLocked(math.MaxInt64)
		s.mu.Unlock()
	}()
	for {
		s.tick()
		select {
		case <-s.wake:
		case <-s.quit:
			return
		}
	}
}

// armTimerLocked sets s.armed to at and the timer to poke the goroutine
// then (none for MaxInt64).
func (s *Scheduler) armTimerLocked(at int64) {
	s.armed = at
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if at == math.MaxInt64 || s.closed {
		return // nothing to wake for, or nobody to wake
	}
	for {
		now := s.now()
		s.timer = s.cfg.Clock.AfterFunc(time.Duration(max(subSat(at, now), 0)), s.pokeFn)
		// The delay was worked out from a clock reading taken before the
		// timer was armed; a test clock may have been advanced in between:
		// past the event, with no further Advance to come, or short of
		// it, which would leave the timer late by that step. The real
		// clock moves far less than MinInterval between the two readings.
		after := s.now()
		if after >= at {
			s.poke()
			return
		}
		if subSat(after, now) < int64(MinInterval) {
			return
		}
		s.timer.Stop()
	}
}

// tick runs one round: it declares overdue leases lost, sends every renewal
// due within the window (one SendBatch per owner) and the best-effort
// releases of the leases it declared lost (and of those their holders found
// lost since the last round), and arms the timer for the next event.
//
// A round that renews anything also takes every lease due within a quarter
// of its own interval (coalescing): leases granted at different moments
// then share rounds from their first renewal on, and since a batch's
// leases are all confirmed from one send time they stay together, so an
// owner carries a few renewal writes per interval however many leases it
// holds. Renewing early never brings a loss closer: the deadline counts
// from the last confirmed send, which only moves forward.
func (s *Scheduler) tick() {
	s.mu.Lock()
	s.roundExpiredLocked() // found by their holders since the last round
	now := s.now()
	horizon := addSat(now, int64(s.cfg.window))
	nrenew := 0
	for len(s.heap) > 0 && s.heap[0].next <= horizon {
		l := heap.Pop(&s.heap).(*Lease)
		switch {
		case l.deadline.Load() <= now:
			s.expireLocked(l, now)
			s.roundExpiredLocked()
		case l.inflight == 0 && l.renewAt <= addSat(now, min(int64(s.cfg.window), l.early())):
			s.takeLocked(l)
			nrenew++
		default:
			s.requeue = append(s.requeue, l)
		}
	}
	if nrenew > 0 {
		// Everything left in the heap is due after the horizon, so no
		// deadline has passed; maxEarly bounds every lease's early().
		far := addSat(now, s.maxEarly)
		for len(s.heap) > 0 && s.heap[0].next <= far {
			l := heap.Pop(&s.heap).(*Lease)
			if l.inflight == 0 && l.renewAt <= addSat(now, l.early()) {
				s.takeLocked(l)
				nrenew++
			} else {
				s.requeue = append(s.requeue, l)
			}
		}
	}
	for _, l := range s.requeue {
		heap.Push(&s.heap, l)
	}
	clear(s.requeue)
	s.requeue = s.requeue[:0]
	armed := int64(math.MaxInt64)
	if len(s.heap) > 0 {
		armed = s.heap[0].next
	}
	s.armTimerLocked(armed)
	s.mu.Unlock()
	// Before any write: a lease's best-effort release below frees the lock
	// for the next holder, whose work must not overlap this holder's
	// (a WithLock's function, whose context derives from the lease's).
	finishAll(s.ended)
	clear(s.ended)
	s.ended = s.ended[:0]

	counted := false // this round in Stats.Rounds
	for _, st := range s.round {
		if len(st.renew) > 0 {
			s.dropEnded(st, &counted)
		}
		if len(st.renew) > 0 {
			b := &batch{s: s, leases: make([]*Lease, len(st.renew))}
			copy(b.leases, st.renew)
			reqs := make([]wire.Request, len(b.leases))
			for i, l := range b.leases {
				reqs[i] = renewRequest(l)
			}
			countSent(b.leases)
			b.send(st.owner, reqs)
		}
		if len(st.rel) > 0 {
			rel := slices.Clone(st.rel) // st.rel is reused by the next round
			reqs := make([]wire.Request, len(rel))
			for i, l := range rel {
				reqs[i] = releaseRequest(l)
			}
			// On the owner's reader: count, never log (a slow log
			// handler would stall every reply behind this one).
			st.owner.SendBatch(reqs, func(i int, r wire.Reply, err error) {
				if err != nil || r.Status != wire.StatusOK {
					s.releaseFailed.Add(1)
				}
				// The bare error may also be a paused server's read
				// timeout, answering a release it did not apply before
				// closing the connection.
				if (err != nil || r.Status == wire.StatusError) && s.cfg.OnReleaseLost != nil && i >= 0 && i < len(reqs) {
					s.cfg.OnReleaseLost(rel[i].counters, reqs[i])
				}
			})
		}
		clear(st.renew)
		st.renew = st.renew[:0]
		clear(st.rel)
		st.rel = st.rel[:0]
		st.inRound = false
	}
	clear(s.round)
	s.round = s.round[:0]
}

// dropEnded takes out of st's batch the leases that ended since the round
// picked them (while it wrote the batches of the owners before st, say) — a
// Release: its `r` may already be on the wire, and a renewal written after
// it would be refused by the server and counted as a refusal although no
// lease was lost. It narrows that window to the moments between this check
// and the batch's write (see ServerSnapshot.RenewalsRefused).
//
// It counts the batch in Stats.Batches if any renewal is left, and the
// round in Stats.Rounds with its first such batch (counted says so): here,
// before the write, so that whoever sees a batch also sees it counted, and
// not when the round picked renewals that may all end before it writes.
func (s *Scheduler) dropEnded(st *ownerState, counted *bool) {
	s.mu.Lock()
	live := st.renew[:0]
	for _, l := range st.renew {
		if l.state == stateTracked {
			live = append(live, l)
		} else if l.inflight > 0 {
			l.inflight--
		}
	}
	clear(st.renew[len(live):])
	st.renew = live
	if len(live) > 0 {
		s.stats.Batches++
		if !*counted {
			*counted = true
			s.stats.Rounds++
		}
	}
	s.mu.Unlock()
}

// roundExpiredLocked puts the releases of s.expired in this round, and the
// leases in s.ended: whoever ended one may not have finished it yet, and
// the round must before it writes the release.
func (s *Scheduler) roundExpiredLocked() {
	for _, e := range s.expired {
		s.addToRound(e.st)
		e.st.rel = append(e.st.rel, e.l)
		s.ended = append(s.ended, e.l)
	}
	clear(s.expired)
	s.expired = s.expired[:0]
}

// takeLocked puts a popped lease's renewal in this round.
func (s *Scheduler) takeLocked(l *Lease) {
	l.inflight++
	l.next = l.deadline.Load()
	st := s.owners[l.owner]
	s.addToRound(st)
	st.renew = append(st.renew, l)
	s.requeue = append(s.requeue, l)
}

// early is how long before its renewal time l may be renewed in another
// lease's round: a quarter of its interval, so at least three quarters of
// the interval pass between two renewals (before the first, whose time is
// jittered up to a tenth earlier, at least 0.675 of it). The interval is
// the one its last confirmation set (confirmLocked), from the TTL the
// server applied, which may be shorter than the one asked for.
func (l *Lease) early() int64 { return subSat(l.renewAt, l.confirmed) / 4 }

func (s *Scheduler) addToRound(st *ownerState) {
	if !st.inRound {
		st.inRound = true
		s.round = append(s.round, st)
	}
}

// Outcomes of a renew request.
const (
	outRenewed = iota
	outRefused
	outUnanswered
)

// countOutcome counts a renew request's outcome in c (if any).
func countOutcome(c *Counters, out int) {
	if c == nil {
		return
	}
	switch out {
	case outRenewed:
		c.Renewed.Add(1)
	case outRefused:
		c.Refused.Add(1)
	default:
		c.Unanswered.Add(1)
	}
}

// complete applies the answer to a renewal sent at sent. It runs on the
// owner's reader goroutine: lock, update, fix the heap, return (a loss is
// only queued for the notifier). It returns the request's outcome, counted
// whatever the lease's state, and the lease's error if the lease is (now)
// not held.
func (s *Scheduler) complete(l *Lease, sent int64, r wire.Reply, err error) (int, error) {
	out := outRenewed
	switch {
	case err != nil:
		out = outUnanswered
	case r.Status != wire.StatusOK, r.Lease <= 0:
		// An ok for no seconds (no server sends one: the request asks for
		// at least one) says the lease has no time left; believing the TTL
		// instead would keep a lease the server may already have handed on.
		out = outRefused
	}
	// The outcome is counted only once the scheduler has applied it (the
	// loss deadline moved, or the lease ended): whoever sees a renewal
	// counted as Renewed may rely on the lease's new deadline. It is counted
	// before s.mu is released: from then on the notifier may finish the
	// lease (Done, OnLeaseLost), and whoever sees that must find the
	// refusal counted.
	s.mu.Lock()
	if l.state != stateTracked {
		e := l.err
		countOutcome(l.counters, out)
		s.mu.Unlock()
		l.finish() // seen ended: finished before anyone hears of it
		return out, e
	}
	if l.inflight > 0 {
		l.inflight--
	}
	var cause error
	switch out {
	case outUnanswered:
		cause = fmt.Errorf("%w: %w", ErrOwnerFailed, err)
	case outRefused:
		word := r.Status.String()
		if r.Word != "" {
			word = wire.DisplayWord(r.Word)
		}
		answered := "dflock: renewal refused: server answered " + word
		switch {
		case r.Status == wire.StatusOK:
			cause = Refusal(fmt.Sprintf("%s %d: the lease has no time left", answered, r.Lease))
		case r.Status == wire.StatusError:
			cause = Refusal(answered+": "+unprefixed(ErrMaybeUnapplied.Error()), wire.ErrRefused, ErrMaybeUnapplied)
		case r.Status == wire.StatusErrDraining:
			cause = Refusal(answered, wire.ErrDraining)
		default:
			cause = Refusal(answered, wire.ErrRefused)
		}
	default:
		if sent > l.confirmed {
			ttl := l.ttl
			if r.Lease < int64(ttl/time.Second) {
				ttl = seconds(r.Lease) // the server applied less: believe it
			}
			s.confirmLocked(l, sent, ttl)
		}
		s.scheduleLocked(l)
		countOutcome(l.counters, out)
		s.mu.Unlock()
		return out, nil
	}
	s.unlinkLocked(l)
	s.endLocked(l, stateLost, &LostError{Key: l.key, Server: l.server, Semaphore: l.sem, Cause: cause})
	lerr := l.err
	countOutcome(l.counters, out)
	s.mu.Unlock()
	l.finish()
	return out, lerr
}

// confirmLocked records a confirmed grant/renew sent at sent with the given
// applied TTL and computes the next renewal and the loss deadline. It
// returns the renewal interval.
func (s *Scheduler) confirmLocked(l *Lease, sent int64, ttl time.Duration) time.Duration {
	life := s.life(ttl)
	iv := s.interval(life)
	l.confirmed = sent
	l.deadline.Store(addSat(sent, int64(life-s.margin(life))))
	l.renewAt = addSat(sent, int64(iv))
	return iv
}

// life is how long a lease of the given TTL surely lives on the server after
// a confirmed renewal was sent: its TTL, unless the server's read timeout is
// shorter. The server read that renewal, and it closes the connection (and
// so ends the lease) once it has read nothing for its read timeout; on a
// network that went silent that comes first.
func (s *Scheduler) life(ttl time.Duration) time.Duration {
	if rt := s.cfg.ReadTimeout; rt > 0 && rt < ttl {
		return rt
	}
	return ttl
}

// interval is the renewal interval: min(TTL×Ratio, KeepAlive), and never
// more than 90% of TTL − margin, so a renewal is always tried well before
// the loss deadline.
func (s *Scheduler) interval(ttl time.Duration) time.Duration {
	m := s.margin(ttl) // in [0, ttl/2], so ttl−m neither wraps nor goes negative
	return min(s.baseInterval(ttl), (ttl-m)/10*9)
}

func (s *Scheduler) margin(ttl time.Duration) time.Duration {
	return min(max(s.cfg.safetyMargin(ttl), 0), ttl/2)
}

// baseInterval is the renewal interval before jitter: min(TTL×Ratio,
// KeepAlive), at least MinInterval.
func (s *Scheduler) baseInterval(ttl time.Duration) time.Duration {
	return min(max(scaleDur(ttl, s.cfg.Ratio), MinInterval), s.cfg.KeepAlive)
}

// scheduleLocked recomputes l's heap key and position.
func (s *Scheduler) scheduleLocked(l *Lease) {
	if l.inflight > 0 {
		l.next = l.deadline.Load()
	} else {
		l.next = min(l.renewAt, l.deadline.Load())
	}
	if l.idx >= 0 {
		heap.Fix(&s.heap, int(l.idx))
	}
	s.wakeIfEarlierLocked(l.next)
}

func (s *Scheduler) wakeIfEarlierLocked(t int64) {
	if t < s.armed {
		s.armTimerLocked(t)
	}
}

// endLocked ends a tracked lease (already unlinked from its owner): out of
// the heap, Err set, the loss counted and queued for its OnLost. The rest —
// cancelling its Context, closing its Done — is finish, which the caller
// runs once it has released s.mu: cancelling runs every context derived
// from the lease's and starts a goroutine per context.AfterFunc on it (a
// program's, one per lease), too much for the mutex that renewal rounds
// and replies need when a broken connection ends thousands of leases at
// once.
// Whoever observes the end first (Err, Done, Context, the notifier before
// OnLost) finishes it too, so that none sees the loss before the Context
// is cancelled and Done closed.
func (s *Scheduler) endLocked(l *Lease, state uint8, err error) {
	if l.idx >= 0 {
		heap.Remove(&s.heap, int(l.idx))
	}
	l.state = state
	l.err = err
	if state == stateLost && l.counters != nil {
		l.counters.Lost.Add(1)
	}
	// From here on l.cancel and l.done are never written (Done and
	// Context made after the end are made ended), so finish may read them
	// without s.mu.
	l.ended.Store(true)
	if state == stateLost {
		s.queueLostLocked(l)
	}
}

// expireLocked ends l, tracked and past its loss deadline at now, as lost
// by the client's clock, and queues its best-effort release for the next
// round (s.expired). The server may still hold the lease (a renewal it
// applied may be unanswered yet); released, the key is free for the next
// holder at once rather than when the server's lease runs out.
func (s *Scheduler) expireLocked(l *Lease, now int64) {
	s.expired = append(s.expired, expiredLease{l: l, st: s.owners[l.owner]})
	s.unlinkLocked(l)
	s.endLocked(l, stateLost, &LostError{Key: l.key, Server: l.server, Semaphore: l.sem, Cause: expiredCause(l, now)})
}

// expireOverdueLocked ends l if it is still tracked and past its loss
// deadline, exactly as the scheduler's next round would, and pokes the
// goroutine to send its release: a holder that asks (Lease.Err and the
// rest) learns of the loss at once, even if the scheduler goroutine has
// not run since the deadline passed — after the process was frozen or
// starved of CPU, say, when it is the holder's goroutine that runs first.
// It reports whether l has ended, now or before; the caller finishes it
// after releasing s.mu.
func (s *Scheduler) expireOverdueLocked(l *Lease) bool {
	if l.state != stateTracked {
		return true
	}
	now := s.now()
	if l.deadline.Load() > now {
		return false
	}
	s.expireLocked(l, now)
	s.poke()
	return true
}

// lostErrorChunk is how many LostErrors OwnerFailed allocates at once.
const lostErrorChunk = 16

// finishAll finishes leases ended under s.mu, now released.
func finishAll(ls []*Lease) {
	for _, l := range ls {
		l.finish()
	}
}

// queueLostLocked queues l's loss for its OnLost. Queueing under the mutex that
// also decides the loss is what delivers notifications in loss order; the
// queue never blocks and never drops.
func (s *Scheduler) queueLostLocked(l *Lease) {
	if l.onLost == nil || s.notifyShut {
		return
	}
	s.lostQ = append(s.lostQ, l)
	if !s.notifying {
		s.notifying = true
		s.notifyWG.Add(1)
		go s.notify()
	}
}

// notify is the notifier goroutine: it delivers queued losses in order and
// exits when the queue is empty (the next loss starts a new one), so an
// idle scheduler costs no goroutine for it.
func (s *Scheduler) notify() {
	defer s.notifyWG.Done()
	var batch []*Lease
	for {
		s.mu.Lock()
		// Swap buffers: the delivered batch, cleared, becomes the queue.
		clear(batch)
		batch, s.lostQ = s.lostQ, batch[:0]
		if len(batch) == 0 {
			s.notifying = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		for _, l := range batch {
			l.finish()                   // OnLost comes after Done: whoever ended l may not have finished yet
			l.onLost.LeaseLost(l, l.err) // l.err was written under mu before queueing
		}
	}
}

func (s *Scheduler) linkLocked(l *Lease) {
	st := s.owners[l.owner]
	if st == nil {
		st = &ownerState{owner: l.owner}
		s.owners[l.owner] = st
	}
	l.onext = st.head
	if st.head != nil {
		st.head.oprev = l
	}
	st.head = l
	st.n++
}

func (s *Scheduler) unlinkLocked(l *Lease) {
	st := s.owners[l.owner]
	if st == nil {
		return
	}
	if l.oprev != nil {
		l.oprev.onext = l.onext
	} else if st.head == l {
		st.head = l.onext
	} else {
		return // not linked
	}
	if l.onext != nil {
		l.onext.oprev = l.oprev
	}
	l.oprev, l.onext = nil, nil
	st.n--
	if st.n == 0 {
		s.keepIdleLocked(st)
	}
}

// keepIdleLocked keeps st, which just lost its last lease, in owners for a
// while (see Scheduler.idle), dropping the state that became idle longest
// ago if it still is.
func (s *Scheduler) keepIdleLocked(st *ownerState) {
	s.idleSeq++
	st.idleSeq = s.idleSeq
	e := &s.idle[s.idleNext]
	s.idleNext = (s.idleNext + 1) % len(s.idle)
	// An entry is stale if its state has had a lease since (a later entry
	// stands for it then) or was dropped by OwnerFailed.
	if old := e.st; old != nil && old.n == 0 && old.idleSeq == e.seq && s.owners[old.owner] == old {
		delete(s.owners, old.owner)
	}
	*e = idleOwner{st: st, seq: st.idleSeq}
}

func expiredCause(l *Lease, now int64) error {
	return fmt.Errorf("%w (last confirmed send %v ago, TTL %v, server read timeout %v, %d renewal(s) unanswered)",
		errExpired, time.Duration(subSat(now, l.confirmed)).Round(time.Millisecond), l.ttl, readTimeoutText(l.s.cfg.ReadTimeout), l.inflight)
}

func readTimeoutText(d time.Duration) string {
	if d <= 0 {
		return "none"
	}
	return d.String()
}

func renewRequest(l *Lease) wire.Request {
	return wire.RenewRequest(l.key, l.token, l.sem, int64(l.ttl/time.Second))
}

func releaseRequest(l *Lease) wire.Request { return wire.ReleaseRequest(l.key, l.token, l.sem) }
