package dflock

import (
	"context"
	"strconv"
	"time"
)

// Semaphore is a held slot of a semaphore, whose key has Limit slots. Like
// a Lock it is renewed automatically until Release (or Client.Close). If it
// is lost — a renewal refused, the owning connection broken, or no renewal
// confirmed in time by the client's own clock — Done is closed, Err returns
// an error matching ErrLockLost, and Context is cancelled with that cause,
// before the server-side lease runs out whenever the client can tell.
//
// All methods are safe for concurrent use.
type Semaphore struct {
	h *held
}

// Key returns the semaphore's key.
func (s *Semaphore) Key() string { return s.h.key() }

// Token returns the server's token for this slot (opaque).
func (s *Semaphore) Token() string { return s.h.token() }

// TTL returns the lease TTL granted by the server (whole seconds), or the
// one asked for if the server stated a longer one (no dflockd does). The slot
// is renewed with this TTL until released.
func (s *Semaphore) TTL() time.Duration { return s.h.lease.TTL() }

// Limit returns the semaphore's limit: how many slots its key has.
func (s *Semaphore) Limit() int { return int(s.h.limit) }

// Server returns the address of the server holding the slot.
func (s *Semaphore) Server() string { return s.h.srv.addr }

// Fence returns the fencing token of the slot's grant, as Lock.Fence does.
// Other slots of the key are held at the same time, each with its own
// fence: a fence orders grants, it does not single out one holder.
func (s *Semaphore) Fence() (fence uint64, ok bool) { return s.h.fence, s.h.hasFence }

// Done is closed when the slot ends: lost, released, or released by Close.
func (s *Semaphore) Done() <-chan struct{} { return s.h.lease.Done() }

// Err is nil while the slot is held; afterwards it matches ErrLockLost
// (lost, wrapping the cause) or is ErrReleased (after Release, also one
// that found the slot lost).
func (s *Semaphore) Err() error { return s.h.lease.Err() }

// Context returns a context cancelled when the slot ends; context.Cause
// returns Err. Use it to stop work that must not outlive the slot. Like
// Lock.Context, its Err and Done first end a slot past its loss deadline.
func (s *Semaphore) Context() context.Context { return s.h.lease.Context() }

// Renew renews the slot now, instead of waiting for the scheduler, and
// waits for the server's answer. A refusal loses the slot and returns an
// error matching ErrLockLost; so does a loss found meanwhile (by the
// client's clock, on a silent connection), at once. A nil ctx is an
// *ArgError.
func (s *Semaphore) Renew(ctx context.Context) error { return s.h.renew(ctx) }

// Release gives the slot back. It is idempotent: later calls return the
// release's outcome once the server has answered (a call made before then
// waits for the answer while its own ctx lasts). It returns nil after a
// clean release, and an error matching ErrLockLost if the slot had been
// lost (or its lease had already expired on the server: that counts as a
// loss); one matching ErrDraining if the server, shutting
// down, answered error_draining (see Lock.Release).
//
// The release is sent even if ctx has already ended; ctx only bounds the
// wait for the server's answer. A nil ctx is an *ArgError (and releases
// nothing), as everywhere in this package.
func (s *Semaphore) Release(ctx context.Context) error { return s.h.release(ctx) }

// newSemaphore wraps the result of an acquire (see handedOver) as a
// Semaphore.
func newSemaphore(h *held, err error) (*Semaphore, error) {
	if err != nil {
		return nil, err
	}
	return (*Semaphore)(&h.handle), nil // see newLock
}

// Semaphore acquires one of limit slots of the semaphore key, waiting while
// all are held, like Lock. Every holder of a key must use the same limit:
// the server refuses a different one with ErrLimitMismatch until the key
// has been idle long enough to be forgotten. Servers before v1.14 keep
// locks and semaphores in one key space: there a Lock and a Semaphore of
// the same key are one resource (a limit-1 semaphore excludes the lock; any
// other limit is refused with ErrLimitMismatch, as above);
// from v1.14 on they are independent.
func (c *Client) Semaphore(ctx context.Context, key string, limit int, opts ...AcquireOption) (*Semaphore, error) {
	if err := checkLimit(limit); err != nil {
		return nil, err
	}
	return newSemaphore(c.tracedAcquire(ctx, "semaphore", key, int64(limit), false, opts))
}

// TrySemaphore acquires a slot of the semaphore key if one is free and
// fails at once with ErrNotAcquired otherwise.
func (c *Client) TrySemaphore(ctx context.Context, key string, limit int, opts ...AcquireOption) (*Semaphore, error) {
	if err := checkLimit(limit); err != nil {
		return nil, err
	}
	return newSemaphore(c.tracedAcquire(ctx, "trysemaphore", key, int64(limit), true, opts))
}

// WithSemaphore runs fn while holding a slot of the semaphore key, like
// WithLock.
func (c *Client) WithSemaphore(ctx context.Context, key string, limit int, fn func(ctx context.Context) error, opts ...AcquireOption) error {
	if fn == nil {
		return &ArgError{Arg: "fn", Reason: "must not be nil"}
	}
	if t := c.opts.tracer; t != nil && ctx != nil && limit >= 1 {
		return c.tracedWith(ctx, t, key, limit, fn, opts)
	}
	s, err := c.Semaphore(ctx, key, limit, opts...)
	if err != nil {
		return err
	}
	return runHeld(ctx, s.h, fn)
}

func checkLimit(limit int) error {
	if limit < 1 {
		return &ArgError{Arg: "limit", Value: strconv.Itoa(limit), Reason: "must be at least 1"}
	}
	return nil
}
