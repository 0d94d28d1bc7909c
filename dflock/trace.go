package dflock

import (
	"context"
	"errors"
	"time"

	"github.com/dflock-sdk/go/renew"
)

// Tracer observes a Client's operations as start/end pairs on the CALLER's
// goroutine: every Start is followed by exactly one End on the same
// goroutine, also when the call fails or (for WithLock and WithSemaphore)
// when fn panics. A Tracer is called synchronously on the hot path, so it
// must be cheap and must not block; it must be safe for concurrent use.
// Install one with WithTracer; events that happen away from any call
// (renewals, dials, losses) are Hooks.
//
// A panic in a Tracer goes on to the caller, but loses no lock: a grant
// whose AcquireEnd panics is released (the caller never gets its handle),
// as is a queued ticket's place, and a release whose ReleaseStart panics
// is still made.
type Tracer interface {
	// AcquireStart is called as an acquire begins; the context it returns
	// is passed to AcquireEnd and used for the rest of the operation (so a
	// span started here is the parent of what follows). A nil return
	// keeps ctx.
	AcquireStart(ctx context.Context, info AcquireInfo) context.Context
	// AcquireEnd is called once the acquire has returned.
	AcquireEnd(ctx context.Context, info AcquireInfo, res AcquireResult)
	// ReleaseStart is called as Release of a Lock or Semaphore begins (also
	// the release WithLock, WithSemaphore and Ticket.Cancel perform). The
	// context it returns (nil: ctx) is passed to ReleaseEnd.
	ReleaseStart(ctx context.Context, info LeaseInfo) context.Context
	// ReleaseEnd is called once the release has returned; err is what it
	// returned.
	ReleaseEnd(ctx context.Context, info LeaseInfo, err error)
}

// AcquireInfo describes an acquire to a Tracer.
type AcquireInfo struct {
	// Op is the call: "lock", "trylock", "semaphore", "trysemaphore",
	// "enqueue" (Enqueue and EnqueueSemaphore), "wait" (Ticket.Wait and
	// SemaphoreTicket.Wait), "withlock" or "withsemaphore". WithLock and
	// WithSemaphore are one pair spanning acquire, fn and release; the
	// acquire and release inside are reported too, under the context
	// AcquireStart returned for them.
	Op string
	// Key is the lock or semaphore key.
	Key string
	// Server is the address the key routes to ("" if the sharding
	// strategy placed it outside the server list).
	Server string
	// Semaphore is true for the semaphore calls.
	Semaphore bool
	// Limit is the semaphore's limit; 0 for locks.
	Limit int
}

// AcquirePath is how an acquire was granted.
type AcquirePath int

const (
	// PathNone: no lease granted (also an Enqueue that queued, which
	// counts as Granted), and the call did not wait in the wait pool.
	PathNone AcquirePath = iota
	// PathLane: granted on the control lane: uncontended, or released
	// while the call waited for a wait-pool connection (then Waited is
	// not 0).
	PathLane
	// PathWaitPool: granted on, or waited on, a wait-pool connection of
	// its own (after finding the key held, now or within the last second,
	// or by a two-phase ticket).
	PathWaitPool
)

// String returns "none", "lane" or "waitpool".
func (p AcquirePath) String() string {
	switch p {
	case PathLane:
		return "lane"
	case PathWaitPool:
		return "waitpool"
	}
	return "none"
}

// AcquireOutcome is how an acquire ended.
type AcquireOutcome int

const (
	// Granted: the lock or slot is held (for "enqueue": the ticket was
	// queued or granted at once; for "withlock": the lock was acquired and
	// fn ran, whatever it returned).
	Granted AcquireOutcome = iota
	// TimedOut: AcquireTimeout or the context's deadline passed (the error
	// matches ErrTimeout).
	TimedOut
	// Refused: a try found the key held, or the server refused the
	// request (the error carries its reply).
	Refused
	// Cancelled: the context was cancelled, the ticket cancelled, or the
	// Client closed.
	Cancelled
	// Failed: the connection or the server failed, the key or an
	// AcquireOption was invalid (see WithTracer for arguments refused
	// untraced), Wait was called again on a ticket already waited for, or
	// the lease granted was lost before it could be handed over (the error
	// matches ErrLockLost).
	Failed
)

