package dflock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/pool"
	"github.com/dflock-sdk/go/renew"
	"github.com/dflock-sdk/go/wire"
)

// Lock is a held lease: an exclusive lock, or one slot of a semaphore. It is
// renewed automatically until Release (or Client.Close). If the lease is
// lost — a renewal refused, the owning connection broken, or no renewal
// confirmed in time by the client's own clock — Done is closed, Err returns
// an error matching ErrLockLost, and Context is cancelled with that cause,
// before the server-side lease runs out whenever the client can tell.
//
// All methods are safe for concurrent use.
type Lock struct {
	c     *Client
	srv   *server
	lease *renew.Lease
	// owner is the connection that acquired the lease (renewals and the
	// release go there). pinned is the same connection when it is a
	// wait-pool connection the lease pins (granted after waiting, or by a
	// two-phase ticket); nil when a control-lane connection owns the lease.
	owner      renew.Owner
	pinned     *pool.Conn
	pinnedDone atomic.Bool
	limit      int64 // 0 for a lock
	fence      uint64
	hasFence   bool

	relMu   sync.Mutex // serialises Release; guards relDone and relErr
	relDone bool
	relErr  error
}

// Key returns the lock or semaphore key.
func (l *Lock) Key() string { return l.lease.Key() }

// Token returns the server's token for this lease (opaque).
func (l *Lock) Token() string { return l.lease.Token() }

// TTL returns the lease TTL granted by the server (whole seconds). It is
// renewed with this TTL until released.
func (l *Lock) TTL() time.Duration { return l.lease.TTL() }

// Limit returns the semaphore limit, or 0 for an exclusive lock.
func (l *Lock) Limit() int { return int(l.limit) }

// Server returns the address of the server holding the lease.
func (l *Lock) Server() string { return l.srv.addr }

// Fence returns the fencing token of the grant: a number that increases
// with every grant of the server, so a protected resource can refuse writes
// from a holder whose lease has since passed to someone else. ok is false
// when the server provides none: fences come from dflockd v2.1+ tokens
// (enable WithFencing) or from an explicit fence field in the reply.
func (l *Lock) Fence() (fence uint64, ok bool) { return l.fence, l.hasFence }

// Done is closed when the lease ends: lost, released, or released by Close.
func (l *Lock) Done() <-chan struct{} { return l.lease.Done() }

// Err is nil while the lease is held; afterwards it matches ErrLockLost
// (lost, wrapping the cause) or is ErrReleased.
func (l *Lock) Err() error { return l.lease.Err() }

// Context returns a context cancelled when the lease ends; context.Cause
// returns Err. Use it to stop work that must not outlive the lock.
func (l *Lock) Context() context.Context { return l.lease.Context() }

func (l *Lock) op(name string) string {
	if l.limit > 0 {
		return "semaphore " + name
	}
	return name
}

// Renew renews the lease now, instead of waiting for the scheduler, and
// waits for the server's answer. A refusal loses the lease and returns an
// error matching ErrLockLost. A nil ctx is an *ArgError.
func (l *Lock) Renew(ctx context.Context) error {
	if ctx == nil {
		return &ArgError{Arg: "ctx", Reason: "must not be nil"}
	}
	c := l.c
	if !c.enter() {
		return &Error{Op: l.op("renew"), Key: l.Key(), Server: l.srv.addr, Err: ErrClosed}
	}
	defer c.leave()
	if err := l.lease.Err(); err != nil {
		return l.endedError("renew", err)
	}
	opCtx, cancel := c.opContext(ctx)
	defer cancel()
	err := l.lease.Renew(opCtx)
	switch {
	case err == nil:
		return nil
	case opCtx.Err() != nil && !errors.Is(err, ErrLockLost):
		return &Error{Op: l.op("renew"), Key: l.Key(), Server: l.srv.addr, Err: c.ctxError(ctx, opCtx, nil)}
	}
	return l.endedError("renew", err)
}

