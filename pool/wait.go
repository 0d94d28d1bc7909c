package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/puddle/v2"

	"github.com/dflock-sdk/go/wire"
)

// Conn is an acquired wait-pool connection: the caller's for blocking
// acquires and two-phase tickets until it ends the acquisition with exactly
// one Release or Destroy (later calls are no-ops). Like pgxpool's Conn it is
// a handle that owns the puddle resource for one acquisition; each Acquire
// returns a new one. A lease granted on it pins it (Pin): it then stays out
// of the pool, and is the lease's Owner, until the lease is released or
// lost.
type Conn struct {
	p      *Pool
	c      *conn
	res    *puddle.Resource[*conn]
	out    atomic.Bool // until Release, Destroy or Pool.Close ends the acquisition
	pins   atomic.Int32
	reused bool // taken from the idle connections, not dialled for this Acquire
}

// Do sends req and waits for its reply. If ctx ends first the connection
// is destroyed — that is how the server withdraws a blocked waiter — and
// the error matches ctx.Err() and wire.ErrConnBroken. Requests are not
// validated here (package dflock does that; see framed). After the
// acquisition has ended it fails with ErrClosed and sends nothing: the
// connection may be another caller's by then.
func (h *Conn) Do(ctx context.Context, req wire.Request) (wire.Reply, error) {
	if !h.out.Load() {
		return wire.Reply{}, h.endedErr()
	}
	r, _, abandoned, err := h.c.do(ctx, &req, "")
	if abandoned {
		h.Destroy()
		cause := ctx.Err()
		if cause == nil {
			cause = ErrClosed // Config.Lifetime ended
		}
		return wire.Reply{}, serverErr(h.p.cfg.Addr, cause, errWithdrawnBroken)
	}
	return r, err
}

// SendBatch is Owner.SendBatch for a lease pinned to this connection:
// its renewals and its release. After the acquisition has ended it sends
// nothing, as Do: every request is answered with an error matching
// ErrClosed.
func (h *Conn) SendBatch(reqs []wire.Request, done func(i int, r wire.Reply, err error)) {
	if !h.out.Load() {
		done = orDiscard(done)
		err := h.endedErr()
		for i := range reqs {
			done(i, wire.Reply{}, err)
		}
		return
	}
	h.c.sendBatch(reqs, done)
}

// Request is Owner.Request for a lease pinned to this connection: its
// release. Unlike Do, a wait that ends first leaves the connection alone
// (the answer comes at once; late receives it). After the acquisition has
// ended it sends nothing, as Do.
func (h *Conn) Request(ctx context.Context, req wire.Request, late func(i int, r wire.Reply, err error)) (wire.Reply, bool, error) {
	if !h.out.Load() {
		return wire.Reply{}, true, h.endedErr()
	}
	return h.c.request(ctx, &req, late)
}

// endedErr is the error of a request on h after its acquisition ended.
func (h *Conn) endedErr() error { return serverErr(h.p.cfg.Addr, ErrClosed, errEnded) }

// StaleOnFirstUse reports whether err, from the first request sent on h,
// says that the server had closed the connection (EOF, reset, broken pipe)
// while it sat idle in the pool — a server restart, an idle timeout, a
// middlebox: Acquire looks before it hands an idle connection out, but a
// close that has not reached the reader yet, or comes within probeAfter of
// the last reply, is found only by the request. If err came at once (within
// a round trip of the send), such a request almost surely never reached a
// server, and the caller may send it once more on a connection of a new
// Acquire, as database/sql does with a driver's ErrBadConn; a close found
// later broke a request the server had (a queued wait), which must fail.
func (h *Conn) StaleOnFirstUse(err error) bool {
	// Under TLS the first request's probe may find the server's
	// close_notify (a record, or an alert) before its FIN: as stale, and
	// nothing was sent.
	return h.reused && (peerClosed(err) || errors.Is(err, errTLSRecord) || errors.Is(err, errTLSAlert))
}

// Err is nil while the connection is usable; afterwards an error matching
// wire.ErrConnBroken that names the server. It also matches ErrUnavailable
// if the server or the network broke the connection, and ErrClosed after
// Pool.Close.
func (h *Conn) Err() error { return h.c.Err() }

// SupportsPing reports whether the server answered `ping` with ok (v1.14+);
// false on v1.10 servers, which answer `error` (still a valid keepalive).
// Every connection pings once during its handshake, so this is known as soon
// as the Conn exists.
func (h *Conn) SupportsPing() bool { return h.c.supportsPing() }

