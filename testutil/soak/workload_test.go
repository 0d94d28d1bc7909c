package soak

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/dflock"
)

// The soak's keys: a few lock keys so that holders contend, and semaphores
// with small limits.
const (
	numLockKeys = 16
	numChannels = 12
)

var semLimits = []int{2, 3, 4}

func lockKey(i int) string { return fmt.Sprintf("lk.%d", i) }
func semKey(i int) string  { return fmt.Sprintf("sm.%d", i) }
func channel(i int) string { return fmt.Sprintf("ev.%d", i) }

// recorder collects what the goroutines did and believed.
type recorder struct {
	mu                 sync.Mutex
	ops                map[string]map[string]int // op → outcome → count
	beliefs            []*belief
	unusual            map[string][]string // op → first few errors that match no expected sentinel
	overruns           []time.Duration     // per call whose context ended before it returned
	slow               []overrun           // calls that overran beyond overrunBound
	lostHook           atomic.Int64
	hooked             sync.Map      // token → true: OnLeaseLost was called for it
	fnErrs             []string      // WithLock calls that ran fn but returned an error other than a loss
	cancelMax          time.Duration // longest Ticket.Cancel (bounded by DefaultReleaseTimeout)
	withLockOverrunMax time.Duration

	emits map[string]*emission // by payload
	subs  []*subRecord
}

func newRecorder() *recorder {
	return &recorder{
		ops:     make(map[string]map[string]int),
		unusual: make(map[string][]string),
		emits:   make(map[string]*emission),
	}
}

// outcome names an operation's result by the sentinel it matches.
func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, dflock.ErrTimeout):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, dflock.ErrNotAcquired):
		return "not acquired"
	case errors.Is(err, dflock.ErrServerUnavailable):
		return "unavailable"
	case errors.Is(err, dflock.ErrLockLost):
		return "lost"
	case errors.Is(err, dflock.ErrTicketDone):
		return "ticket done"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, dflock.ErrLeaseExpired):
		return "lease expired"
	case errors.Is(err, dflock.ErrRefused):
		return "refused"
	case errors.Is(err, dflock.ErrSignalGap):
		return "gap"
	}
	return "other"
}

func (r *recorder) op(op string, err error) {
	o := outcome(err)
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.ops[op]
	if m == nil {
		m = make(map[string]int)
		r.ops[op] = m
	}
	m[o]++
	if o == "other" || o == "refused" {
		if len(r.unusual[op]) < 5 {
			r.unusual[op] = append(r.unusual[op], err.Error())
		}
	}
}

// overran records a call that returned at ret while its context had ended
// at ended (invariant d).
func (r *recorder) overran(op string, ended, ret time.Time) {
	d := ret.Sub(ended)
	if d < 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.overruns = append(r.overruns, d)
	if d > overrunBound {
		r.slow = append(r.slow, overrun{op: op, ended: ended, ret: ret})
	}
}

func (r *recorder) believed(b *belief) {
	if b.start.IsZero() {
		return // lost before the goroutine ever saw it held
	}
	r.mu.Lock()
	r.beliefs = append(r.beliefs, b)
	r.mu.Unlock()
}

// callCtx is a random context for one call: a deadline, a cancellation
// mid-call, or both; ended reports when it ended, if it has.
type callCtx struct {
	ctx      context.Context
	cancel   context.CancelFunc
	deadline time.Time
	timer    *time.Timer
	cancelAt atomic.Pointer[time.Time]  // reading taken after cancel returned
	stopAt   *atomic.Pointer[time.Time] // when the phase's context was cancelled
}

func (cc *callCtx) ended() (time.Time, bool) {
	if cc.stopAt == nil {
		return cc.ownEnd()
	}
	if at := cc.stopAt.Load(); at != nil && cc.ctx.Err() != nil {
		// The phase ended the call's context (its parent) before its own
		// deadline or cancellation, possibly.
		if e, ok := cc.ownEnd(); !ok || at.Before(e) {
			return *at, true
		}
	}
	return cc.ownEnd()
}