// String returns "granted", "timed_out", "refused", "cancelled" or
// "failed", fit for a metric attribute.
func (o AcquireOutcome) String() string {
	switch o {
	case Granted:
		return "granted"
	case TimedOut:
		return "timed_out"
	case Refused:
		return "refused"
	case Cancelled:
		return "cancelled"
	}
	return "failed"
}

// AcquireResult is the end of an acquire, for Tracer.AcquireEnd.
type AcquireResult struct {
	Outcome AcquireOutcome
	// Path is how the lock or slot was granted, or PathWaitPool for a call
	// that waited and then failed; PathNone otherwise.
	Path AcquirePath
	// Waited is the time spent on the wait path (0 on the fast path):
	// getting a wait-pool connection (a dial, or, at
	// WithMaxConnsPerServer, one coming free), then waiting in the
	// server's queue on it.
	Waited time.Duration
	// Duration is the whole call.
	Duration time.Duration
	// Lease is the granted lease: zero unless Outcome is Granted, or the
	// lease was granted but ended before the call could return it (lost,
	// or released by Close; Err says which); for an "enqueue" that was
	// queued, zero too.
	Lease LeaseInfo
	// Err is the error the call returned (for "withlock": fn's error, joined
	// with a loss, or an error naming the panic if fn panicked).
	Err error
}

// WithTracer installs t to observe every acquire and release (see Tracer),
// but for calls refused before they begin: a nil ctx, a nil fn, or a
// semaphore limit below 1 returns its *ArgError untraced (an invalid key is
// traced, Failed, as the call learns of it on its way). nil means none; a
// Client has at most one (a later WithTracer replaces an earlier one).
// Default: none, at the cost of one nil check per call.
func WithTracer(t Tracer) Option {
	return func(o *options) { o.tracer = t }
}

// DialInfo describes one dial for Hooks.OnDial.
type DialInfo struct {
	Server string
	// Role is what the connection is for: "lane" (control lane), "wait"
	// (wait pool), "listener" (signals, and Emits over 256 bytes) or
	// "query" (Client.Stats).
	Role string
	// Duration covers TCP, TLS and auth.
	Duration time.Duration
	// Err is nil for a successful dial.
	Err error
}

// RenewalBatchInfo describes one batch of renewals written to one
// connection, for Hooks.OnRenewalBatch.
type RenewalBatchInfo struct {
	Server string
	// Size is the number of renewals in the batch; Renewed and Refused
	// count its answers (the rest were unanswered: the connection broke).
	Size, Renewed, Refused int
	// Latency is from the write to the last answer.
	Latency time.Duration
	// Err is the connection's error if it broke before every answer came.
	Err error
}

// SignalDropInfo describes a subscription that started dropping signals
// because its buffer was full, for Hooks.OnSignalDropped.
type SignalDropInfo struct {
	Pattern, Group string
	// Dropped is the subscription's total of dropped signals when the hook
	// runs (Subscription.Dropped).
	Dropped uint64
}

// SignalGapInfo describes a gap reported to a subscription (a listener
// connection was lost, so signals may have been missed), for
// Hooks.OnSignalGap.
type SignalGapInfo struct {
	Pattern, Group string
	Server         string
	// Err matches ErrSignalGap and wraps the connection's error.
	Err error
}

