package dflock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/dflock-sdk/go/pool"
	"github.com/dflock-sdk/go/wire"
)

// Lock is a held exclusive lock. It is renewed automatically until
// Release (or Client.Close). If it is lost — a renewal refused, the owning
// connection broken, or no renewal confirmed in time by the client's own
// clock — Done is closed, Err returns an error matching ErrLockLost, and
// Context is cancelled with that cause, before the server-side lease runs
// out whenever the client can tell.
//
// A slot of a semaphore is a Semaphore, not a Lock. All methods are safe
// for concurrent use.
type Lock struct {
	h *held
}

// Key returns the lock's key.
func (l *Lock) Key() string { return l.h.key() }

// Token returns the server's token for this lock (opaque).
func (l *Lock) Token() string { return l.h.token() }

// TTL returns the lease TTL granted by the server (whole seconds), or the
// one asked for if the server stated a longer one (no dflockd does). The lock
// is renewed with this TTL until released.
func (l *Lock) TTL() time.Duration { return l.h.lease.TTL() }

// Server returns the address of the server holding the lock.
func (l *Lock) Server() string { return l.h.srv.addr }

// Fence returns the fencing token of the grant: a number that increases
// with every grant of the server, so a protected resource can refuse writes
// from a holder whose lock has since passed to someone else. ok is false
// when the server provides none: fences come from dflockd v2.1+ tokens
// (enable WithFencing) or from an explicit fence field in the reply.
func (l *Lock) Fence() (fence uint64, ok bool) { return l.h.fence, l.h.hasFence }

// Done is closed when the lock ends: lost, released, or released by Close.
func (l *Lock) Done() <-chan struct{} { return l.h.lease.Done() }

// Err is nil while the lock is held; afterwards it matches ErrLockLost
// (lost, wrapping the cause) or is ErrReleased (after Release, also one
// that found the lock lost).
func (l *Lock) Err() error { return l.h.lease.Err() }

// Context returns a context cancelled when the lock ends; context.Cause
// returns Err. Use it to stop work that must not outlive the lock. Its Err
// and Done, like the Lock's, first end a lock past its loss deadline (a
// process frozen or starved of CPU, the renewal scheduler not run yet);
// contexts derived from it, and a Done channel taken earlier, hear of such
// a loss once something has ended the lock: the scheduler, or a check.
func (l *Lock) Context() context.Context { return l.h.lease.Context() }

// Renew renews the lock now, instead of waiting for the scheduler, and
// waits for the server's answer. A refusal loses the lock and returns an
// error matching ErrLockLost; so does a loss found meanwhile (by the
// client's clock, on a silent connection), at once. A nil ctx is an
// *ArgError.
func (l *Lock) Renew(ctx context.Context) error { return l.h.renew(ctx) }

// Release releases the lock. It is idempotent: later calls return the
// release's outcome once the server has answered (a call made before then
// waits for the answer while its own ctx lasts). It returns nil after a
// clean release, and an error matching ErrLockLost if the lock had been
// lost (or its lease had already expired on the server: that counts as a
// loss, in Snapshot and for Hooks.OnLeaseLost). A server shutting down (v1.16+) answers the
// release with error_draining and closes the connection, which releases the
// lock unless auto-release is off on the server: the error then matches
// ErrDraining, not ErrLockLost, since the lock was held until then.
//
// The release is sent even if ctx has already ended; ctx only bounds the
// wait for the server's answer. A nil ctx is an *ArgError (and releases
// nothing), as everywhere in this package.
func (l *Lock) Release(ctx context.Context) error { return l.h.release(ctx) }

// newLock wraps the result of an acquire (see handedOver) as a Lock: the
// handle inside h (see held.handle), so that every Lock of h is the same
// pointer.
func newLock(h *held, err error) (*Lock, error) {
	if err != nil {
		return nil, err
	}
	return (*Lock)(&h.handle), nil
}