// endedError is the error of an operation on a lease that has ended.
func (l *Lock) endedError(op string, err error) error {
	if errors.Is(err, ErrLockLost) {
		l.returnConn(true)
	}
	return &Error{Op: l.op(op), Key: l.Key(), Server: l.srv.addr, Err: err}
}

// Release releases the lease. It is idempotent: later calls return the
// first call's result. It returns nil after a clean release, and an error
// matching ErrLockLost if the lease had been lost (or had already expired
// on the server).
//
// The release is sent even if ctx has already ended; ctx only bounds the
// wait for the server's answer. A nil ctx is an *ArgError (and releases
// nothing), as everywhere in this package.
func (l *Lock) Release(ctx context.Context) error {
	if ctx == nil {
		return &ArgError{Arg: "ctx", Reason: "must not be nil"}
	}
	l.relMu.Lock()
	defer l.relMu.Unlock()
	if !l.relDone {
		l.relErr = l.release(ctx)
		l.relDone = true
	}
	return l.relErr
}

func (l *Lock) release(ctx context.Context) error {
	c := l.c
	if !c.enter() {
		// Close is releasing every held lease; report how this one ended.
		<-c.closed
		return l.releaseResult()
	}
	defer c.leave()
	if !l.lease.Untrack() {
		return l.releaseResult()
	}
	// The release is queued whether or not ctx has ended: the lease is no
	// longer renewed, so a release that is never sent would leave the lock
	// held on the server until its TTL runs out (a lane connection stays
	// open, so nothing else frees it). SendBatch never blocks and never
	// drops a request on a live connection; ctx bounds only the wait for
	// the answer, which is handled without the caller if it stops waiting.
	req := wire.ReleaseRequest(l.Key(), l.Token(), l.limit > 0)
	opCtx, cancel := c.opContext(ctx)
	defer cancel()
	res := make(chan error, 1)
	c.bg.Add(1)
	l.owner.SendBatch([]wire.Request{req}, func(_ int, r wire.Reply, err error) {
		if l.pinned == nil {
			// Lane-owned: nothing to hand back, safe on the reader goroutine.
			res <- l.finishRelease(releaseReply{r, err})
			c.bg.Done()
			return
		}
		// Returning a pinned connection to the pool (or destroying it)
		// must not run on that connection's own reader goroutine.
		go func() {
			defer c.bg.Done()
			res <- l.finishRelease(releaseReply{r, err})
		}()
	})
	if opCtx.Err() == nil { // an ended ctx reports so at once, deterministically
		select {
		case err := <-res:
			return err
		case <-opCtx.Done():
		}
	}
	return &Error{Op: l.op("release"), Key: l.Key(), Server: l.srv.addr, Err: c.ctxError(ctx, opCtx, nil)}
}

type releaseReply struct {
	r   wire.Reply
	err error
}

func (l *Lock) finishRelease(rr releaseReply) error {
	l.c.stats.released.Add(1)
	ok := rr.err == nil && rr.r.Status == wire.StatusOK
	if l.pinned != nil {
		l.returnConn(!ok)
	}
	switch {
	case errors.Is(rr.err, wire.ErrConnBroken):
		// The owning connection broke: the server released the lease when
		// it closed, possibly before the caller was done with it.
		return &Error{Op: l.op("release"), Key: l.Key(), Server: l.srv.addr,
			Err: &renew.LostError{Key: l.Key(), Cause: fmt.Errorf("%w: %w", renew.ErrOwnerFailed, rr.err)}}
	case rr.err != nil:
		return &Error{Op: l.op("release"), Key: l.Key(), Server: l.srv.addr, Err: rr.err}
	case !ok:
		// The server no longer knew the token: the lease had expired (or
		// its connection closed) before the release arrived.
		word := rr.r.Word
		if word == "" {
			word = rr.r.Status.String()
		}
		return &Error{Op: l.op("release"), Key: l.Key(), Server: l.srv.addr, Reply: word,
			Err: &renew.LostError{Key: l.Key(), Cause: fmt.Errorf("%w: the server no longer held the lease at release", renew.ErrRefused)}}
	}
	return nil
}

