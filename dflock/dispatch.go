package dflock

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// dispatchQueueLen bounds the user callbacks (log records and hooks) waiting
// for the dispatcher. Beyond it, the work is dropped and counted.
const dispatchQueueLen = 4096

// lossQueueLen bounds the loss reports (OnLeaseLost and its log record)
// waiting: far more than the other callbacks, since one broken connection
// loses all its leases at once and each is reported, but still a bound, for
// a handler stuck while leases keep being lost.
const lossQueueLen = 1 << 17

// dispatcher runs user code — the Logger's handler and the Hooks — on one
// goroutine of its own, in the order it was queued (loss reports in their
// own order, among the rest).
//
// Log calls and hooks happen on the goroutines that must never wait: the
// renewal scheduler, connection readers, flushers and the janitor. (The
// only user code those run themselves is a WithDialer connection's methods
// and crypto/tls's use of the tls.Config; see WithDialer and WithTLS.) A slow
// handler there (a full stderr pipe, a network log sink) once stalled
// renewal replies and lost healthy leases on other keys. So those goroutines
// only queue the work, without blocking; when the queue is full the work is
// dropped and counted (ClientStats.CallbacksDropped), never waited for.
//
// Loss reports have a queue of their own (doLoss), lossQueueLen long: a
// burst of thousands of losses from one broken connection must reach the
// user whole, and the renewal scheduler's notifier, which queues them, must
// not wait for the user's hooks either (it releases the lost leases aside).
type dispatcher struct {
	q         chan func()
	lossReady chan struct{} // a token while losses are queued
	quit      chan struct{}
	exited    chan struct{}
	dropped   atomic.Int64
	// abandoned: stop gave up waiting for a handler. What is still queued
	// is dropped and counted rather than run after Close has returned,
	// against whatever the program tore down since.
	abandoned atomic.Bool

	lossMu sync.Mutex
	losses []func()
	// batch is the losses runLosses took, batch[batchNext:] those not yet
	// begun: kept here, not on runLosses' stack, so that dropQueued can
	// drop the rest of a batch whose handler is stuck, and a goroutine
	// that replaces one a callback ended (Goexit) carries on with it.
	batch       []func()
	batchNext   int
	lossPending int // queued and not yet begun (the batch's rest included)

	// gid is the id of the dispatcher's goroutine: a hook that calls
	// Client.Close runs on it, and Close must not wait for it (onDispatcher).
	gid atomic.Uint64

	// goexited: the callback running called runtime.Goexit (t.FailNow,
	// require.* in a test's hook), which no recover stops. Set and read
	// on the dispatcher's goroutine only; run's deferred function then
	// starts a new one, which carries on where the old one stopped.
	goexited bool
}