// merge returns h with the functions of more added: where both set a hook,
// the result calls h's first, then more's.
func (h Hooks) merge(more Hooks) Hooks {
	h.OnLeaseLost = both2(h.OnLeaseLost, more.OnLeaseLost)
	h.OnConnBroken = both2(h.OnConnBroken, more.OnConnBroken)
	h.OnDial = both1(h.OnDial, more.OnDial)
	h.OnRenewalBatch = both1(h.OnRenewalBatch, more.OnRenewalBatch)
	h.OnSignalDropped = both1(h.OnSignalDropped, more.OnSignalDropped)
	h.OnSignalGap = both1(h.OnSignalGap, more.OnSignalGap)
	return h
}

func both1[A any](f, g func(A)) func(A) {
	switch {
	case f == nil:
		return g
	case g == nil:
		return f
	}
	return func(a A) { defer g(a); f(a) } // g runs even if f panics
}

func both2[A, B any](f, g func(A, B)) func(A, B) {
	switch {
	case f == nil:
		return g
	case g == nil:
		return f
	}
	return func(a A, b B) { defer g(a, b); f(a, b) }
}

// outcomeOf classifies an acquire's error. The order matters: a deadline
// error also matches ErrNotAcquired, and so does a cancelled one.
func outcomeOf(err error) AcquireOutcome {
	var e *Error
	switch {
	case err == nil:
		return Granted
	case errors.Is(err, ErrTimeout):
		return TimedOut
	case errors.Is(err, errTicketUsed):
		return Failed // before ErrTicketDone: a second Wait is no cancellation
	case errors.Is(err, context.Canceled), errors.Is(err, ErrClosed), errors.Is(err, ErrTicketDone):
		return Cancelled
	case errors.Is(err, ErrLockLost):
		// Granted, but lost before it could be handed over (handedOver):
		// no try's answer, no refusal, a failure.
		return Failed
	case errors.As(err, &e) && e.Reply != "", errors.Is(err, ErrNotAcquired):
		return Refused
	}
	return Failed
}

// acquireTrace is what a traced acquire learns on its way: when it began
// to wait in the wait pool. It travels in the operation's context, which
// only a traced call carries it in.
type acquireTrace struct {
	waitStart time.Time
}

type traceKey struct{}

// noteWait records, for a traced call, that the wait in the wait pool
// begins now.
func noteWait(ctx context.Context) {
	if tr, _ := ctx.Value(traceKey{}).(*acquireTrace); tr != nil && tr.waitStart.IsZero() {
		tr.waitStart = time.Now()
	}
}

func (c *Client) acquireInfo(op, key string, limit int64) AcquireInfo {
	return AcquireInfo{Op: op, Key: key, Server: c.ServerFor(key), Semaphore: limit > 0, Limit: int(limit)}
}

// traced runs acquire — one of the Client's acquires, given the
// operation's context — between the Tracer's AcquireStart and AcquireEnd.
// End is deferred so that the pair stays balanced whatever happens inside.
func (c *Client) traced(ctx context.Context, t Tracer, info AcquireInfo, acquire func(ctx context.Context) (*held, error)) (h *held, res AcquireResult, err error) {
	start := time.Now()
	tr := &acquireTrace{}
	if tctx := t.AcquireStart(ctx, info); tctx != nil {
		ctx = tctx
	}
	defer func() {
		res = acquireResult(start, tr, h, err)
		ended := false
		defer func() {
			if !ended && h != nil && err == nil {
				// AcquireEnd panicked: the caller gets no handle, so the
				// grant must not stay held, and renewed, by nobody.
				h.giveBackUnwound()
			}
		}()
		t.AcquireEnd(ctx, info, res)
		ended = true
	}()
	h, err = acquire(context.WithValue(ctx, traceKey{}, tr))
	return h, res, err
}

func acquireResult(start time.Time, tr *acquireTrace, h *held, err error) AcquireResult {
	end := time.Now()
	res := AcquireResult{Outcome: outcomeOf(err), Duration: end.Sub(start), Err: err}
	if !tr.waitStart.IsZero() {
		res.Path, res.Waited = PathWaitPool, end.Sub(tr.waitStart)
	}
	if h != nil {
		res.Lease = h.info()
		if h.pinned == nil {
			res.Path = PathLane
		} else {
			res.Path = PathWaitPool
		}
	}
	return res
}