// releaseResult reports a lease the caller did not release itself.
func (l *Lock) releaseResult() error {
	err := l.lease.Err()
	if err == nil || errors.Is(err, ErrReleased) {
		return nil
	}
	return l.endedError("release", err)
}

// returnConn gives the pinned wait-pool connection back exactly once:
// destroyed after a loss or a failed release, returned to the pool after a
// clean release.
func (l *Lock) returnConn(destroy bool) {
	if l.pinned == nil || !l.pinnedDone.CompareAndSwap(false, true) {
		return
	}
	l.pinned.Unpin()
	if destroy {
		l.pinned.Destroy()
	} else {
		l.pinned.Release()
	}
}

// onLost is the lease's renew.Spec.OnLost: the one place where a lost
// lease's end is handled. It runs on the scheduler's notifier goroutine,
// which delivers every loss in order and which Close waits for, so it must
// not block: the pinned connection (if any) is destroyed at once (which
// never waits for the network), and the log record and the user's hook are
// queued for the callback goroutine. It may run before Track has returned,
// so it reads the lease from its argument, never l.lease.
func (l *Lock) onLost(lease *renew.Lease, err error) {
	c := l.c
	c.stats.lost.Add(1)
	l.returnConn(true)
	c.log.Warn("dflock: lease lost", "key", lease.Key(), "server", l.srv.addr, "err", err)
	if h := c.opts.hooks.OnLeaseLost; h != nil {
		info := LeaseInfo{Key: lease.Key(), Token: lease.Token(), Server: l.srv.addr, Semaphore: lease.Semaphore(), TTL: lease.TTL()}
		c.disp.do(func() { h(info, err) })
	}
}

// Lock acquires the exclusive lock key, waiting while another holder has
// it: until AcquireTimeout passes (ErrTimeout) or ctx ends (an error
// matching ctx.Err() and ErrNotAcquired, plus ErrTimeout for a deadline).
// Waiters are served in FIFO order by the server.
//
// An uncontended lock is taken with one pipelined request on a shared
// connection; a contended one waits on a connection of its own, which stays
// with the lock until it is released. If ctx ends while a grant is in
// flight, the grant is released: an error return never leaves a lock held.
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
	return c.acquire(ctx, "lock", key, 0, false, opts)
}

// TryLock acquires the lock key if it is free and fails at once with
// ErrNotAcquired if it is held. It never waits for the lock (ctx bounds the
// round trip).
func (c *Client) TryLock(ctx context.Context, key string, opts ...AcquireOption) (*Lock, error) {
	return c.acquire(ctx, "trylock", key, 0, true, opts)
}

// WithLock runs fn while holding the lock key (acquired as by Lock) and
// releases it afterwards, even if fn panics. fn's context is cancelled when
// ctx ends or when the lease is lost (then context.Cause matches
// ErrLockLost). WithLock returns fn's error, joined with an error matching
// ErrLockLost if the lease was lost before the release.
func (c *Client) WithLock(ctx context.Context, key string, fn func(ctx context.Context) error, opts ...AcquireOption) error {
	if fn == nil {
		return &ArgError{Arg: "fn", Reason: "must not be nil"}
	}
	l, err := c.Lock(ctx, key, opts...)
	if err != nil {
		return err
	}
	return runHeld(ctx, l, fn)
}

// runHeld runs fn under l and releases l.
func runHeld(ctx context.Context, l *Lock, fn func(ctx context.Context) error) (err error) {
	fctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(l.Context(), func() { cancel(context.Cause(l.Context())) })
	defer func() {
		stop()
		cancel(nil)
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultReleaseTimeout)
		rerr := l.Release(rctx)
		rcancel()
		if rerr != nil && errors.Is(rerr, ErrLockLost) {
			err = errors.Join(err, rerr)
		}
	}()
	return fn(fctx)
}