// OwnerSupportsPing reports whether the server behind o (a Conn or a lane
// connection, as Do returns it) answered `ping` with ok during the
// connection's handshake: v1.14 or later. False for any other Owner.
func OwnerSupportsPing(o Owner) bool {
	switch o := o.(type) {
	case *Conn:
		return o.c.supportsPing()
	case *laneConn:
		return o.c.supportsPing()
	}
	return false
}

// Pin records that the connection owns one more lease; Unpin one fewer.
// A pinned connection stays acquired (it counts toward Config.MaxConns)
// until its leases are gone and it is released. A lease granted on the
// connection ends any place it held (HoldPlace).
func (h *Conn) Pin() {
	h.c.holdsPlace.Store(false)
	h.pins.Add(1)
}

// HoldPlace records whether a two-phase ticket's place is queued on the
// connection. While one is, and nothing but keepalive pings is unanswered
// on it, the keepalive pings the connection but does not break it when the
// server stops answering: a queued place is given up by sending on the
// connection (w key 0), which a closed socket cannot, and a server that
// does not release on disconnect would keep it, or a grant made to it
// while the server was stalled, for nobody. Nothing is lost by waiting:
// nobody waits on the connection, and the ticket's Wait or Cancel, bounded
// by their contexts, withdraws the place or finds the connection broken. A
// request sent on it meanwhile (one of Wait's) is waited for, and its
// caller needs the keepalive's break as on any connection. Pin, Release
// and Destroy end it.
func (h *Conn) HoldPlace(on bool) {
	if h.out.Load() {
		h.c.holdsPlace.Store(on)
	}
}

// Unpin records that the connection owns one lease fewer.
func (h *Conn) Unpin() {
	for {
		n := h.pins.Load()
		if n <= 0 || h.pins.CompareAndSwap(n, n-1) {
			return
		}
	}
}

// Release returns the connection to the wait pool if it is healthy (not
// broken, no reply pending but that of a keepalive ping, not pinned),
// otherwise destroys it. Releasing a pinned connection destroys it, and
// with it the server-side leases it owns: Unpin first.
func (h *Conn) Release() {
	if !h.takeOut() {
		return
	}
	h.c.holdsPlace.Store(false)
	if h.c.errp.Load() == nil && (h.c.inflight.Load() == 0 || h.c.onlyPingPending()) && h.pins.Load() == 0 {
		h.c.setOwner(nil)
		now := h.p.now()
		h.res.Release()
		// After the Release: a sweep between the two (which resets
		// idleDue, then takes the idle ones out) would otherwise forget
		// this one's expiry.
		h.p.idleFrom(now)
		// A caller waiting for a paced dial may take this one instead.
		h.p.gate.signal()
		return
	}
	if h.pins.Load() > 0 {
		h.p.log.Warn("dflock: pinned connection released; destroying it (its leases end)")
	}
	h.c.fail(h.p.endCause(errDestroyed))
	h.res.Destroy()
}

// Destroy closes the connection (the server auto-releases its leases and
// withdraws its waiters). Config.OnConnBroken is called for it. Once the
// acquisition has ended it does nothing: the connection may be back in the
// pool and another caller's (Pool.Close fails every one itself).
func (h *Conn) Destroy() {
	if h.takeOut() {
		h.c.fail(h.p.endCause(errDestroyed))
		h.res.Destroy()
	}
}

// Withdraw ends the acquisition as Destroy does, for a blocking wait
// (l/sl, w/sw) whose caller gave up: closing the connection is how the
// server withdraws a waiter, but a grant it made the moment before it saw
// the close would meet a closed socket, and a server with auto-release off
// would hold it for nobody until its lease ran out. So Withdraw shuts only
// the socket's write side (a FIN, under TLS too): dflockd v1.15+
// withdraws the waiter of a peer it sees gone and closes its side, while a
// grant written before that is still read — for at most 2 s — and handed
// to Config.OnReleaseLost, which releases it elsewhere. A connection that
// cannot be half-closed (a WithDialer conn without CloseWrite) or whose
// deadline setters fail (the 2 s is a read deadline), one to a server
// before v1.14 (no ping), which does not look at the connection
// before its wait ends (the socket would only be held for nothing), or a
// pool without OnReleaseLost, is closed as by Destroy.
func (h *Conn) Withdraw() {
	if h.takeOut() {
		h.c.fail(h.p.endCause(errWithdrawn))
		h.res.Destroy()
	}
}