// tracedAcquire is acquire (Lock, TryLock, Semaphore, TrySemaphore) under
// the Tracer, if there is one.
func (c *Client) tracedAcquire(ctx context.Context, op, key string, limit int64, try bool, opts []AcquireOption) (*held, error) {
	t := c.opts.tracer
	if t == nil || ctx == nil {
		h, err := c.acquire(ctx, op, key, limit, try, opts)
		return handedOver(op, h, err)
	}
	h, _, err := c.traced(ctx, t, c.acquireInfo(op, key, limit), func(ctx context.Context) (*held, error) {
		h, err := c.acquire(ctx, op, key, limit, try, opts)
		return handedOver(op, h, err)
	})
	return h, err
}

// tracedAwait is Ticket.Wait under the Tracer, if there is one.
func (t *ticket) tracedAwait(ctx context.Context, opts []AcquireOption) (*held, error) {
	tc := t.c.opts.tracer
	if tc == nil || ctx == nil {
		h, err := t.await(ctx, opts)
		return handedOver(t.op(), h, err)
	}
	info := AcquireInfo{Op: "wait", Key: t.key, Server: t.srv.addr, Semaphore: t.limit > 0, Limit: int(t.limit)}
	h, _, err := t.c.traced(ctx, tc, info, func(ctx context.Context) (*held, error) {
		h, err := t.await(ctx, opts)
		return handedOver(t.op(), h, err)
	})
	return h, err
}

// tracedEnqueue is enqueue under the Tracer, if there is one. A queued
// ticket counts as Granted (it holds its place); Lease is set only when
// the key was granted at once.
func (c *Client) tracedEnqueue(ctx context.Context, op, key string, limit int64, opts []AcquireOption) (*ticket, error) {
	tc := c.opts.tracer
	if tc == nil || ctx == nil {
		return closedNotAcquired(c.enqueue(ctx, op, key, limit, opts))
	}
	var tk *ticket
	ended := false
	defer func() {
		if !ended && tk != nil {
			_ = tk.cancel() // AcquireEnd panicked: give the queued place back too
		}
	}()
	_, _, err := c.traced(ctx, tc, c.acquireInfo("enqueue", key, limit), func(ctx context.Context) (*held, error) {
		var err error
		tk, err = closedNotAcquired(c.enqueue(ctx, op, key, limit, opts))
		if err != nil || !tk.acquired {
			return nil, err
		}
		return tk.grant, nil
	})
	ended = true
	return tk, err
}

// errFnPanicked is the AcquireResult.Err of a WithLock or WithSemaphore
// whose fn panicked (the panic itself goes on to the caller);
// errAcquirePanicked that of one whose acquire panicked before fn ran (in
// the Tracer's inner pair: the grant, if any, was given back), and
// errReleasePanicked that of one whose release panicked after fn returned
// (in the Tracer: the release was made all the same).
var (
	errFnPanicked      = errors.New("dflock: fn panicked")
	errAcquirePanicked = errors.New("dflock: the acquire panicked before fn ran")
	errReleasePanicked = errors.New("dflock: the release panicked after fn returned")
)