// acquire implements Lock, TryLock, Semaphore and TrySemaphore. limit 0
// means an exclusive lock.
func (c *Client) acquire(ctx context.Context, op, key string, limit int64, try bool, opts []AcquireOption) (*Lock, error) {
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
	srv, opCtx, cancel, err := c.begin(ctx, op, key)
	if err != nil {
		return nil, err
	}
	defer c.leave()
	defer cancel()
	if a.hasTimeout && !try {
		var cancelT context.CancelFunc
		opCtx, cancelT = context.WithTimeoutCause(opCtx, a.timeout, errAcquireTimeout)
		defer cancelT()
	}

	if try || !c.opts.noLaneFast {
		l, err := c.tryLane(ctx, opCtx, op, srv, req)
		if l != nil || err != nil {
			return l, err
		}
		if try {
			return nil, &Error{Op: op, Key: key, Server: srv.addr, Err: ErrNotAcquired}
		}
		c.stats.contended.Add(1)
	}
	return c.waitAcquire(ctx, opCtx, op, srv, req)
}

// tryLane sends the acquire with timeout 0 on the control lane. It returns
// (nil, nil) when the key is held.
func (c *Client) tryLane(ctx, opCtx context.Context, op string, srv *server, req wire.Request) (*Lock, error) {
	req.Timeout = 0
	sent := time.Now()
	r, owner, err := srv.pool.Do(opCtx, req)
	if err != nil {
		if opCtx.Err() != nil {
			return nil, &Error{Op: op, Key: req.Key, Server: srv.addr, Err: c.ctxError(ctx, opCtx, ErrNotAcquired)}
		}
		return nil, &Error{Op: op, Key: req.Key, Server: srv.addr, Err: err}
	}
	switch r.Status {
	case wire.StatusOK:
		if err := checkGrant(r); err != nil || opCtx.Err() != nil {
			// The caller gave up while the grant was in flight (or it is
			// unusable): give it back at once on the same connection.
			owner.SendBatch([]wire.Request{wire.ReleaseRequest(req.Key, r.Token, req.Limit > 0)}, func(int, wire.Reply, error) {})
			if err == nil {
				err = c.ctxError(ctx, opCtx, ErrNotAcquired)
			}
			return nil, &Error{Op: op, Key: req.Key, Server: srv.addr, Err: err}
		}
		c.stats.laneGrants.Add(1)
		return c.track(srv, owner, nil, req, r, sent), nil
	case wire.StatusTimeout:
		return nil, nil
	}
	return nil, refusal(op, req.Key, srv, r)
}

// waitAcquire sends a blocking acquire on a wait-pool connection of its own,
// re-issuing it while the server times out before the caller does.
func (c *Client) waitAcquire(ctx, opCtx context.Context, op string, srv *server, req wire.Request) (*Lock, error) {
	fail := func(err error) (*Lock, error) {
		if opCtx.Err() != nil {
			err = c.ctxError(ctx, opCtx, ErrNotAcquired)
		}
		return nil, &Error{Op: op, Key: req.Key, Server: srv.addr, Err: err}
	}
	conn, err := srv.pool.Acquire(opCtx)
	if err != nil {
		return fail(err)
	}
	for {
		secs, ok := waitSeconds(opCtx, chunkFor(conn, waitChunk))
		if !ok {
			conn.Release()
			return fail(context.DeadlineExceeded)
		}
		req.Timeout = secs
		r, sent, err := exchange(opCtx, conn, req)
		if err != nil {
			return fail(err)
		}
		switch r.Status {
		case wire.StatusOK:
			sent, err = c.confirmLongWait(opCtx, conn, req, r, sent)
			if err != nil {
				conn.Destroy()
				return fail(err)
			}
			c.stats.waitGrants.Add(1)
			return c.track(srv, conn, conn, req, r, sent), nil
		case wire.StatusTimeout:
			if opCtx.Err() == nil {
				continue // the server's chunk ran out before the caller's time
			}
			conn.Release()
			return fail(opCtx.Err())
		}
		giveBack(conn, r)
		return nil, refusal(op, req.Key, srv, r)
	}
}

