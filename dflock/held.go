package dflock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/pool"
	"github.com/dflock-sdk/go/renew"
	"github.com/dflock-sdk/go/wire"
)

// held is a lease the Client holds: what a Lock and a Semaphore slot have
// in common — renewal, loss, release and the wait-pool connection a lease
// may pin. Lock and Semaphore are thin handles over it, so that each reads
// naturally in go doc while the lease logic exists once.
type held struct {
	c     *Client
	srv   *server
	lease *renew.Lease // &leaseMem
	// leaseMem is the lease itself: tracked in place (TrackInto), so that
	// an acquire allocates it with the held.
	leaseMem renew.Lease
	// owner is the connection that acquired the lease (renewals and the
	// release go there). pinned is the same connection when it is a
	// wait-pool connection the lease pins (granted after waiting, or by a
	// two-phase ticket); nil when a control-lane connection owns the lease.
	owner      pool.Owner
	pinned     *pool.Conn
	pinnedDone atomic.Bool
	limit      int64 // 0 for a lock
	fence      uint64
	hasFence   bool

	// The first Release sends the release; calls made meanwhile wait for
	// its result while their own ctx lasts (relWait, made only for them).
	relMu    sync.Mutex // guards the four below
	relState uint8      // relNone, relSending, relDone
	relWait  chan struct{}
	relErr   error
	// closeLost is set when Close's release found the lease gone (see
	// lostAtClose): what a Release after Close returns.
	closeLost error

	// handle is what the *Lock or *Semaphore wrapping this lease points to
	// (see newLock): both types are struct{ h *held }, so a pointer to it
	// converts to either, and an acquire allocates one object, not two.
	handle struct{ h *held }
}

func (h *held) key() string   { return h.lease.Key() }
func (h *held) token() string { return h.lease.Token() }

// op names an operation on the lease in errors: "semaphore renew" for a
// slot, "renew" for a lock.
func (h *held) op(name string) string {
	if h.limit > 0 {
		return "semaphore " + name
	}
	return name
}

// renew implements Lock.Renew and Semaphore.Renew.
func (h *held) renew(ctx context.Context) error {
	if ctx == nil {
		return &ArgError{Arg: "ctx", Reason: "must not be nil"}
	}
	c := h.c
	if !c.enter() {
		return &Error{Op: h.op("renew"), Key: h.key(), Server: h.srv.addr, Err: ErrClosed}
	}
	defer c.leave()
	if err := h.lease.Err(); err != nil {
		return h.endedError("renew", err)
	}
	opCtx, cancel := c.opContext(ctx)
	defer cancel()
	err := h.lease.Renew(opCtx)
	switch {
	case err == nil:
		return nil
	case opCtx.Err() != nil && !errors.Is(err, ErrLockLost):
		return &Error{Op: h.op("renew"), Key: h.key(), Server: h.srv.addr, Err: c.ctxError(ctx, opCtx, nil)}
	}
	return h.endedError("renew", err)
}

// endedError is the error of an operation on a lease that has ended.
func (h *held) endedError(op string, err error) error {
	if errors.Is(err, ErrLockLost) {
		h.returnConn(true)
	}
	return &Error{Op: h.op(op), Key: h.key(), Server: h.srv.addr, Err: err}
}

// release implements Lock.Release and Semaphore.Release: the first call
// sends the release, later ones return its result.
func (h *held) release(ctx context.Context) error {
	if ctx == nil {
		return &ArgError{Arg: "ctx", Reason: "must not be nil"}
	}
	if t := h.c.opts.tracer; t != nil {
		return h.tracedRelease(ctx, t)
	}
	return h.releaseOnce(ctx)
}

// giveBackUnwound releases a lease whose caller unwound (a panic or
// runtime.Goexit in its own code) before it got the handle, waiting for
// the answer at most DefaultReleaseTimeout.
func (h *held) giveBackUnwound() {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultReleaseTimeout)
	defer cancel()
	_ = h.releaseOnce(ctx)
}

// States of a lease's release (held.relState).
const (
	relNone uint8 = iota
	relSending
	relDone
)

func (h *held) releaseOnce(ctx context.Context) error {
	h.relMu.Lock()
	switch h.relState {
	case relDone:
		err := h.relErr
		h.relMu.Unlock()
		return err
	case relSending:
		if h.relWait == nil {
			h.relWait = make(chan struct{})
		}
		wait := h.relWait
		h.relMu.Unlock()
		select {
		case <-wait: // an outcome already known wins over an ended ctx
			return h.relErr // written before wait was closed
		default:
		}
		select {
		case <-wait:
			return h.relErr
		case <-ctx.Done():
			return &Error{Op: h.op("release"), Key: h.key(), Server: h.srv.addr, Err: h.c.ctxError(ctx, ctx, nil)}
		}
	}
	h.relState = relSending
	h.relMu.Unlock()
	later, err := h.sendRelease(ctx)
	if !later {
		h.setReleased(err)
	}
	return err
}