// Abandon ends the acquisition, as Destroy does, for a request whose
// answer its caller stopped waiting for because the server did not answer
// in time (stalled, say): rather than close the socket, it leaves the
// connection to linger as the keepalive does with one that stopped
// answering — read, for at most a minute, until every request written is
// answered, a grant among the answers going to Config.OnReleaseLost — so
// that a server that resumes answers a grant to a socket still read, not
// to a closed one, where auto-release off would leave it held by nobody.
// Without OnReleaseLost, or with nothing written that a grant can answer,
// the connection is closed at once.
func (h *Conn) Abandon() {
	if h.takeOut() {
		h.c.fail(h.p.endCause(errAbandoned))
		h.res.Destroy()
	}
}

// ReaderDone returns a channel closed once the connection's reader has
// exited: the connection is broken and its socket closed, and what the
// reader read was handed on. For a connection Withdraw half-closed, that is
// when the server has closed its side, or at most 2 s after the Withdraw
// (or at the pool's Close).
func (h *Conn) ReaderDone() <-chan struct{} { return h.c.readerDone }

// AwaitReader waits, at most for guard, until the reader of a broken (say,
// destroyed) connection has exited: what it read just before the close —
// a grant for a call the close failed, which it hands to
// Config.OnReleaseLost — has then been handed on. It returns at once for
// a connection that is not broken. The reader exits promptly once the
// connection is closed; guard bounds a bug, not a timing.
func (h *Conn) AwaitReader(guard time.Duration) {
	if h.c.errp.Load() == nil {
		return
	}
	t := time.NewTimer(guard)
	defer t.Stop()
	select {
	case <-h.c.readerDone:
	case <-t.C:
	}
}

// endCause is the cause of a connection ended on purpose: cause, also
// matching ErrClosed once the owner's Lifetime has ended. A blocked call
// that Close interrupts gives its connection up like one whose caller gave
// up, but that connection is one Close closed, and OnConnBroken's readers
// (dflockotel's connection.broken) tell the two apart by ErrClosed.
func (p *Pool) endCause(cause error) error {
	if lt := p.cfg.Lifetime; lt != nil && lt.Err() != nil {
		return fmt.Errorf("%w (%w)", cause, ErrClosed)
	}
	return cause
}

// takeOut ends the acquisition: true for exactly one caller (Release,
// Destroy or Pool.Close), who must then hand h.res back to puddle.
func (h *Conn) takeOut() bool {
	if !h.out.CompareAndSwap(true, false) {
		return false
	}
	h.p.mu.Lock()
	delete(h.p.acquired, h)
	h.p.mu.Unlock()
	h.p.nAcquired.Add(-1)
	return true
}

// Acquire takes an exclusive connection from the wait pool (dialling if
// needed, honouring ctx). The caller must end with exactly one of
// Conn.Release (clean, reusable) or Conn.Destroy; extra calls are no-ops.
//
// While the server is down Acquire fails fast (ErrUnavailable) unless an
// idle connection is at hand, which it takes. A dial that
// fails while other connections to the server are alive is not a reason to
// mark it down (its lane may be serving fine, e.g. when the server is at
// its --max-connections cap); instead new wait-pool connections are paced,
// per pool:
//
//   - While dials succeed, at most 4 run at once; callers beyond that wait
//     for one of them to finish.
//   - After a failed dial, one dial at a time, each after a wait drawn
//     uniformly from [0, backoff) (full jitter), the backoff doubling from
//     50 ms up to 2 s with every further failure, until a dial succeeds or
//     the server is reached again by any other dial.
//
// A caller that needs a new connection while dials are held back waits —
// bounded by ctx — for an idle connection, or for its turn to dial. If any
// wait-pool dial fails while the caller is in Acquire, the caller fails with
// that dial's error instead of waiting for another attempt: one refused dial
// answers every caller waiting for it, so a burst of callers against a server
// at its connection cap costs a few refused connections, not one each. Such
// an error matches ErrUnavailable, names the server and says what happened
// (e.g. that the server closed the connection during the handshake, as it
// does at its connection limit). A caller whose ctx ends while it waits gets
// an error matching ctx.Err() that names the last dial failure, if any.
//
// A connection that broke while idle is destroyed, not handed out. An
// acquired connection, pinned or not, counts toward Config.MaxConns until
// it is released or destroyed, so a process holding MaxConns leases on
// wait-pool connections makes further Acquires wait.
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	p.acquiring.Add(1)
	defer p.acquiring.Add(-1)
	return p.acquire(ctx)
}