func (cc *callCtx) ownEnd() (time.Time, bool) {
	if at := cc.cancelAt.Load(); at != nil {
		if !cc.deadline.IsZero() && cc.deadline.Before(*at) {
			return cc.deadline, true
		}
		return *at, true
	}
	if !cc.deadline.IsZero() && !time.Now().Before(cc.deadline) {
		return cc.deadline, true
	}
	return time.Time{}, false
}

func (cc *callCtx) done() {
	if cc.timer != nil {
		cc.timer.Stop()
	}
	cc.cancel()
}

// worker is one goroutine of the workload.
type worker struct {
	id      int
	client  int
	c       *dflock.Client
	tap     *tokenTap // the grant tokens c read
	rng     *rand.Rand
	rec     *recorder
	cl      *cluster
	stop    <-chan struct{}
	base    context.Context            // cancelled when the phase ends
	stopAt  *atomic.Pointer[time.Time] // reading taken after base was cancelled
	signals bool                       // the servers have signals (v1.16 phase)
	seq     int
}

func (w *worker) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(w.rng.Int64N(int64(hi-lo)))
}

// newCtx draws a context: always bounded, so every call ends.
func (w *worker) newCtx() *callCtx {
	cc := &callCtx{stopAt: w.stopAt}
	base := w.base
	switch w.rng.IntN(4) {
	case 0: // a short deadline that often ends a wait
		cc.deadline = time.Now().Add(w.between(20*time.Millisecond, 1500*time.Millisecond))
	case 1: // cancelled mid-call
		cc.deadline = time.Now().Add(5 * time.Second)
	default:
		cc.deadline = time.Now().Add(w.between(time.Second, 4*time.Second))
	}
	cc.ctx, cc.cancel = context.WithDeadline(base, cc.deadline)
	if w.rng.IntN(4) == 1 {
		cancel := cc.cancel
		cc.timer = time.AfterFunc(w.between(5*time.Millisecond, 1200*time.Millisecond), func() {
			cancel()
			now := time.Now()
			cc.cancelAt.Store(&now)
		})
	}
	return cc
}

// finish records a call's outcome and overrun, and releases its context.
func (w *worker) finish(op string, cc *callCtx, err error) {
	ret := time.Now()
	if ended, ok := cc.ended(); ok {
		w.rec.overran(op, ended, ret)
	}
	cc.done()
	w.rec.op(op, err)
}

func (w *worker) lease() dflock.AcquireOption {
	return dflock.LeaseTTL(time.Duration(1+w.rng.IntN(3)) * time.Second)
}

func (w *worker) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

func (w *worker) run() {
	for !w.stopped() {
		n := w.rng.IntN(100)
		switch {
		case n < 20:
			w.lock()
		case n < 30:
			w.tryLock()
		case n < 42:
			w.withLock()
		case n < 58:
			w.semaphore()
		case n < 74:
			w.enqueue()
		case n < 90 && w.signals:
			w.emit()
		default:
			// A pause, so that not every goroutine is always busy.
			select {
			case <-w.stop:
			case <-time.After(w.between(time.Millisecond, 100*time.Millisecond)):
			}
		}
	}
}

func (w *worker) lock() {
	key := lockKey(w.rng.IntN(numLockKeys))
	cc := w.newCtx()
	opts := []dflock.AcquireOption{w.lease()}
	if w.rng.IntN(3) == 0 {
		opts = append(opts, dflock.AcquireTimeout(w.between(0, 2*time.Second)))
	}
	l, err := w.c.Lock(cc.ctx, key, opts...)
	w.finish("Lock", cc, err)
	if err == nil {
		w.hold("Lock", l, 0)
	}
}

func (w *worker) tryLock() {
	key := lockKey(w.rng.IntN(numLockKeys))
	cc := w.newCtx()
	l, err := w.c.TryLock(cc.ctx, key, w.lease())
	w.finish("TryLock", cc, err)
	if err == nil {
		w.hold("TryLock", l, 0)
	}
}