// setReleased records the release's outcome, which every later Release
// returns. A caller that stopped waiting does not record its ctx error:
// the outcome comes later, from whoever handles the answer.
func (h *held) setReleased(err error) {
	h.relMu.Lock()
	h.relErr, h.relState = err, relDone
	if h.relWait != nil {
		close(h.relWait)
	}
	h.relMu.Unlock()
}

// sendRelease releases the lease and returns the outcome, or, if later is
// set, the error of a caller that stopped waiting for it: a goroutine then
// records the outcome (setReleased) when it is known.
func (h *held) sendRelease(ctx context.Context) (later bool, err error) {
	c := h.c
	if !c.enter() {
		// Close is releasing every held lease; report how this one ended,
		// once Close knows, unless ctx ends first.
		select {
		case <-c.settled: // Close knows: its result, whatever ctx
			return false, h.releaseResult()
		default:
		}
		// Recorded by the caller if Close knows before ctx ends; else by a
		// goroutine that ends with Close, which has begun, as it is too
		// for a caller unwinding through ctx.Done (the caller's code: a
		// panic, runtime.Goexit).
		record := func() {
			<-c.settled
			h.setReleased(h.releaseResult())
		}
		decided := false
		defer func() {
			if !decided {
				go record()
			}
		}()
		select {
		case <-c.settled:
			decided = true
			return false, h.releaseResult()
		case <-ctx.Done():
			go record()
			decided = true
			return true, &Error{Op: h.op("release"), Key: h.key(), Server: h.srv.addr, Err: c.ctxError(ctx, ctx, nil)}
		}
	}
	defer c.leave()
	if !h.lease.Untrack() {
		return false, h.releaseResult()
	}
	// The release is queued whether or not ctx has ended: the lease is no
	// longer renewed, so a release that is never sent would leave the lock
	// held on the server until its TTL runs out (a lane connection stays
	// open, so nothing else frees it). SendBatch never blocks and never
	// drops a request on a live connection; ctx bounds only the wait for
	// the answer, which is handled without the caller if it stops waiting.
	req := wire.ReleaseRequest(h.key(), h.token(), h.limit > 0)
	// The answer is handled by the caller's goroutine while it waits (on
	// an idle connection the caller reads it itself), by one started for
	// it if it stops waiting; never on the connection's reader, where
	// returning a pinned connection to the pool (or destroying it) must
	// not run. Close waits for it through c.bg. The wait ends with ctx or
	// with the Client: the pool watches the Client's lifetime itself
	// (pool.Config.Lifetime), so ctx is passed as it is, not merged with
	// it (c.opContext), which would cost six allocations for a ctx that
	// can end. An ended ctx reports so at once, deterministically.
	w := releaseWaits.Get().(*releaseWait)
	c.bg.Add(1)
	// A caller that unwinds through ctx's methods in Request (the
	// caller's code: a panic, runtime.Goexit) has had the release sent,
	// and the answer comes to w, as when it stops waiting.
	returned := false
	defer func() {
		if !returned {
			go h.awaitRelease(w)
		}
	}()
	r, answered, rerr := h.owner.Request(ctx, req, w.done)
	returned = true
	if answered {
		releaseWaits.Put(w) // late is never called
		return false, h.finishReleaseBG(releaseReply{r, rerr})
	}
	go h.awaitRelease(w)
	// ctx is also the operation's context: none was derived from it.
	return true, &Error{Op: h.op("release"), Key: h.key(), Server: h.srv.addr, Err: c.ctxError(ctx, ctx, nil)}
}

// awaitRelease records the outcome of a release whose caller stopped
// waiting for its answer.
func (h *held) awaitRelease(w *releaseWait) {
	<-w.answered
	h.setReleased(h.finishReleaseBG(w.take()))
}

type releaseReply struct {
	r   wire.Reply
	err error
}

// releaseWait carries a release's answer from the connection's reader to
// whoever waits for it. It is pooled: the channel and the callback would
// otherwise be two allocations per release.
type releaseWait struct {
	answered chan struct{} // buffered: the callback never blocks
	rr       releaseReply  // written by done before it signals answered
	done     func(i int, r wire.Reply, err error)
}