func (p *Pool) acquire(ctx context.Context) (*Conn, error) {
	start := time.Now()
	gen := p.gate.generation()
	// woken: the gate gave this caller a turn to dial (waitForDial). If
	// its next attempt does not end in a deferral it passes a wake-up on
	// (an extra one costs a waiter one look): it may need no dial after
	// all (an idle connection came back meanwhile) or give up, and the
	// callers queued behind it may have nothing else left to wake them.
	woken := false
	for {
		var res *puddle.Resource[*conn]
		if err := p.usable(); err != nil {
			// Down means no new dials (the probe makes them), not that
			// connections at hand are bad: a failed lane dial marks the
			// server down while the rest live (a server at its
			// connection cap).
			if p.closed.Load() || ctx.Err() != nil {
				return nil, err
			}
			if res = p.takeIdle(); res == nil {
				return nil, err
			}
		} else {
			seen := p.gate.changeCount()
			res, err = p.pp.Acquire(ctx)
			if woken && !errors.Is(err, errDialDeferred) {
				woken = false
				p.gate.signal()
			}
			if err != nil {
				switch {
				case errors.Is(err, errDialDeferred):
					if err := p.waitForDial(ctx, gen, seen); err != nil {
						return nil, err
					}
					woken = true
					continue
				case errors.Is(err, puddle.ErrClosedPool):
					return nil, serverErr(p.cfg.Addr, ErrClosed, nil)
				case ctx.Err() != nil:
					return nil, serverErr(p.cfg.Addr, ctx.Err(), p.waitingFor())
				}
				return nil, err // from dial: already a *ServerError
			}
		}
		if h, err := p.handOut(res, start); h != nil || err != nil {
			return h, err
		}
	}
}

// handOut makes res, taken from puddle for an Acquire that began at start,
// the caller's Conn; nil, nil if it broke while idle (it is destroyed, and
// the caller takes another).
func (p *Pool) handOut(res *puddle.Resource[*conn], start time.Time) (*Conn, error) {
	c := res.Value()
	if c.errp.Load() != nil || c.brokenWhileIdle() {
		res.Destroy()
		return nil, nil
	}
	h := &Conn{p: p, c: c, res: res, reused: res.CreationTime().Before(start)}
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		res.Destroy()
		return nil, serverErr(p.cfg.Addr, ErrClosed, nil)
	}
	h.out.Store(true)
	p.acquired[h] = struct{}{}
	p.nAcquired.Add(1)
	p.mu.Unlock()
	c.setOwner(h)
	return h, nil
}

// WaitPoolFull reports whether an Acquire now would wait for a connection to
// come back: Config.MaxConns of them are acquired (blocking acquires in
// progress, tickets, pinned leases). A hint: it may change at once.
func (p *Pool) WaitPoolFull() bool { return p.nAcquired.Load() >= int64(p.cfg.MaxConns) }

// HasIdle reports whether an idle wait-pool connection is at hand, so that
// an Acquire now would not dial. A hint: it may change at once. It costs a
// lock and an allocation (puddle's Stat): not for every acquire.
func (p *Pool) HasIdle() bool { return p.pp.Stat().IdleResources() > 0 }

// DialsPaced reports whether a new wait-pool connection may be long in
// coming: a dial failed on the network (a server at its --max-connections
// refuses them) and none has succeeded since, so dials go one at a time,
// each after a backoff of up to 2 s (see Acquire). A hint: it may change
// at once.
func (p *Pool) DialsPaced() bool { return p.gate.paced() }

// ErrBusy is AcquireUnlessBusy's error when it stops waiting; Acquire
// never returns it.
var ErrBusy = errors.New("dflock: no wait-pool connection at hand")

// AcquireUnlessBusy is Acquire for a caller that has something better to
// do than wait for a connection to come back — package dflock's Lock can
// try its key on the control lane meanwhile. Each time it has waited
// patience it looks at why: if the pool is busy (WaitPoolFull, or
// DialsPaced) it stops waiting and fails with an error matching ErrBusy
// that says what it waited for; the caller may call it again. A wait for a
// dial in progress goes on: cut short, the dial would still finish, into
// the idle set, and the next call would start another one. A patience of
// 0 or less waits as Acquire does, and so does a call that finds a
// connection, idle or to be dialled, for every Acquire in progress, its own
// included, and dials not held back: then nobody waits for a connection to
// come back, and the common case, a contended Lock, would pay the watch (a
// context and a timer) for nothing.
func (p *Pool) AcquireUnlessBusy(ctx context.Context, patience time.Duration) (*Conn, error) {
	n := p.acquiring.Add(1)
	defer p.acquiring.Add(-1)
	if patience <= 0 || p.nAcquired.Load()+n <= int64(p.cfg.MaxConns) && !p.DialsPaced() {
		return p.acquire(ctx)
	}
	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w := &busyWatch{p: p, cancel: cancel, every: patience}
	w.mu.Lock()
	w.t = time.AfterFunc(patience, w.check)
	w.mu.Unlock()
	h, err := p.acquire(bctx)
	w.stop()
	if err != nil && errors.Is(err, context.Canceled) && context.Cause(bctx) == errBusyCut {
		if ctx.Err() != nil { // ended meanwhile: its error, not ours
			return nil, serverErr(p.cfg.Addr, ctx.Err(), p.busyCause())
		}
		return nil, serverErr(p.cfg.Addr, ErrBusy, p.busyCause())
	}
	return h, err
}