func (w *worker) semaphore() {
	i := w.rng.IntN(len(semLimits))
	key, limit := semKey(i), semLimits[i]
	cc := w.newCtx()
	var l *dflock.Semaphore
	var err error
	op := "Semaphore"
	if w.rng.IntN(3) == 0 {
		op = "TrySemaphore"
		l, err = w.c.TrySemaphore(cc.ctx, key, limit, w.lease())
	} else {
		l, err = w.c.Semaphore(cc.ctx, key, limit, w.lease())
	}
	w.finish(op, cc, err)
	if err == nil {
		w.hold(op, l, l.Limit())
	}
}

func (w *worker) withLock() {
	key := lockKey(w.rng.IntN(numLockKeys))
	cc := w.newCtx()
	// WithLock does not show its server: its belief is on the key's server,
	// and is matched with a grant there that its Client read, so a WithLock
	// routed elsewhere finds none.
	home := w.cl.index(w.c.ServerFor(key))
	b := &belief{client: w.client, op: "WithLock", key: key, node: home, home: home}
	start := time.Now()
	b.call, b.seen = start, w.tap.has
	var ran atomic.Bool
	err := w.c.WithLock(cc.ctx, key, func(ctx context.Context) error {
		ran.Store(true)
		context.AfterFunc(ctx, func() {
			now := time.Now()
			if cause := context.Cause(ctx); errors.Is(cause, dflock.ErrLockLost) {
				b.lost.Store(&now)
				s := cause.Error()
				b.lostErr.Store(&s)
			}
		})
		w.believe(b, ctx.Done(), nil)
		b.relFrom = time.Now()
		return nil
	}, w.lease())
	ret := time.Now()
	if ran.Load() {
		// WithLock released after fn: its nil promises that release as
		// Release's does (checkReleases, invariant g).
		b.relErr, b.relRet = err, ret
	}
	// WithLock releases with its own bound (DefaultReleaseTimeout) after
	// fn: it may outlive ctx by that much, so it is measured apart.
	if ended, ok := cc.ended(); ok && ret.Sub(ended) > 0 {
		w.rec.mu.Lock()
		w.rec.withLockOverrunMax = max(w.rec.withLockOverrunMax, ret.Sub(ended))
		w.rec.mu.Unlock()
		if ret.Sub(ended) > dflock.DefaultReleaseTimeout+overrunBound && ret.Sub(start) > 0 {
			w.rec.overran("WithLock (beyond its release bound)", ended.Add(dflock.DefaultReleaseTimeout), ret)
		}
	}
	cc.done()
	w.rec.op("WithLock", err)
	if ran.Load() && err != nil && !errors.Is(err, dflock.ErrLockLost) {
		w.rec.mu.Lock()
		w.rec.fnErrs = append(w.rec.fnErrs, fmt.Sprintf("client %d WithLock %q ran fn, then returned %v", w.client, key, err))
		w.rec.mu.Unlock()
	}
	b.released = true
	w.rec.believed(b)
}