var releaseWaits = sync.Pool{New: func() any {
	w := &releaseWait{answered: make(chan struct{}, 1)}
	w.done = w.answer // bound once per pooled value
	return w
}}

func (w *releaseWait) answer(_ int, r wire.Reply, err error) {
	w.rr = releaseReply{r, err}
	w.answered <- struct{}{}
}

// take returns the answer, once answered has been received from, and w
// to the pool (the owner calls done once per request, so nothing touches w
// afterwards).
func (w *releaseWait) take() releaseReply {
	rr := w.rr
	w.rr = releaseReply{}
	releaseWaits.Put(w)
	return rr
}

// finishReleaseBG is finishRelease for a release counted in c.bg.
func (h *held) finishReleaseBG(rr releaseReply) error {
	defer h.c.bg.Done()
	return h.finishRelease(rr)
}

func (h *held) finishRelease(rr releaseReply) error {
	ok := rr.err == nil && rr.r.Status == wire.StatusOK
	if h.pinned != nil {
		h.returnConn(!ok)
	}
	var lost *renew.LostError
	switch {
	case ok:
	case errors.Is(rr.err, wire.ErrConnBroken) && errors.Is(rr.err, ErrClosed):
		// Close closed the connection under a release already written (it
		// waited for the answer until its deadline): released by Close, as
		// a later Release reports (only the background finisher gets here:
		// a caller still waiting is ended by Close before the pools close).
		h.srv.obs.released1()
		return nil
	case errors.Is(rr.err, wire.ErrConnBroken):
		// The owning connection broke: the server released the lease when
		// it closed, possibly before the caller was done with it — unless
		// it runs with auto-release off: then the release goes aside.
		h.c.releaseAside(h.srv, wire.ReleaseRequest(h.key(), h.token(), h.lease.Semaphore()))
		lost = &renew.LostError{Key: h.key(), Server: h.srv.addr, Semaphore: h.limit > 0, Cause: fmt.Errorf("%w: %w", renew.ErrOwnerFailed, rr.err)}
	case rr.err != nil:
		h.srv.obs.released1()
		return &Error{Op: h.op("release"), Key: h.key(), Server: h.srv.addr, Err: rr.err}
	case rr.r.Status == wire.StatusErrDraining:
		// A server shutting down (v1.16+) answers the next request so and
		// closes the connection, which releases the lease (auto-release):
		// the lock was held until then, so this is no loss. The release
		// itself was not done, which matters with auto-release off.
		h.srv.obs.released1()
		return &Error{Op: h.op("release"), Key: h.key(), Server: h.srv.addr, Reply: "error_draining", Err: ErrDraining}
	default:
		// The server no longer knew the token: the lease had expired (or
		// its connection closed) before the release arrived — or, for the
		// bare `error`, the release may not have been applied
		// (mayNotBeApplied).
		if mayNotBeApplied(rr.r) {
			h.c.releaseAside(h.srv, wire.ReleaseRequest(h.key(), h.token(), h.lease.Semaphore()))
		}
		e := h.refusedAtRelease(rr.r)
		h.lostAtRelease(e.Err)
		return e
	}
	if lost == nil {
		h.srv.obs.released1()
		return nil
	}
	h.lostAtRelease(lost)
	return &Error{Op: h.op("release"), Key: h.key(), Server: h.srv.addr, Err: lost}
}

// refusedAtRelease is the error of a release the server refused, r: it no
// longer held the lease, which had expired (or its connection closed)
// before the release arrived — a loss. The bare `error` may also be a
// paused server's answer to a release it did not apply (mayNotBeApplied):
// the lease was then held until the release sent again aside, but the
// Client cannot tell which, and reports the loss it may be; the error
// says so, and matches renew.ErrMaybeUnapplied, as a renewal's does.
func (h *held) refusedAtRelease(r wire.Reply) *Error {
	reply := wire.DisplayWord(r.Word)
	if reply == "" {
		reply = r.Status.String()
	}
	cause := renew.Refusal("dflock: release refused: the server no longer held the lease", ErrRefused)
	if mayNotBeApplied(r) {
		cause = renew.Refusal("dflock: release refused: the server no longer held the lease, or did not apply the release (a server paused past its read deadline answers so; it was sent again)",
			ErrRefused, renew.ErrMaybeUnapplied)
	}
	return &Error{Op: h.op("release"), Key: h.key(), Server: h.srv.addr, Reply: reply,
		Err: &renew.LostError{Key: h.key(), Server: h.srv.addr, Semaphore: h.limit > 0, Cause: cause}}
}