// tracedWith is WithLock (limit 0) or WithSemaphore under the Tracer t:
// one pair around the whole call, and the acquire and release inside it
// traced under the context of that pair.
func (c *Client) tracedWith(ctx context.Context, t Tracer, key string, limit int, fn func(ctx context.Context) error, opts []AcquireOption) (err error) {
	op, inner := "withlock", "lock"
	if limit > 0 {
		op, inner = "withsemaphore", "semaphore"
	}
	info := c.acquireInfo(op, key, int64(limit))
	start := time.Now()
	if tctx := t.AcquireStart(ctx, info); tctx != nil {
		ctx = tctx
	}
	var h *held
	acq := AcquireResult{Outcome: Failed} // until the inner acquire returns
	returned, fnRan, fnReturned := false, false, false
	defer func() {
		res := acq // the inner acquire's outcome, path and wait; this call's duration and error
		res.Duration, res.Err = time.Since(start), err
		if !returned {
			res.Err = errAcquirePanicked
			if fnRan {
				res.Err = errFnPanicked
			}
			if fnReturned {
				res.Err = errReleasePanicked
			}
		}
		t.AcquireEnd(ctx, info, res)
	}()
	h, acq, err = c.traced(ctx, t, c.acquireInfo(inner, key, int64(limit)), func(ctx context.Context) (*held, error) {
		h, err := c.acquire(ctx, inner, key, int64(limit), false, opts)
		return handedOver(inner, h, err)
	})
	if err != nil {
		returned = true
		return err
	}
	fnRan = true
	err = runHeld(ctx, h, func(ctx context.Context) error {
		err := fn(ctx)
		fnReturned = true
		return err
	})
	returned = true
	return err
}

// tracedRelease is h.release between the Tracer's ReleaseStart and
// ReleaseEnd.
func (h *held) tracedRelease(ctx context.Context, t Tracer) (err error) {
	info := h.info()
	started, rctx := false, ctx
	defer func() {
		if !started { // ReleaseStart panicked: release all the same
			_ = h.releaseOnce(rctx)
		}
	}()
	if tctx := t.ReleaseStart(ctx, info); tctx != nil {
		ctx = tctx
	}
	started = true
	defer func() { t.ReleaseEnd(ctx, info, err) }()
	return h.releaseOnce(ctx)
}

// info describes the lease for hooks and the Tracer.
func (h *held) info() LeaseInfo {
	return LeaseInfo{Key: h.key(), Token: h.token(), Server: h.srv.addr, Semaphore: h.limit > 0, TTL: h.lease.TTL()}
}

// onDial is pool.Config.OnDial of server addr.
func (c *Client) onDial(addr, role string, d time.Duration, err error) {
	if hook := c.opts.hooks.OnDial; hook != nil {
		c.disp.do(func() { hook(DialInfo{Server: addr, Role: role, Duration: d, Err: err}) })
	}
}

// noteSignalDrop counts a signal dropped by s's full buffer; the hook
// hears only of the drops Subscription.drop reports (see
// Hooks.OnSignalDropped), so that a flood of drops cannot crowd the
// callback queue.
func (c *Client) noteSignalDrop(s *Subscription, report bool) {
	c.stats.sigDropped.Add(1)
	if hook := c.opts.hooks.OnSignalDropped; hook != nil && report {
		c.disp.do(func() { hook(SignalDropInfo{Pattern: s.pattern, Group: s.group, Dropped: s.Dropped()}) })
	}
}

// noteSignalGap counts a gap reported to s.
func (c *Client) noteSignalGap(s *Subscription, g *GapError) {
	c.stats.sigGaps.Add(1)
	if hook := c.opts.hooks.OnSignalGap; hook != nil {
		c.disp.do(func() { hook(SignalGapInfo{Pattern: s.pattern, Group: s.group, Server: g.Server, Err: g}) })
	}
}

// onRenewalBatch is renew.Config.OnBatch. It runs on a connection reader or
// the scheduler goroutine: it only queues the hook.
func (c *Client) onRenewalBatch(b renew.BatchInfo) {
	hook := c.opts.hooks.OnRenewalBatch // set, or New would not have installed this
	info := RenewalBatchInfo{Size: b.Size, Renewed: b.Renewed, Refused: b.Refused, Latency: b.Latency, Err: b.Err}
	for _, s := range c.servers {
		if &s.obs.renew == b.Counters {
			info.Server = s.addr
			break
		}
	}
	c.disp.do(func() { hook(info) })
}
