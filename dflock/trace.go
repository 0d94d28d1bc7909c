package dflock

import (
	"context"
	"errors"
	"time"
)

// Tracer observes a Client's operations as start/end pairs on the CALLER's
// goroutine: every Start is followed by exactly one End on the same
// goroutine, also when the call fails or (for WithLock and WithSemaphore)
// when fn panics. A Tracer is called synchronously on the hot path, so it
// must be cheap and must not block; it must be safe for concurrent use.
// Install one with WithTracer; events that happen away from any call
// (renewals, dials, losses) are Hooks.
type Tracer interface {
	// AcquireStart is called as an acquire begins; the context it returns
	// is passed to AcquireEnd and used for the rest of the operation (so a
	// span started here is the parent of what follows). It must not return
	// nil.
	AcquireStart(ctx context.Context, info AcquireInfo) context.Context
	// AcquireEnd is called once the acquire has returned.
	AcquireEnd(ctx context.Context, info AcquireInfo, res AcquireResult)
	// ReleaseStart is called as Release of a Lock or Semaphore begins (also
	// the release WithLock, WithSemaphore and Ticket.Cancel perform). The
	// context it returns is passed to ReleaseEnd. It must not return nil.
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
	// PathNone: not granted, and the call did not wait in the wait pool.
	PathNone AcquirePath = iota
	// PathLane: granted on the control lane (uncontended).
	PathLane
	// PathWaitPool: granted on, or waited on, a wait-pool connection of
	// its own (after finding the key held, or by a two-phase ticket).
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
	// Failed: the connection or the server failed, or an argument was
	// invalid.
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
	// Waited is the time spent waiting in the wait pool (0 on the fast
	// path).
	Waited time.Duration
	// Duration is the whole call.
	Duration time.Duration
	// Lease is the granted lease (zero unless Outcome is Granted; for an
	// "enqueue" that was queued, zero too).
	Lease LeaseInfo
	// Err is the error the call returned (for "withlock": fn's error, joined
	// with a loss, or an error naming the panic if fn panicked).
	Err error
}

// WithTracer installs t to observe every acquire and release (see Tracer).
// nil means none; a Client has at most one (a later WithTracer replaces an
// earlier one). Default: none, at the cost of one nil check per call.
func WithTracer(t Tracer) Option {
	return func(o *options) { o.tracer = t }
}

// DialInfo describes one dial for Hooks.OnDial.
type DialInfo struct {
	Server string
	// Role is what the connection is for: "lane" (control lane), "wait"
	// (wait pool), "listener" (signals) or "query" (Client.Stats).
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
	return func(a A) { f(a); g(a) }
}

func both2[A, B any](f, g func(A, B)) func(A, B) {
	switch {
	case f == nil:
		return g
	case g == nil:
		return f
	}
	return func(a A, b B) { f(a, b); g(a, b) }
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
	case errors.Is(err, context.Canceled), errors.Is(err, ErrClosed), errors.Is(err, ErrTicketDone):
		return Cancelled
	case errors.As(err, &e) && e.Reply != "", errors.Is(err, ErrNotAcquired):
		return Refused
	}
	return Failed
}