// handedOver is what an acquire op (h, err) hands to its caller, a Tracer's
// span and WithLock's fn alike: err (see closedNotAcquired), or an error if
// h, the lease it got, ended before it could be handed over — lost at once,
// released by Close (ErrClosed), or answered so late (its grant, or the
// renewal that confirmed a late one) that the lease's life, counted from
// the request's send (docs/leases.md, rule 3), had run out: the scheduler
// declares it lost at its next round, due at once, and releases it. The
// caller must not believe it held even for a moment after the server's
// lease may have ended. With that error h is returned too, for the
// Tracer's AcquireResult.Lease; callers other than traced drop it.
func handedOver(op string, h *held, err error) (*held, error) {
	if err != nil {
		return nil, notAcquiredIfClosed(err)
	}
	overdue := h.lease.Overdue() // first: a lease that ends meanwhile shows in Err
	lerr := h.lease.Err()        // which ends an overdue lease (lost by the clock, released)
	switch {
	case overdue && errors.Is(lerr, ErrLockLost):
		// Past its life already when it could be handed over, whatever
		// ended it since: that says more than the expiry's "no renewal
		// confirmed".
		lerr = errLostAtHandOver
	case errors.Is(lerr, ErrReleased):
		// Nobody but Close releases a lease not handed over yet.
		lerr = ErrClosed
	}
	if lerr != nil {
		// op is the acquire's own name ("semaphore" included), as its
		// other errors carry it.
		if errors.Is(lerr, ErrLockLost) {
			h.returnConn(true)
		}
		return h, &Error{Op: op, Key: h.key(), Server: h.srv.addr, Err: &bothError{domain: ErrNotAcquired, cause: lerr}}
	}
	return h, nil
}

// errLostAtHandOver is handedOver's cause for an overdue lease.
var errLostAtHandOver = fmt.Errorf("%w: granted or confirmed too late: the lease's life had run out by the answer", ErrLockLost)

// Lock acquires the exclusive lock key, waiting while another holder has
// it: until AcquireTimeout passes (ErrTimeout) or ctx ends (an error
// matching ctx.Err() and ErrNotAcquired, plus ErrTimeout for a deadline).
// Waiters are served in FIFO order by the server. Locks are not
// reentrant: a Lock of a key its caller already holds (from inside
// WithLock's fn, say) waits for that hold to end, so with no deadline it
// waits forever.
//
// An uncontended lock is taken with one pipelined request on a shared
// connection; a contended one waits on a connection of its own, which stays
// with the lock until it is released. A key found held within the last
// second or so goes straight to such a connection, skipping the shared
// one's try (docs/performance.md, "Contended keys"). While no such
// connection can be had — WithMaxConnsPerServer of them in use, or dials
// held back after the server refused one — the call waits for one and
// meanwhile tries the key on the shared connection again, after 50 ms and
// then at intervals doubling up to a second: a lock released meanwhile is
// granted there. Until it has its connection the call is not in the
// server's queue, so waiters queued there go first. If ctx ends while a
// grant is in flight, the grant is released: an error return never leaves
// a lock held (on a server with auto-release off, see the package doc for
// the three exceptions).
//
// The server's wait timeout is whole seconds, so AcquireTimeout (or ctx's
// deadline) is sent rounded up and enforced exactly by the client. Waits
// are sent in chunks of at most an hour (very large timeouts overflow on
// old servers), and of at most 10 s to servers older than v1.14, which keep
// an abandoned waiter queued until its timeout runs out (see
// docs/leases.md); when a chunk runs out the server drops the waiter and
// the Client joins the queue again — at its end. A blocked wait
// carries no traffic, so a server process that stalls while its host stays
// up is noticed only when the chunk ends (a closed connection is noticed at
// once, a dead host by TCP keepalive): prefer a deadline.
func (c *Client) Lock(ctx context.Context, key string, opts ...AcquireOption) (*Lock, error) {
	return newLock(c.tracedAcquire(ctx, "lock", key, 0, false, opts))
}

// TryLock acquires the lock key if it is free and fails at once with
// ErrNotAcquired if it is held. It never waits for the lock (ctx bounds the
// round trip).
func (c *Client) TryLock(ctx context.Context, key string, opts ...AcquireOption) (*Lock, error) {
	return newLock(c.tracedAcquire(ctx, "trylock", key, 0, true, opts))
}

// WithLock runs fn while holding the lock key (acquired as by Lock) and
// releases it afterwards, even if fn panics. fn's context is cancelled when
// ctx ends, when the lease is lost (then context.Cause matches
// ErrLockLost), or when the Client is closed, which releases the lock
// (then it matches ErrClosed). WithLock returns fn's error, joined with an
// error matching ErrLockLost if the lease was lost before the release.
// Locks are not reentrant: a Lock or WithLock of key inside fn waits for
// this very lock, until its context ends.
func (c *Client) WithLock(ctx context.Context, key string, fn func(ctx context.Context) error, opts ...AcquireOption) error {
	if fn == nil {
		return &ArgError{Arg: "fn", Reason: "must not be nil"}
	}
	if t := c.opts.tracer; t != nil && ctx != nil {
		return c.tracedWith(ctx, t, key, 0, fn, opts)
	}
	l, err := c.Lock(ctx, key, opts...)
	if err != nil {
		return err
	}
	return runHeld(ctx, l.h, fn)
}