func newDispatcher() *dispatcher {
	d := &dispatcher{
		q:         make(chan func(), dispatchQueueLen),
		lossReady: make(chan struct{}, 1),
		quit:      make(chan struct{}),
		exited:    make(chan struct{}),
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

// doLoss queues the report of a loss, or drops it if lossQueueLen are
// waiting. It never blocks.
func (d *dispatcher) doLoss(f func()) {
	d.lossMu.Lock()
	if d.lossPending >= lossQueueLen {
		d.lossMu.Unlock()
		d.dropped.Add(1)
		return
	}
	d.losses = append(d.losses, f)
	d.lossPending++
	d.lossMu.Unlock()
	select {
	case d.lossReady <- struct{}{}:
	default: // a token is there already
	}
}

// lossesFirst runs the loss reports queued so far, before a call just
// taken from q: one queued before that call must run first, and its token
// may have come in while the dispatcher was already selecting.
func (d *dispatcher) lossesFirst() {
	select {
	case <-d.lossReady:
		d.runLosses()
	default:
	}
}

// runLosses runs the loss reports queued so far, after the rest of a batch
// a callback's Goexit left.
func (d *dispatcher) runLosses() {
	d.lossMu.Lock()
	if d.batchNext < len(d.batch) {
		d.batch = append(d.batch[d.batchNext:len(d.batch):len(d.batch)], d.losses...)
		clear(d.losses)
		d.losses = d.losses[:0]
	} else {
		d.batch, d.losses = d.losses, nil
	}
	d.batchNext = 0
	for d.batchNext < len(d.batch) {
		f := d.batch[d.batchNext]
		d.batch[d.batchNext] = nil
		d.batchNext++
		d.lossPending--
		d.lossMu.Unlock()
		d.call(f)
		d.lossMu.Lock()
	}
	d.batch, d.batchNext = nil, 0
	d.lossMu.Unlock()
}

func (d *dispatcher) run() {
	d.gid.Store(goid())
	defer func() {
		if d.goexited {
			d.goexited = false
			go d.run()
			// The rest of a batch of losses the callback ended.
			select {
			case d.lossReady <- struct{}{}:
			default:
			}
			return
		}
		close(d.exited)
	}()
	for {
		// A call taken from q runs the losses queued before it first
		// (lossesFirst): a loss report never runs after a call queued
		// after it (it may run before calls queued before it).
		select {
		case f := <-d.q:
			d.lossesFirst()
			d.call(f)
		case <-d.lossReady:
			d.runLosses()
		case <-d.quit:
			// Run what was queued before the stop; what comes later is
			// dropped with the queue.
			d.runLosses()
			for {
				select {
				case f := <-d.q:
					d.lossesFirst()
					d.call(f)
				default:
					d.runLosses()
					return
				}
			}
		}
	}
}

// call runs f unless stop has given up. A panic in user code is recovered
// and printed with its stack to standard error — not to the Logger, whose
// handler may be what panicked — as net/http does for a handler: it must
// neither end the program from a goroutine the program does not own nor
// stop the hooks and log records that follow.
//
// A callback that calls runtime.Goexit ends this goroutine whatever call
// does; it is noted (goexited), and run's deferred function starts another,
// so that the hooks and log records after it still run.
func (d *dispatcher) call(f func()) {
	if d.abandoned.Load() {
		d.dropped.Add(1)
		return
	}
	returned := false
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "dflock: a hook or log handler panicked: %v\n%s", r, debug.Stack())
		} else if !returned {
			d.goexited = true
		}
	}()
	f()
	returned = true
}

// stop ends the dispatcher after it has run what is queued, waiting at most
// wait for that: a user handler that blocks must not block Client.Close
// forever. The goroutine then exits when that handler returns, dropping
// what is still queued.
func (d *dispatcher) stop(wait time.Duration) {
	close(d.quit)
	if d.onDispatcher() {
		// Close called from a hook: the dispatcher is this goroutine, held
		// in that hook. What is queued runs once the hook returns.
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-d.exited:
	case <-t.C:
		d.abandoned.Store(true)
		d.dropQueued()
	}
}

// dropQueued counts as dropped, when stop gives up, what is queued: it
// will never run, and Snapshot after Close must say so. Each call is taken
// from q once, by this or by the dispatcher (whose call counts it once it
// sees abandoned); so are the queued losses, and the rest of a batch of
// losses the stuck handler belongs to (which itself runs, if it returns).
func (d *dispatcher) dropQueued() {
	for drained := false; !drained; {
		select {
		case <-d.q:
			d.dropped.Add(1)
		default:
			drained = true
		}
	}
	d.lossMu.Lock()
	n := len(d.losses) + len(d.batch) - d.batchNext
	clear(d.losses)
	d.losses = d.losses[:0]
	clear(d.batch[d.batchNext:])
	d.batch = d.batch[:d.batchNext]
	d.lossPending -= n
	d.lossMu.Unlock()
	d.dropped.Add(int64(n))
}