// lostAtClose reports a lease whose release by Close the server refused
// (r) as the loss it is, as finishRelease would have: counted, logged, told
// to the hook, and returned by a Release after Close. The release itself is
// Close's to send again if need be. It runs on the owner's reader: it only
// counts and queues.
func (h *held) lostAtClose(r wire.Reply) {
	e := h.refusedAtRelease(r)
	h.relMu.Lock()
	h.closeLost = e
	h.relMu.Unlock()
	h.lostAtRelease(e.Err)
}

// lostAtRelease reports a lease that its Release found lost — one the
// scheduler never saw lost (the client's clock or a pause hid it) — as the
// loss it is: counted in Snapshot's Losses, logged, and told to
// Hooks.OnLeaseLost, like every other loss. Err keeps ErrReleased: the
// lease is no longer tracked.
func (h *held) lostAtRelease(err error) {
	c := h.c
	h.srv.obs.renew.Lost.Add(1)
	c.log.WarnContext(lossReport, "dflock: lease found lost at release", "key", h.key(), "server", h.srv.addr, "err", err)
	if hook := c.opts.hooks.OnLeaseLost; hook != nil {
		info := LeaseInfo{Key: h.key(), Token: h.token(), Server: h.srv.addr, Semaphore: h.limit > 0, TTL: h.lease.TTL()}
		c.disp.doLoss(func() { hook(info, err) })
	}
}

// releaseResult reports a lease the caller did not release itself.
func (h *held) releaseResult() error {
	h.relMu.Lock()
	lost := h.closeLost
	h.relMu.Unlock()
	if lost != nil {
		return lost
	}
	err := h.lease.Err()
	if err == nil || errors.Is(err, ErrReleased) {
		return nil
	}
	return h.endedError("release", err)
}

// returnConn gives the pinned wait-pool connection back exactly once:
// destroyed after a loss or a failed release, returned to the pool after a
// clean release.
func (h *held) returnConn(destroy bool) {
	if h.pinned == nil || !h.pinnedDone.CompareAndSwap(false, true) {
		return
	}
	h.pinned.Unpin()
	if destroy {
		h.pinned.Destroy()
	} else {
		h.pinned.Release()
	}
}

// LeaseLost is the lease's renew.Spec.OnLost: the one place where a lost
// lease's end is handled. It runs on the scheduler's notifier goroutine,
// which delivers every loss in order and which Close waits for, so it must
// not block: the pinned connection (if any) is destroyed at once (which
// never waits for the network, nor for a WithDialer connection's Close,
// which runs apart), and the log record and the user's hook are
// queued for the callback goroutine. It may run before Track has returned,
// so it reads the lease from its argument, never h.lease.
func (h *held) LeaseLost(lease *renew.Lease, err error) {
	c := h.c
	h.returnConn(true) // the loss is counted already (serverObs)
	// A lease lost with its connection is released aside; so is one lost
	// otherwise (but not refused) that pinned a connection: destroyed
	// above, that connection may never have written the scheduler's
	// best-effort release; and one whose renewal the server may not have
	// applied (the bare error of a paused server, which still holds it).
	if errors.Is(err, renew.ErrOwnerFailed) || errors.Is(err, renew.ErrMaybeUnapplied) ||
		(h.pinned != nil && !errors.Is(err, renew.ErrRefused)) {
		c.releaseAsideFor(h.srv, wire.ReleaseRequest(lease.Key(), lease.Token(), lease.Semaphore()), asideLife(lease.TTL()))
	}
	// The record and the hook go to the loss queue (doLoss): every loss of
	// a burst is reported.
	c.log.WarnContext(lossReport, "dflock: lease lost", "key", lease.Key(), "server", h.srv.addr, "err", err)
	if hook := c.opts.hooks.OnLeaseLost; hook != nil {
		info := LeaseInfo{Key: lease.Key(), Token: lease.Token(), Server: h.srv.addr, Semaphore: lease.Semaphore(), TTL: lease.TTL()}
		c.disp.doLoss(func() { hook(info, err) })
	}
}