func (w *worker) enqueue() {
	sem := w.rng.IntN(3) == 0
	var key string
	var limit int
	cc := w.newCtx()
	var t ticket
	var err error
	op := "Enqueue"
	if sem {
		i := w.rng.IntN(len(semLimits))
		key, limit = semKey(i), semLimits[i]
		op = "EnqueueSemaphore"
		var st *dflock.SemaphoreTicket
		st, err = w.c.EnqueueSemaphore(cc.ctx, key, limit, w.lease())
		t = ticket{cancel: st.Cancel, wait: func(ctx context.Context, opts ...dflock.AcquireOption) (lease, error) {
			s, err := st.Wait(ctx, opts...)
			return s, err
		}}
	} else {
		key = lockKey(w.rng.IntN(numLockKeys))
		var lt *dflock.Ticket
		lt, err = w.c.Enqueue(cc.ctx, key, w.lease())
		t = ticket{cancel: lt.Cancel, wait: func(ctx context.Context, opts ...dflock.AcquireOption) (lease, error) {
			l, err := lt.Wait(ctx, opts...)
			return l, err
		}}
	}
	w.finish(op, cc, err)
	if err != nil {
		return
	}
	cancel := func() {
		start := time.Now()
		err := t.cancel()
		d := time.Since(start)
		w.rec.mu.Lock()
		w.rec.cancelMax = max(w.rec.cancelMax, d)
		w.rec.mu.Unlock()
		w.rec.op("Ticket.Cancel", err)
	}
	switch n := w.rng.IntN(10); {
	case n < 3: // give up the place
		select {
		case <-w.stop:
		case <-time.After(w.between(0, 300*time.Millisecond)):
		}
		cancel()
	case n < 5: // Cancel while Wait is in progress
		cc := w.newCtx()
		done := make(chan struct{})
		go func() {
			defer close(done)
			time.Sleep(w.betweenSafe(0, 500*time.Millisecond))
			cancel()
		}()
		l, err := t.wait(cc.ctx)
		w.finish("Ticket.Wait", cc, err)
		<-done
		if err == nil {
			w.hold("Ticket.Wait", l, limit)
		}
	default:
		cc := w.newCtx()
		var opts []dflock.AcquireOption
		if w.rng.IntN(3) == 0 {
			opts = append(opts, dflock.AcquireTimeout(w.between(0, 2*time.Second)))
		}
		l, err := t.wait(cc.ctx, opts...)
		w.finish("Ticket.Wait", cc, err)
		if err == nil {
			w.hold("Ticket.Wait", l, limit)
		} else if !errors.Is(err, dflock.ErrTicketDone) {
			cancel() // a failed Wait ends the ticket; Cancel must be harmless
		}
	}
}

// betweenSafe is between for use off the worker's goroutine: the worker's
// rand source is not safe for concurrent use, so it draws from the global one.
func (w *worker) betweenSafe(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rand.Int64N(int64(hi-lo)))
}

// lease is what the workload does with a *dflock.Lock or a *dflock.Semaphore.
type lease interface {
	Key() string
	Token() string
	Server() string
	Fence() (uint64, bool)
	Context() context.Context
	Done() <-chan struct{}
	Renew(ctx context.Context) error
	Release(ctx context.Context) error
}

// ticket is a *dflock.Ticket or a *dflock.SemaphoreTicket, whose Waits
// return different types.
type ticket struct {
	cancel func() error
	wait   func(ctx context.Context, opts ...dflock.AcquireOption) (lease, error)
}

// hold holds l (a semaphore slot if limit > 0) for a random time, checking
// every few milliseconds whether it is still held (recording the belief),
// renewing it now and then, and releases it.
func (w *worker) hold(op string, l lease, limit int) {
	b := &belief{client: w.client, op: op, key: l.Key(), token: l.Token(), node: w.cl.index(l.Server()),
		home: w.cl.index(w.c.ServerFor(l.Key())), sem: limit > 0, limit: limit}
	b.fence, b.hasFence = l.Fence()
	context.AfterFunc(l.Context(), func() {
		now := time.Now()
		if cause := context.Cause(l.Context()); errors.Is(cause, dflock.ErrLockLost) {
			b.lost.Store(&now)
			s := cause.Error()
			b.lostErr.Store(&s)
		}
	})
	w.believe(b, l.Done(), l)
	b.released = true
	cc := w.newCtx()
	err := l.Release(cc.ctx)
	b.relErr, b.relRet = err, time.Now()
	w.finish("Release", cc, err)
	w.rec.believed(b)
}

