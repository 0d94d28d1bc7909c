package dflock

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// dispatchQueueLen bounds the user callbacks (log records and hooks) waiting
// for the dispatcher. A burst beyond it — thousands of leases lost at once to
// one broken connection, say — drops the excess and counts it.
const dispatchQueueLen = 4096

// dispatcher runs user code — the Logger's handler and the Hooks — on one
// goroutine of its own, in the order it was queued.
//
// Log calls and hooks happen on the goroutines that must never wait: the
// renewal scheduler, connection readers, flushers and the janitor. A slow
// handler there (a full stderr pipe, a network log sink) once stalled
// renewal replies and lost healthy leases on other keys. So those goroutines
// only queue the work, without blocking; when the queue is full the work is
// dropped and counted (ClientStats.CallbacksDropped), never waited for.
type dispatcher struct {
	q       chan func()
	quit    chan struct{}
	exited  chan struct{}
	dropped atomic.Int64
}

func newDispatcher() *dispatcher {
	d := &dispatcher{
		q:      make(chan func(), dispatchQueueLen),
		quit:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	go d.run()
	return d
}

// do queues f, or drops it if the queue is full. It never blocks.
func (d *dispatcher) do(f func()) {
	select {
	case d.q <- f:
	default:
		d.dropped.Add(1)
	}
}

func (d *dispatcher) run() {
	defer close(d.exited)
	for {
		select {
		case f := <-d.q:
			f()
		case <-d.quit:
			// Run what was queued before the stop; what comes later is
			// dropped with the queue.
			for {
				select {
				case f := <-d.q:
					f()
				default:
					return
				}
			}
		}
	}
}

// stop ends the dispatcher after it has run what is queued, waiting at most
// wait for that: a user handler that blocks must not block Client.Close
// forever. The goroutine then exits when that handler returns.
func (d *dispatcher) stop(wait time.Duration) {
	close(d.quit)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-d.exited:
	case <-t.C:
	}
}

// asyncHandler is the slog.Handler the Client logs through: Handle queues a
// copy of the record on the dispatcher and returns at once, so that no
// logging call of the SDK ever waits for the user's handler.
//
// Enabled is answered by the user's handler synchronously; slog documents it
// as a cheap level check, and answering it here keeps a disabled level free
// (no record is built, nothing is queued).
type asyncHandler struct {
	d     *dispatcher
	inner slog.Handler
}

func (h *asyncHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

func (h *asyncHandler) Handle(ctx context.Context, r slog.Record) error {
	// The record's attributes may share storage with the caller's; the
	// clone is what outlives this call.
	r = r.Clone()
	inner := h.inner
	ctx = context.WithoutCancel(ctx)
	h.d.do(func() { _ = inner.Handle(ctx, r) })
	return nil
}

func (h *asyncHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &asyncHandler{d: h.d, inner: h.inner.WithAttrs(attrs)}
}

func (h *asyncHandler) WithGroup(name string) slog.Handler {
	return &asyncHandler{d: h.d, inner: h.inner.WithGroup(name)}
}
