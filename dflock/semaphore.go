package dflock

import (
	"context"
	"strconv"
)

// Semaphore acquires one of limit slots of the semaphore key, waiting while
// all are held, like Lock. Every holder of a key must use the same limit:
// the server refuses a different one with ErrLimitMismatch until the key
// has been idle long enough to be forgotten. The returned Lock is the slot.
func (c *Client) Semaphore(ctx context.Context, key string, limit int, opts ...AcquireOption) (*Lock, error) {
	if err := checkLimit(limit); err != nil {
		return nil, err
	}
	return c.acquire(ctx, "semaphore", key, int64(limit), false, opts)
}

// TrySemaphore acquires a slot of the semaphore key if one is free and
// fails at once with ErrNotAcquired otherwise.
func (c *Client) TrySemaphore(ctx context.Context, key string, limit int, opts ...AcquireOption) (*Lock, error) {
	if err := checkLimit(limit); err != nil {
		return nil, err
	}
	return c.acquire(ctx, "trysemaphore", key, int64(limit), true, opts)
}

// WithSemaphore runs fn while holding a slot of the semaphore key, like
// WithLock.
func (c *Client) WithSemaphore(ctx context.Context, key string, limit int, fn func(ctx context.Context) error, opts ...AcquireOption) error {
	if fn == nil {
		return &ArgError{Arg: "fn", Reason: "must not be nil"}
	}
	l, err := c.Semaphore(ctx, key, limit, opts...)
	if err != nil {
		return err
	}
	return runHeld(ctx, l, fn)
}

func checkLimit(limit int) error {
	if limit < 1 {
		return &ArgError{Arg: "limit", Value: strconv.Itoa(limit), Reason: "must be at least 1"}
	}
	return nil
}