// believe checks done every few milliseconds for a random hold time and
// records the readings at which the lease was still held. With l, it also
// renews now and then.
func (w *worker) believe(b *belief, done <-chan struct{}, l lease) {
	var holdFor time.Duration
	if w.rng.IntN(10) < 7 {
		holdFor = w.between(time.Millisecond, 200*time.Millisecond)
	} else {
		holdFor = w.between(500*time.Millisecond, 4*time.Second)
	}
	until := time.Now().Add(holdFor)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		t0 := time.Now()
		select {
		case <-done:
			return
		default:
		}
		if b.start.IsZero() {
			b.start = t0
		}
		b.last = t0
		if !t0.Before(until) || w.stopped() {
			return
		}
		if l != nil && w.rng.IntN(50) == 0 {
			cc := w.newCtx()
			err := l.Renew(cc.ctx)
			w.finish("Renew", cc, err)
			continue
		}
		timer.Reset(w.between(2*time.Millisecond, 20*time.Millisecond))
		select {
		case <-done:
			return
		case <-timer.C:
		}
	}
}

// emission is one Emit: its payload is unique.
type emission struct {
	payload    string
	channel    string
	node       int
	start, end time.Time
	ok         bool
	receivers  int // the server's count of receivers, when ok
}

func (w *worker) emit() {
	ch := channel(w.rng.IntN(numChannels))
	w.seq++
	payload := fmt.Sprintf("c%d.w%d.%d", w.client, w.id, w.seq)
	w.rec.emit(w.c, w.cl, ch, payload, w.newCtx())
}

func (r *recorder) emit(c *dflock.Client, cl *cluster, ch, payload string, cc *callCtx) {
	e := &emission{payload: payload, channel: ch, node: cl.index(c.ServerFor(ch)), start: time.Now()}
	r.mu.Lock()
	r.emits[payload] = e
	r.mu.Unlock()
	n, err := c.Emit(cc.ctx, ch, payload)
	end := time.Now()
	if ended, ok := cc.ended(); ok {
		r.overran("Emit", ended, end)
	}
	cc.done()
	r.mu.Lock()
	e.end, e.ok, e.receivers = end, err == nil, n
	r.mu.Unlock()
	r.op("Emit", err)
}

// subRecord is what one Subscription received, in order.
type subRecord struct {
	client   int
	pattern  string
	group    string
	nodes    []int // the servers it listens on
	listened time.Time
	long     bool // lives for the whole phase (and gets end markers)
	sub      *dflock.Subscription

	mu      sync.Mutex
	entries []entry
	waiters map[string]chan struct{}
	dropped uint64
}

type entry struct {
	payload string
	gapNode int // ≥ 0 for a gap marker
	at      time.Time
}

func (s *subRecord) consume(cl *cluster) {
	for sig := range s.sub.C() {
		e := entry{payload: sig.Payload, gapNode: -1, at: time.Now()}
		if sig.Err != nil {
			var ge *dflock.GapError
			if errors.As(sig.Err, &ge) {
				e.gapNode = cl.index(ge.Server)
			} else {
				e.gapNode = len(cl.nodes) // unattributable: covers nothing
			}
		}
		s.mu.Lock()
		s.entries = append(s.entries, e)
		if ch, ok := s.waiters[e.payload]; ok && e.gapNode < 0 {
			close(ch)
			delete(s.waiters, e.payload)
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.dropped = s.sub.Dropped()
	s.mu.Unlock()
}

// await returns a channel closed once payload has been received.
func (s *subRecord) await(payload string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	for _, e := range s.entries {
		if e.payload == payload && e.gapNode < 0 {
			close(ch)
			return ch
		}
	}
	if s.waiters == nil {
		s.waiters = make(map[string]chan struct{})
	}
	s.waiters[payload] = ch
	return ch
}

// patternMatches is the soak's own matcher for its few pattern shapes.
func patternMatches(pattern, ch string) bool {
	switch {
	case pattern == ">":
		return true
	case strings.HasSuffix(pattern, ".>"):
		return strings.HasPrefix(ch, strings.TrimSuffix(pattern, ">")) && len(ch) > len(pattern)-1
	case strings.HasSuffix(pattern, ".*"):
		p := strings.TrimSuffix(pattern, "*")
		return strings.HasPrefix(ch, p) && !strings.Contains(ch[len(p):], ".") && len(ch) > len(p)
	}
	return pattern == ch
}

// sortedKeys returns m's keys, sorted.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