// acquire implements Lock, TryLock, Semaphore and TrySemaphore. limit 0
// means an exclusive lock.
func (c *Client) acquire(ctx context.Context, op, key string, limit int64, try bool, opts []AcquireOption) (h *held, err error) {
	if ctx == nil {
		return nil, &ArgError{Arg: "ctx", Reason: "must not be nil"}
	}
	a, err := c.acquireOptions(opts)
	if err != nil {
		return nil, err
	}
	if a.hasTimeout && a.timeout == 0 {
		try = true
	}
	req := wire.Request{Cmd: wire.CmdLock, Key: key, Lease: wire.Seconds(a.lease)}
	if limit != 0 {
		req.Cmd, req.Limit = wire.CmdSemLock, limit
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	srv, err := c.enterServer(op, key)
	if err != nil {
		return nil, err
	}
	defer c.leave()
	// The lane try needs no operation context merging ctx with the
	// Client's lifetime (c.opContext, six allocations for a ctx that can
	// end): the pool ends its waits when the Client closes
	// (pool.Config.Lifetime). The wait below derives one.
	laneCtx := ctx
	var d derived
	defer func() { d.cancel(h) }()
	if a.hasTimeout && !try {
		laneCtx, d.outer = context.WithTimeoutCause(ctx, a.timeout, errAcquireTimeout)
	}

	hk := hotKey{key: key, sem: limit != 0}
	// A key found held a moment ago skips the lane try — unless the wait
	// pool is full, or getting a connection may take longer than the
	// caller has or than a free key should wait (an AcquireTimeout, or a
	// ctx deadline closer than a dial may take — Lock documents the two
	// alike —, or dials paced after a failure, up to 2 s apart) and none
	// is idle: a hot key may have been released meanwhile, and Lock on a
	// free key must neither wait for a wait-pool connection to come back
	// nor time out (or wait out a backoff) while one is dialled.
	laneTried := try || (!c.opts.noLaneFast && (!srv.hot.contains(hk, time.Now) || srv.pool.WaitPoolFull() ||
		((a.hasTimeout || deadlineWithin(ctx, c.opts.dialTimeout) || srv.pool.DialsPaced()) && !srv.pool.HasIdle())))
	if laneTried {
		h, err := c.tryLane(ctx, laneCtx, op, srv, req, try)
		if h != nil || err != nil {
			return h, err
		}
		if try {
			return nil, &Error{Op: op, Key: key, Server: srv.addr, Err: ErrNotAcquired}
		}
		c.stats.contended.Add(1)
		srv.hot.add(hk, time.Now())
	}
	var opCtx context.Context
	opCtx, d.inner = c.opContext(laneCtx) // keeps laneCtx's deadline and cause
	h, err = c.waitAcquire(ctx, opCtx, op, srv, req, &laneTried)
	if err != nil && !laneTried && !c.opts.noLaneFast && errors.Is(err, ErrServerUnavailable) && opCtx.Err() == nil {
		// No wait-pool connection could be made (a server at its
		// connection cap) for a key skipped as hot, whose lane may
		// well grant it now: one lane try before giving up.
		if lh, lerr := c.tryLane(ctx, laneCtx, op, srv, req, false); lh != nil || lerr != nil {
			return lh, lerr
		}
	}
	return h, err
}

// derived holds the cancel functions of the contexts an operation derived
// from the caller's: inner from outer, outer from the caller's (either may
// be nil).
type derived struct {
	inner, outer context.CancelFunc
}

// cancel runs d's cancel functions, inner first, deferred by a call whose
// result is h. Removing a context from the caller's calls its methods, the
// caller's code; if one unwinds (a panic, runtime.Goexit) the caller never
// gets h, which is then released rather than held, and renewed, for nobody.
func (d *derived) cancel(h *held) {
	if d.inner == nil && d.outer == nil {
		return // an uncontended acquire with no AcquireTimeout derives none
	}
	done := false
	defer func() {
		if !done && h != nil {
			h.giveBackUnwound()
		}
	}()
	if d.inner != nil {
		d.inner()
	}
	if d.outer != nil {
		d.outer()
	}
	done = true
}

// deadlineWithin reports whether ctx has a deadline less than d away.
func deadlineWithin(ctx context.Context, d time.Duration) bool {
	dl, ok := ctx.Deadline()
	return ok && time.Until(dl) < d
}

// tryLane sends the acquire with timeout 0 on the control lane. It returns
// (nil, nil) when the key is held. try is set for a caller that only tries
// (TryLock, AcquireTimeout(0)): a key whose waiter queue is full then fails
// with ErrNotAcquired too. opCtx is ctx, or ctx bounded by the
// AcquireTimeout; unlike the operation context of other calls it does not
// end with the Client (the pool's waits do), hence the checks of c.ctx.
func (c *Client) tryLane(ctx, opCtx context.Context, op string, srv *server, req wire.Request, try bool) (*held, error) {
	req.Timeout = 0
	sent := time.Now()
	r, owner, err := srv.pool.Do(opCtx, req)
	if err != nil {
		if opCtx.Err() != nil || c.ctx.Err() != nil {
			return nil, &Error{Op: op, Key: req.Key, Server: srv.addr, Err: connecting(c.ctxError(ctx, opCtx, ErrNotAcquired), err)}
		}
		return nil, &Error{Op: op, Key: req.Key, Server: srv.addr, Err: err}
	}
	switch r.Status {
	case wire.StatusOK:
		// opCtx's methods are the caller's code: a caller that unwinds
		// through one (a panic, runtime.Goexit) before the grant is
		// tracked or given back gives it back aside.
		settled := false
		defer func() {
			if !settled {
				c.releaseAside(srv, wire.ReleaseRequest(req.Key, r.Token, req.Limit > 0))
			}
		}()
		if err := checkGrant(r); err != nil || opCtx.Err() != nil || c.ctx.Err() != nil {
			// The caller gave up while the grant was in flight (or it is
			// unusable): give it back at once on the same connection.
			rel := wire.ReleaseRequest(req.Key, r.Token, req.Limit > 0)
			owner.SendBatch([]wire.Request{rel}, func(_ int, r wire.Reply, err error) {
				// The connection broke (see pool.Config.OnReleaseLost), or
				// the release may not have been applied.
				if err != nil || mayNotBeApplied(r) {
					c.releaseAside(srv, rel)
				}
			})
			settled = true
			if err == nil {
				err = c.ctxError(ctx, opCtx, ErrNotAcquired)
			}
			return nil, &Error{Op: op, Key: req.Key, Server: srv.addr, Err: err}
		}
		sent, err = c.confirmLateGrant(opCtx, ownerDo(owner), req, &r, sent, sent)
		settled = true
		if err != nil {
			// The lane connection stays (it owns other leases); the
			// grant goes back aside, as a broken wait's does.
			c.releaseAside(srv, wire.ReleaseRequest(req.Key, r.Token, req.Limit > 0))
			if opCtx.Err() != nil { // ended meanwhile; else err says why (lapsed, draining, broken)
				err = c.ctxError(ctx, opCtx, ErrNotAcquired)
			}
			return nil, &Error{Op: op, Key: req.Key, Server: srv.addr, Err: err}
		}
		return c.track(srv, owner, nil, req, r, sent), nil
	case wire.StatusTimeout:
		return nil, nil
	case wire.StatusErrMaxWaiters:
		if try {
			// Released servers check the waiter cap before the timeout-0
			// rule (PROTOCOL.md §15): the key is held (it has waiters),
			// which for a try is "not acquired", whatever the queue.
			return nil, &Error{Op: op, Key: req.Key, Server: srv.addr, Reply: "error_max_waiters",
				Err: &bothError{domain: ErrNotAcquired, cause: ErrMaxWaiters}}
		}
	}
	return nil, refusal(op, req.Key, srv, r)
}

// waitAcquire sends a blocking acquire on a wait-pool connection of its own,
// re-issuing it while the server times out before the caller does. It may
// return a lease granted on the control lane instead, while it waited for
// that connection (see waitConn); laneTried is as there.
func (c *Client) waitAcquire(ctx, opCtx context.Context, op string, srv *server, req wire.Request, laneTried *bool) (*held, error) {
	dl := deadlineOf(opCtx)
	fail := func(err error) (*held, error) {
		return nil, c.acquireFailed(ctx, opCtx, op, srv, req.Key, err)
	}
	defer c.waitBegin(ctx, srv).end()
	conn, h, err := c.waitConn(ctx, opCtx, op, srv, req, laneTried)
	if conn == nil {
		return h, err
	}
	first := true
	var early earlyTimeouts
	for {
		secs, ok := waitSeconds(opCtx, dl, chunkFor(conn, waitChunk))
		if !ok {
			conn.Release()
			return fail(deadlinePassed(opCtx))
		}
		req.Timeout = secs
		r, sent, err := c.exchange(opCtx, srv, conn, req, nil)
		if err != nil && first && conn.StaleOnFirstUse(err) && time.Since(sent) < staleWindow && opCtx.Err() == nil {
			// An idle connection the server had closed: again on another
			// (exchange destroyed this one). A restart leaves every idle
			// connection stale; each is tried at most once, and a
			// freshly dialled one is never stale.
			if conn, h, err = c.waitConn(ctx, opCtx, op, srv, req, laneTried); conn == nil {
				return h, err
			}
			continue
		}
		first = false
		if err != nil {
			return fail(err)
		}
		switch r.Status {
		case wire.StatusOK:
			sent, err = c.confirmLateGrant(opCtx, conn.Do, req, &r, sent, sent)
			if err != nil {
				// The token is known: release it elsewhere too, since
				// closing the connection releases nothing on a server
				// with auto-release off.
				c.releaseAside(srv, wire.ReleaseRequest(req.Key, r.Token, req.Limit > 0))
				conn.Destroy()
				return fail(err)
			}
			return c.track(srv, conn, conn, req, r, sent), nil
		case wire.StatusTimeout:
			if opCtx.Err() == nil && early.pace(opCtx, secs, sent) {
				continue // the server's chunk ran out before the caller's time
			}
			conn.Release()
			return fail(opCtx.Err())
		}
		giveBack(conn, r)
		return nil, refusal(op, req.Key, srv, r)
	}
}

// Pacing of the control-lane tries of a caller that waits for a wait-pool
// connection (waitConn): after laneRetryMin, doubling up to laneRetryMax,
// so that a caller parked for long at a full pool costs its server a try
// a second.
const (
	laneRetryMin = 50 * time.Millisecond
	laneRetryMax = time.Second
)

// waitConn gets the wait-pool connection for req's blocking acquire, or a
// lease of req's key granted on the control lane meanwhile (h), or the
// acquire's error. A caller that waits for a connection — the pool at
// WithMaxConnsPerServer, or its dials paced after a failure — is in no
// queue of the server's, which would not tell it that its key came free:
// without the lane it would wait for another caller's lock to be released
// (forever, if it is its own: a nested Lock at a cap of 1), and a
// semaphore's slots beyond the cap would stay unused. So the wait is cut
// into slices (pool.Pool.AcquireUnlessBusy, laneRetryMin doubling to
// laneRetryMax) and after each the key is tried on the lane with timeout
// 0. The server grants such a try only while nobody is queued for the
// key, so the waiters queued on the server keep their order; the caller
// has no place in it until it has its connection (nor had it without the
// tries). A try that finds the key held refreshes it in the hot-key set
// and, if no lane try of the call had yet (*laneTried), counts the call as
// contended. A grant that comes after the caller gave up is released by
// tryLane. A connection and a grant never both come: the two are not
// waited for at once, so there is no connection to give back.
func (c *Client) waitConn(ctx, opCtx context.Context, op string, srv *server, req wire.Request, laneTried *bool) (*pool.Conn, *held, error) {
	if c.opts.noLaneFast { // the benchmarks' wait-pool-only client
		conn, err := srv.pool.Acquire(opCtx)
		if err != nil {
			return nil, nil, connectingIn(c.acquireFailed(ctx, opCtx, op, srv, req.Key, err), err)
		}
		return conn, nil, nil
	}
	for pause := laneRetryMin; ; pause = min(2*pause, laneRetryMax) {
		conn, err := srv.pool.AcquireUnlessBusy(opCtx, pause)
		if !errors.Is(err, pool.ErrBusy) {
			if err != nil {
				return nil, nil, connectingIn(c.acquireFailed(ctx, opCtx, op, srv, req.Key, err), err)
			}
			return conn, nil, nil
		}
		if h, err := c.tryLane(ctx, opCtx, op, srv, req, false); h != nil || err != nil {
			return nil, h, err
		}
		if !*laneTried {
			*laneTried = true
			c.stats.contended.Add(1)
		}
		srv.hot.add(hotKey{key: req.Key, sem: req.Limit != 0}, time.Now())
	}
}

// acquireFailed is the error of an acquire on srv that err ended — the
// caller's (ctx's) error if opCtx has ended meanwhile, whatever err says.
func (c *Client) acquireFailed(ctx, opCtx context.Context, op string, srv *server, key string, err error) error {
	if opCtx.Err() != nil {
		err = c.ctxError(ctx, opCtx, ErrNotAcquired)
	}
	return &Error{Op: op, Key: key, Server: srv.addr, Err: err}
}

// exchange sends req, an acquire (l/sl, e/se, w/sw), on an exclusive
// wait-pool connection of srv and reads the answer while opCtx lasts, so
// that the caller deals only with a clean outcome: an error, or a reply
// whose grant (if it is one) is well formed and still wanted. sent is when
// the request was handed to the connection. Whatever goes wrong with the
// connection or the reply destroys the connection, but for a grant that
// checkGrant refuses: it is released on the connection in the background
// (giveBackUntrackable). Either way the connection is no longer the
// caller's once err is set.
//
// If opCtx ends before the answer, nothing must be left held by nobody: a
// server with auto-release off keeps a grant made to a closed connection.
// When the answer is due soon — a request the server answers at once
// (e/se, timeout 0), or a blocking wait whose deadline passed, so that
// the server's timeout, taken from it, runs out within a second — a
// background job reads it and gives back what it holds (settleLate: a
// grant released on the same connection, a queue place withdrawn with
// withdraw, for e/se; an answer overdue lingers). Otherwise (a wait cancelled, or ended by Close,
// with an hour of server-side timeout to run) the connection is
// half-closed (pool.Conn.Withdraw), which withdraws the waiter on the
// server, and a grant that crossed the withdrawal is still read and
// released elsewhere — unless the Client's Close closes the socket first,
// the one case that can leave a grant on its way held (docs/leases.md).
func (c *Client) exchange(opCtx context.Context, srv *server, conn *pool.Conn, req wire.Request,
	withdraw func(context.Context, *pool.Conn)) (r wire.Reply, sent time.Time, err error) {
	if err := opCtx.Err(); err != nil {
		// Nothing sent. A ticket's queued place is still on conn: it is
		// tried and given back (withdraw), in the background — closing the
		// connection would leave a grant made to it held on a server with
		// auto-release off.
		if withdraw != nil && (req.Cmd == wire.CmdWait || req.Cmd == wire.CmdSemWait) {
			c.inBackground(conn, func(ctx context.Context) { withdraw(ctx, conn) })
		} else {
			conn.Release() // the connection is clean
		}
		return wire.Reply{}, time.Now(), err
	}
	late := getLateBox()
	sent = time.Now()
	r, answered, err := conn.Request(opCtx, req, late.deliver)
	if answered && err == nil && opCtx.Err() != nil {
		// Read just after the caller gave up: the answer is in hand, so it
		// is settled whatever time the wait had left.
		late.ch <- lateAnswer{r, nil}
		c.settleLate(srv, conn, req, late.ch, withdraw)
		return wire.Reply{}, sent, opCtx.Err()
	}
	if !answered {
		// late stays with the connection's reader (and the job), never
		// recycled.
		if answerDueSoon(opCtx, req, sent) {
			c.settleLate(srv, conn, req, late.ch, withdraw)
		} else {
			conn.Withdraw()
			c.releaseLateGrant(srv, conn, req, late.ch)
		}
		return wire.Reply{}, sent, err
	}
	lateBoxes.Put(late) // answered: late is never called
	if err == nil && (r.Status == wire.StatusOK || r.Status == wire.StatusAcquired) {
		if err = checkGrant(r); err != nil {
			c.giveBackUntrackableLater(srv, conn, req, r)
			return r, sent, err
		}
	}
	if err != nil {
		conn.Destroy()
	}
	return r, sent, err
}

// lateBox carries the answer to a request whose caller gave up before it
// came (pool.Conn.Request's late) to whoever settles it. Recycled, since
// every wait-pool acquire needs one and almost none uses it.
type lateBox struct {
	ch      chan lateAnswer // cap 1
	deliver func(i int, r wire.Reply, err error)
}

var lateBoxes sync.Pool

func getLateBox() *lateBox {
	if b, ok := lateBoxes.Get().(*lateBox); ok {
		return b
	}
	b := &lateBox{ch: make(chan lateAnswer, 1)}
	b.deliver = func(_ int, r wire.Reply, err error) { b.ch <- lateAnswer{r, err} }
	return b
}

// answerDueSoon reports whether the answer to req, sent at sent, whose
// caller's ctx has ended, comes without the connection being closed soon
// enough for a background job to wait for it: at once (no server-side
// wait, or w/sw with timeout 0), or by the end of a server-side wait that
// ends within DefaultReleaseTimeout/2 — one whose ctx's deadline passed,
// since the wait's timeout is the time that was left, rounded up to whole
// seconds.
func answerDueSoon(ctx context.Context, req wire.Request, sent time.Time) bool {
	if !req.Blocking() || req.Timeout == 0 {
		return true
	}
	ends := sent.Add(time.Duration(req.Timeout) * time.Second)
	return errors.Is(ctx.Err(), context.DeadlineExceeded) && time.Until(ends) <= DefaultReleaseTimeout/2
}

// staleWindow: a close found this soon after the first request on an idle
// connection was sent came before the request (the server had closed the
// connection while it was idle): the request is sent again. One found later
// broke a wait the server had queued, which must fail as on any other
// connection — sent again, it would lose its place in the queue and hide
// the outage. Heuristic: a round trip (a wide-area one included) and a
// scheduling delay fit in it; a wait broken within it after the server
// queued it is sent again, behind the waiters that came meanwhile. If the
// server had granted the first request instead, on a server with
// auto-release off that grant (whose reply nobody read) holds the key until
// its lease runs out, and the second request waits for it: a delay bounded
// by the lease, never a second holder (docs/leases.md).
const staleWindow = 250 * time.Millisecond

// giveBack returns a wait-pool connection after a refusal. error_draining
// and a bare error (which also answers a wait interrupted by shutdown) mean
// the server closes, or may be closing, the connection: it is destroyed so
// that the next caller dials instead of inheriting a dying connection.
func giveBack(conn *pool.Conn, r wire.Reply) {
	switch r.Status {
	case wire.StatusErrDraining, wire.StatusError:
		conn.Destroy()
	default:
		conn.Release()
	}
}

// confirmLateGrant handles a grant that came long after its request was
// handed over: one that ended a long wait, or a lane try that first waited
// for its lane connection to be dialled. The lease started at some unknown
// moment between the request and the reply; the scheduler needs a lower
// bound of that moment, and the hand-over time is one only if the reply
// came within a quarter of the lease's life. Otherwise the lease is renewed
// once right away (do sends on the connection that carried the grant), and
// that renewal's send time becomes the bound. granted is the earliest the
// grant can have been made (the request's hand-over, or a ticket's enqueue),
// sent the time to track the lease from when no renewal is needed (the
// hand-over of the request that returned it). It returns the time to track
// the lease from. A renewal answered with a shorter lease than the grant's
// lowers grant.Lease to it, so that the lease is tracked for what the
// server applied.
func (c *Client) confirmLateGrant(ctx context.Context, do func(context.Context, wire.Request) (wire.Reply, error),
	req wire.Request, grant *wire.Reply, granted, sent time.Time) (time.Time, error) {
	grant.Lease = believedLease(req, *grant) // the renewal must not ask for more
	// "Long" against the life the scheduler counts the lease's loss from:
	// the TTL, or the servers' read timeout if shorter (rule 3 of
	// docs/leases.md). Against the TTL alone, a lease longer than the read
	// timeout granted after a wait between the two would start tracked
	// with its deadline passed, and be declared lost and released at once.
	life := min(time.Duration(grant.Lease)*time.Second, c.opts.readTimeout)
	if time.Since(granted) <= life/4 {
		return sent, nil
	}
	sent2 := time.Now()
	r, err := do(ctx, wire.RenewRequest(req.Key, grant.Token, req.Limit > 0, grant.Lease))
	if err != nil {
		return sent, err
	}
	switch {
	case r.Status == wire.StatusErrDraining:
		return sent, ErrDraining
	case r.Status != wire.StatusOK, r.Lease <= 0:
		// The lease lapsed before the grant was observed (or, answered ok
		// for no seconds, lapses now): not acquired.
		return sent, &bothError{domain: ErrNotAcquired, cause: ErrLeaseExpired}
	}
	grant.Lease = min(grant.Lease, r.Lease)
	return sent2, nil
}

// ownerDo sends one request on a lease's owner and waits for its answer
// while ctx lasts; an answer that comes after that is dropped.
func ownerDo(o pool.Owner) func(context.Context, wire.Request) (wire.Reply, error) {
	return func(ctx context.Context, req wire.Request) (wire.Reply, error) {
		r, _, err := o.Request(ctx, req, func(int, wire.Reply, error) {})
		return r, err
	}
}

// legacyWaitChunk caps every server-side wait sent to a server that does
// not answer ping (dflockd before v1.14).
//
// Servers before v1.15 do not notice that a blocked waiter's connection
// closed: a Lock that gives up (ctx, AcquireTimeout) stays queued on the
// server until the timeout it sent runs out. Meanwhile it counts toward
// --max-waiters, and the next release is first handed to the dead
// connection (and, with auto-release off, stays there until the lease
// expires). The client therefore never sends such a server a wait longer
// than this, and re-issues the wait when it runs out. The price is FIFO
// order: a re-issued wait joins the queue at its end, so a waiter that has
// waited longer than this can be overtaken by waiters that arrived less
// than this after it. See docs/leases.md ("Abandoned waiters") for the
// measurement behind the value. A var so tests can shrink it.
var legacyWaitChunk = 10 * time.Second

// chunkFor is the longest server-side wait to send on conn.
func chunkFor(conn *pool.Conn, chunk time.Duration) time.Duration {
	if conn.SupportsPing() {
		return chunk
	}
	return min(chunk, legacyWaitChunk)
}

// deadlinePassed is the error of an operation that found ctx's deadline
// passed (waitSeconds said so) before ctx's own timer closed Done: it waits
// for that timer, which is due, so that the error is ctx's — ErrTimeout for
// an AcquireTimeout — and not a bare context.DeadlineExceeded.
func deadlinePassed(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// earlyTimeouts paces the re-issue of blocking waits that the server ended
// with timeout well before the seconds asked for. dflockd ends a wait only
// when its time is up, so only a broken or hostile server (or a test's
// clock) does this: the first few go again at once, later ones after a
// growing pause, so that such a server gets a few requests a second, not
// a tight loop for as long as the caller waits.
type earlyTimeouts struct{ n int }

const (
	earlyFree     = 3                     // early timeouts in a row re-issued at once
	earlyMinPause = 50 * time.Millisecond // then paused this long, doubling
	earlyMaxPause = 1 * time.Second       // up to this
)

// pace is called for a wait of secs seconds sent at sent that timed out. It
// reports false if ctx ended during the pause.
func (e *earlyTimeouts) pace(ctx context.Context, secs int64, sent time.Time) bool {
	if time.Since(sent) >= time.Duration(secs)*time.Second/2 {
		e.n = 0
		return true
	}
	e.n++
	if e.n <= earlyFree {
		return true
	}
	t := time.NewTimer(min(earlyMinPause<<min(e.n-earlyFree-1, 5), earlyMaxPause))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// deadline is ctx.Deadline, read once, before a wait holds anything: a
// derived context asks its parent, so Deadline runs the caller's code,
// which may unwind (a panic, runtime.Goexit); it must not do so halfway
// through the wait, with a connection or a queued place in hand.
type deadline struct {
	at time.Time
	ok bool
}

func deadlineOf(ctx context.Context) deadline {
	at, ok := ctx.Deadline()
	return deadline{at, ok}
}

// waitSeconds is the server timeout for the next blocking request: the
// time left until ctx's deadline (dl, read from ctx) rounded up to whole
// seconds, at most chunk. ok is false when the deadline has passed.
func waitSeconds(ctx context.Context, dl deadline, chunk time.Duration) (secs int64, ok bool) {
	if !dl.ok {
		return wire.Seconds(chunk), true
	}
	left := time.Until(dl.at)
	if left <= 0 {
		if endsWithin(ctx, deadlineGrace) {
			return 0, false
		}
		// A deadline passed by the wall clock only: context.WithDeadline
		// on a wall time (no monotonic reading) arms its timer for the
		// time left when it was made, so after the clock is stepped
		// forward (NTP, a resumed VM) Deadline is past while Done is
		// still minutes away. Keep waiting, a second at a time, until
		// Done says the time is up.
		return 1, true
	}
	return min(wire.Seconds(left), wire.Seconds(chunk)), true
}

// deadlineGrace is how long a deadline that has passed may take to close
// ctx's Done (timer latency) before waitSeconds trusts Done over Deadline.
const deadlineGrace = 20 * time.Millisecond

// endsWithin reports whether ctx ends within d.
func endsWithin(ctx context.Context, d time.Duration) bool {
	if ctx.Err() != nil {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return true
	case <-t.C:
		return false
	}
}

// checkGrant rejects a grant reply the lease cannot be tracked from: no
// token, or a lease outside what the protocol allows (1 to wire.MaxSeconds
// seconds; a larger one would overflow every deadline computed from it).
// The caller gives such a grant back.
func checkGrant(r wire.Reply) error {
	switch {
	case r.Token == "":
		return &wire.ProtocolError{Line: r.Token, Reason: "grant without a token"}
	case r.Lease < 1 || r.Lease > wire.MaxSeconds:
		// The token is data, not shown: a hostile server may have made it
		// the auth token.
		return &wire.ProtocolError{Line: r.Word + " <token> " + strconv.FormatInt(r.Lease, 10),
			Reason: "grant lease outside 1.." + strconv.FormatInt(wire.MaxSeconds, 10) + " seconds"}
	case len(r.Token) > wire.MaxLine-1-len("9223372036") && len(r.Token)+1+len(strconv.FormatInt(r.Lease, 10)) > wire.MaxLine:
		// Its renewal's arg line, `<token> <lease>`, would be over the
		// server's line cap: the server would close the connection that
		// carried it, and lose every lease that connection owns. (The
		// release's, the token alone, fits.)
		return &wire.ProtocolError{Line: r.Word + " <token> " + strconv.FormatInt(r.Lease, 10),
			Reason: "grant token of " + strconv.Itoa(len(r.Token)) + " bytes too long to renew"}
	}
	return nil
}

// refusal is the error of a reply that refused an acquire.
func refusal(op, key string, srv *server, r wire.Reply) error {
	word, sentinel := replyError(r)
	if r.Status == wire.StatusErrLeaseExpired {
		// The grant lapsed before it was observed: not acquired, for
		// the one check "did I get it?" (as a ticket's Wait says).
		sentinel = &bothError{domain: ErrNotAcquired, cause: ErrLeaseExpired}
	}
	return &Error{Op: op, Key: key, Server: srv.addr, Reply: word, Err: sentinel}
}