// errBusyCut is the cause a busyWatch cancels its Acquire with.
var errBusyCut = errors.New("wait-pool busy")

// busyWatch cuts short an AcquireUnlessBusy's wait once it finds the pool
// busy, looking every `every`. A timer, not a goroutine: a caller parked at
// a full pool costs no goroutine while it waits.
type busyWatch struct {
	p      *Pool
	cancel context.CancelCauseFunc
	every  time.Duration
	mu     sync.Mutex // orders check against stop, and t's write against check
	t      *time.Timer
	done   bool
}

func (w *busyWatch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.done:
	case w.p.WaitPoolFull() || w.p.DialsPaced():
		w.cancel(errBusyCut)
	default:
		w.t.Reset(w.every) // dialling, or about to: let it, and look again
	}
}

func (w *busyWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
	w.t.Stop()
}

// busyCause says what an AcquireUnlessBusy that stopped waiting waited
// for, in words (see waitingFor).
func (p *Pool) busyCause() error {
	g := &p.gate
	g.mu.Lock()
	failing, last := g.failures > 0, g.lastErr
	g.mu.Unlock()
	if failing && last != nil && !p.WaitPoolFull() {
		return fmt.Errorf("waiting to dial again after a failed dial: %v", causeOf(last))
	}
	return p.waitingFor()
}

// waitingFor says what an Acquire whose context ended was waiting for:
// puddle returns at once, leaving a dial it started to finish in the
// background, or stops waiting for a connection to come back when all are
// out. A cause only in words: the caller's context ended it.
func (p *Pool) waitingFor() error {
	st := p.pp.Stat()
	return fmt.Errorf("waiting for a wait-pool connection (%d being dialled, %d in use, cap %d)",
		st.ConstructingResources(), st.AcquiredResources(), st.MaxResources())
}

// takeIdle takes the most recently used idle wait-pool connection, if
// any, without dialling (puddle's Acquire and TryAcquire would dial when
// none is idle).
func (p *Pool) takeIdle() *puddle.Resource[*conn] {
	idle := p.pp.AcquireAllIdle()
	if len(idle) == 0 {
		return nil
	}
	best := 0
	for i, res := range idle {
		if res.IdleDuration() < idle[best].IdleDuration() {
			best = i
		}
	}
	for i, res := range idle {
		if i != best {
			res.ReleaseUnused()
		}
	}
	if len(idle) > 1 {
		// A sweep meanwhile (which resets idleDue, then takes the idle
		// ones out) found none of these: have the next one count them.
		p.needSweep.Store(true)
	}
	return idle[best]
}

// dialWaitConn is the wait pool's constructor: puddle keeps constructing
// after the caller gives up, and cancels ctx only on Close, so dial bounds
// it with DialTimeout. The gate answers at once when it defers the dial;
// Acquire then waits on its own context.
func (p *Pool) dialWaitConn(ctx context.Context) (*conn, error) {
	gen, ok := p.gate.enter()
	if !ok {
		return nil, errDialDeferred
	}
	c, err := p.dialAs(ctx, roleWait, false, p.cfg.maxReplyLine, func(c *conn) {
		// Broken while idle in puddle: the janitor destroys it. (One that
		// breaks while acquired goes back destroyed; the sweep then finds
		// nothing, which is cheap.)
		c.onBroken = func(error) {
			if !c.retired.Load() { // the sweep that retired it is done with it
				p.needSweep.Store(true)
			}
		}
	})
	p.gate.leave(gen, err)
	if err == nil {
		// A dial whose caller gave up goes into the idle set from puddle
		// without a Release: its expiry is counted from here (early, if
		// a caller takes it, which costs one needless sweep at most).
		p.idleFrom(p.now())
	}
	return c, err
}

var errWithdrawnBroken = fmt.Errorf("%w (%w)", wire.ErrConnBroken, errWithdrawn)