// asyncHandler is the slog.Handler the Client logs through: Handle queues a
// copy of the record on the dispatcher and returns at once, so that no
// logging call of the SDK ever waits for the user's handler.
//
// Enabled does not ask the user's handler either: even a level check is
// user code, and a handler whose Enabled takes the same mutex as a stuck
// Handle once held a connection reader and lost a healthy lease. The
// dispatcher asks it, for each record, just before Handle; a level it finds
// disabled is answered false here, without building or queueing records,
// for the next levelRecheck, after which one record goes through to ask
// again (a handler's level may change, slog.LevelVar).
type asyncHandler struct {
	d      *dispatcher
	inner  slog.Handler
	levels *levelCache
}

func newAsyncHandler(d *dispatcher, inner slog.Handler) *asyncHandler {
	return &asyncHandler{d: d, inner: inner, levels: newLevelCache()}
}

func (h *asyncHandler) Enabled(_ context.Context, level slog.Level) bool {
	return !h.levels.disabled(level)
}

func (h *asyncHandler) Handle(ctx context.Context, r slog.Record) error {
	// The record's attributes may share storage with the caller's; the
	// clone is what outlives this call.
	r = r.Clone()
	inner, levels := h.inner, h.levels
	loss := ctx.Value(lossKey{}) != nil
	ctx = context.WithoutCancel(ctx)
	f := func() {
		if !inner.Enabled(ctx, r.Level) {
			levels.found(r.Level, false)
			return
		}
		levels.found(r.Level, true)
		_ = inner.Handle(ctx, r)
	}
	if loss {
		h.d.doLoss(f)
	} else {
		h.d.do(f)
	}
	return nil
}

// lossKey marks the context of the log call that reports a loss, whose
// record is queued with doLoss.
type lossKey struct{}

// lossReport is that context.
var lossReport = context.WithValue(context.Background(), lossKey{}, true)

// A derived handler may enable other levels: it learns its own.
func (h *asyncHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return newAsyncHandler(h.d, h.inner.WithAttrs(attrs))
}

func (h *asyncHandler) WithGroup(name string) slog.Handler {
	return newAsyncHandler(h.d, h.inner.WithGroup(name))
}

// levelRecheck is how long a level the user's handler refused stays
// refused without asking it again.
const levelRecheck = time.Second

// levelCache holds, for the four standard slog levels, until when the
// user's handler is taken to refuse them (0: not known to refuse). Other
// levels are always queued, and the dispatcher filters them.
type levelCache struct {
	epoch time.Time
	until [4]atomic.Int64 // Debug, Info, Warn, Error: time.Since(epoch) nanoseconds
}

func newLevelCache() *levelCache { return &levelCache{epoch: time.Now()} }

func levelIndex(l slog.Level) (int, bool) {
	switch l {
	case slog.LevelDebug:
		return 0, true
	case slog.LevelInfo:
		return 1, true
	case slog.LevelWarn:
		return 2, true
	case slog.LevelError:
		return 3, true
	}
	return 0, false
}

func (c *levelCache) disabled(l slog.Level) bool {
	i, ok := levelIndex(l)
	if !ok {
		return false
	}
	u := c.until[i].Load()
	return u != 0 && int64(time.Since(c.epoch)) < u
}

// found records the handler's answer for l (dispatcher only).
func (c *levelCache) found(l slog.Level, enabled bool) {
	i, ok := levelIndex(l)
	if !ok {
		return
	}
	if enabled {
		c.until[i].Store(0)
		return
	}
	c.until[i].Store(int64(time.Since(c.epoch) + levelRecheck))
}

// onDispatcher reports whether the caller runs on the dispatcher's
// goroutine: inside a hook or log handler.
func (d *dispatcher) onDispatcher() bool {
	id := goid()
	return id != 0 && d.gid.Load() == id
}

// goid returns the id of the calling goroutine, read from the header of its
// stack ("goroutine 18 [running]:"). Go offers no other way; only Close
// asks (and each dispatcher goroutine once), to tell a hook that calls it
// from a caller that must wait for the hooks. Ids are never reused.
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		if id, err := strconv.ParseUint(string(b[:i]), 10, 64); err == nil {
			return id
		}
	}
	return 0
}