// exchange sends req on an exclusive wait-pool connection and reads the
// answer. Whatever goes wrong destroys the connection — the server then
// withdraws the waiter and releases any grant with it — so the caller deals
// only with a clean outcome: an error, or a reply whose grant (if it is
// one) is well formed and still wanted (ctx had not ended when it came).
// sent is when the request was handed to the connection.
func exchange(opCtx context.Context, conn *pool.Conn, req wire.Request) (r wire.Reply, sent time.Time, err error) {
	sent = time.Now()
	r, err = conn.Do(opCtx, req)
	if err == nil && (r.Status == wire.StatusOK || r.Status == wire.StatusAcquired) {
		if err = checkGrant(r); err == nil {
			err = opCtx.Err()
		}
	}
	if err != nil {
		conn.Destroy()
	}
	return r, sent, err
}

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

// confirmLongWait handles a grant that ended a long wait. The lease started
// at some unknown moment between the request and the reply; the scheduler
// needs a lower bound of that moment, and the send time is one only if the
// wait was short. After a long wait the lease is renewed once right away,
// and that renewal's send time becomes the bound. It returns the time to
// track the lease from.
func (c *Client) confirmLongWait(ctx context.Context, conn *pool.Conn, req wire.Request, grant wire.Reply, sent time.Time) (time.Time, error) {
	ttl := time.Duration(grant.Lease) * time.Second
	if time.Since(sent) <= ttl/4 {
		return sent, nil
	}
	sent2 := time.Now()
	r, err := conn.Do(ctx, wire.RenewRequest(req.Key, grant.Token, req.Limit > 0, grant.Lease))
	if err != nil {
		return sent, err
	}
	if r.Status != wire.StatusOK {
		return sent, ErrLeaseExpired
	}
	return sent2, nil
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

// waitSeconds is the server timeout for the next blocking request: the
// time left until ctx's deadline rounded up to whole seconds, at most
// chunk. ok is false when the deadline has passed.
func waitSeconds(ctx context.Context, chunk time.Duration) (secs int64, ok bool) {
	dl, has := ctx.Deadline()
	if !has {
		return wire.Seconds(chunk), true
	}
	left := time.Until(dl)
	if left <= 0 {
		return 0, false
	}
	return min(wire.Seconds(left), wire.Seconds(chunk)), true
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
		return &wire.ProtocolError{Line: r.Word + " " + r.Token + " " + strconv.FormatInt(r.Lease, 10),
			Reason: "grant lease outside 1.." + strconv.FormatInt(wire.MaxSeconds, 10) + " seconds"}
	}
	return nil
}

// refusal is the error of a reply that refused an acquire.
func refusal(op, key string, srv *server, r wire.Reply) error {
	word, sentinel := replyError(r)
	return &Error{Op: op, Key: key, Server: srv.addr, Reply: word, Err: sentinel}
}

// track hands a grant to the scheduler and wraps it. pinned is the
// wait-pool connection the lease pins, or nil for a control-lane grant.
func (c *Client) track(srv *server, owner renew.Owner, pinned *pool.Conn, req wire.Request, r wire.Reply, sent time.Time) *Lock {
	l := &Lock{c: c, srv: srv, owner: owner, pinned: pinned, limit: req.Limit}
	if pinned != nil {
		pinned.Pin()
	}
	switch {
	case r.HasFence:
		l.fence, l.hasFence = r.Fence, true
	case c.opts.fencing:
		l.fence, l.hasFence = wire.FenceFromToken(r.Token)
	}
	// Everything onLost reads is written above: Track's lock orders it
	// before the notifier's call.
	l.lease = c.sched.Track(renew.Spec{
		Key:       req.Key,
		Token:     r.Token,
		Semaphore: req.Limit > 0,
		TTL:       time.Duration(r.Lease) * time.Second,
		Owner:     owner,
		Sent:      sent,
		OnLost:    l.onLost,
	})
	c.stats.acquired.Add(1)
	if l.lease.Err() != nil {
		// Lost at once. onLost gives the connection back too, except
		// after Close (then it is not called); returnConn acts once.
		l.returnConn(true)
	}
	return l
}