// runHeld runs fn under h and releases it.
func runHeld(ctx context.Context, h *held, fn func(ctx context.Context) error) (err error) {
	// Deferred first, so run last: deriving from ctx, and removing mid
	// from it, call ctx's methods, the caller's code, and the lease must be
	// released even if one unwinds (a panic, runtime.Goexit).
	defer func() {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultReleaseTimeout)
		rerr := h.release(rctx)
		rcancel()
		if rerr != nil && errors.Is(rerr, ErrLockLost) {
			err = errors.Join(err, rerr)
		}
	}()
	// mid is the SDK's own: cancelling fctx, which OnEnd's function does
	// on whatever goroutine ends the lease (a connection reader, the
	// scheduler), then removes fctx from mid, not from the caller's ctx,
	// whose own code (a custom context's AfterFunc stop) must not run there.
	mid, midCancel := context.WithCancel(ctx)
	defer midCancel()
	fctx, cancel := context.WithCancelCause(mid)
	// As the lease ends, not after (a context.AfterFunc would run on a
	// goroutine of its own): fn's ctx is cancelled before Done, Err or
	// OnLeaseLost tell anyone of the loss; at once if it has happened.
	// Only Close ends the lease as released while fn runs (runHeld's own
	// release stops this first): fn hears ErrClosed.
	stop := h.lease.OnEnd(func(err error) {
		if errors.Is(err, renew.ErrReleased) {
			err = ErrClosed
		}
		cancel(err)
	})
	defer func() {
		stop()
		cancel(nil)
	}()
	return fn(&fnContext{fctx, h.lease})
}

// fnContext is the context WithLock and WithSemaphore give their function:
// cancelled as the lease ends, and its Err and Done first end a lease past
// its loss deadline (renew.Lease.Err), as Lock.Context's do, so that a
// function checking ctx.Err() right after its process was frozen or
// starved of CPU sees the loss, not a scheduling delay later. The lease's
// OnEnd cancels the context underneath before Err returns. Value reaches
// that context, so context.Cause works and contexts derived from it are
// cancelled directly.
type fnContext struct {
	context.Context
	lease *renew.Lease
}

func (c *fnContext) Done() <-chan struct{} {
	_ = c.lease.Err()
	return c.Context.Done()
}

func (c *fnContext) Err() error {
	_ = c.lease.Err()
	return c.Context.Err()
}

// believedLease is the lease of grant r to request req, in seconds: the
// one r states, but no longer than req asked for. dflockd applies the
// lease asked for; a broken server that said it granted more would,
// believed, have every renewal ask for its figure and so make it real. A
// shorter one is believed, being the safe error.
func believedLease(req wire.Request, r wire.Reply) int64 {
	if req.Lease > 0 && r.Lease > req.Lease {
		return req.Lease
	}
	return r.Lease
}

// track hands a grant to the scheduler and wraps it. pinned is the
// wait-pool connection the lease pins, or nil for a control-lane grant.
// req.Lease is the lease asked for (0: the server's default).
func (c *Client) track(srv *server, owner pool.Owner, pinned *pool.Conn, req wire.Request, r wire.Reply, sent time.Time) *held {
	h := &held{c: c, srv: srv, owner: owner, pinned: pinned, limit: req.Limit}
	h.handle.h = h
	if pinned != nil {
		pinned.Pin()
	}
	switch {
	case r.HasFence:
		h.fence, h.hasFence = r.Fence, true
	case c.opts.fencing && pool.OwnerSupportsPing(owner):
		// A server that does not answer ping is older than v1.14: its
		// tokens are random, and a number read from them would order
		// nothing (WithFencing declared the servers wrongly).
		h.fence, h.hasFence = wire.FenceFromToken(r.Token)
	}
	// Counted before Track, which may already count the lease lost: a
	// reader that loads Released and Lost before Acquired (Snapshot,
	// Stats) then never sees more leases ended than acquired, nor more
	// grants than acquisitions.
	c.stats.acquired.Add(1)
	if pinned == nil {
		c.stats.laneGrants.Add(1)
	} else {
		c.stats.waitGrants.Add(1)
	}
	// Everything LeaseLost reads is written above: Track's lock orders it
	// before the notifier's call.
	srv.obs.tracked() // before Track: LeaseLost may run before it returns
	lease := believedLease(req, r)
	h.lease = &h.leaseMem
	c.sched.TrackInto(h.lease, renew.Spec{
		Key:       req.Key,
		Token:     r.Token,
		Semaphore: req.Limit > 0,
		TTL:       time.Duration(lease) * time.Second,
		Owner:     owner,
		Server:    srv.addr,
		Sent:      sent,
		OnLost:    h, // not the method value h.LeaseLost, an allocation
		Counters:  &srv.obs.renew,
	})
	if h.lease.Err() != nil {
		// Lost at once. LeaseLost gives the connection back too, except
		// after Close (then it is not called); returnConn acts once.
		h.returnConn(true)
	}
	return h
}
