package dflock

import (
	"context"
	"sync"
	"time"

	"github.com/dflock-sdk/go/pool"
	"github.com/dflock-sdk/go/wire"
)

// Ticket is a place in the queue of a lock, taken by Enqueue (two-phase
// acquire): join the queue now, do other work, and Wait for the lock later.
// A ticket holds a connection of its own until it is waited for or
// cancelled; end every ticket with Wait or Cancel.
//
// Ticket methods are safe for concurrent use; Cancel may be called while
// Wait is in progress, and makes it return.
type Ticket struct {
	t *ticket
}

// SemaphoreTicket is a place in the queue of a semaphore, taken by
// EnqueueSemaphore: the two-phase acquire of a slot. It behaves as a
// Ticket does, and its Wait returns the slot.
//
// SemaphoreTicket methods are safe for concurrent use; Cancel may be called
// while Wait is in progress, and makes it return.
type SemaphoreTicket struct {
	t *ticket
}

// ticket is the queue place behind a Ticket or a SemaphoreTicket.
type ticket struct {
	c     *Client
	srv   *server
	key   string
	limit int64 // 0 for a lock
	lease int64 // requested lease seconds (0 = server default)
	// queuedAt is the send time of the enqueue that took the current
	// place: the server may have granted the place at any moment since
	// (while nobody waited), so a grant that `w` returns is no fresher.
	queuedAt time.Time

	mu        sync.Mutex
	state     ticketState
	acquired  bool                    // granted at enqueue
	conn      *pool.Conn              // queued or waiting: the connection holding the place
	grant     *held                   // acquired: the lease
	stopWait  context.CancelCauseFunc // waiting: ends the Wait in progress
	cancelled bool
	// given: the grant Cancel released (granted at enqueue), whose
	// release's outcome a later Cancel repeats, as Release does.
	given *held
}

type ticketState uint8

const (
	ticketQueued   ticketState = iota // in the queue, not waited for
	ticketAcquired                    // granted at enqueue, not collected by Wait
	ticketWaiting                     // Wait in progress
	ticketDone                        // waited, timed out, cancelled or closed
)

// Enqueue joins the queue of the lock key without waiting (two-phase
// acquire). If the lock was free it is granted at once: Acquired reports
// true and the lease is held (and renewed) from now on, so Wait or Cancel
// the ticket promptly. LeaseTTL applies; AcquireTimeout belongs to Wait.
//
// A place the server grants while nobody waits on it is not renewed (the
// client learns of the grant only at Wait): it holds the lock until its
// lease runs out, and a Wait after that fails with an error matching both
// ErrNotAcquired and ErrLeaseExpired. (A Wait granted more than a quarter
// of the lease, or of the servers' read timeout if shorter, after its place
// was queued confirms the grant with one renewal first: dflockd v1.10.0
// answers ok for a lapsed place.)
//
// A queued ticket holds a wait-pool connection until it is waited for or
// cancelled; once WithMaxConnsPerServer connections to the key's server are
// in use, Enqueue waits for one, bounded by ctx. The keepalive pings that
// connection but does not close it when the server stops answering the
// pings (a closed connection could not give the place up, and a server
// with auto-release off would keep it, or grant it, for nobody); Wait and
// Cancel, bounded by their contexts, find the server resumed or not.
func (c *Client) Enqueue(ctx context.Context, key string, opts ...AcquireOption) (*Ticket, error) {
	t, err := c.tracedEnqueue(ctx, "enqueue", key, 0, opts)
	if err != nil {
		return nil, err
	}
	return &Ticket{t: t}, nil
}

// EnqueueSemaphore joins the queue of the semaphore key (limit slots)
// without waiting, like Enqueue. SemaphoreTicket.Wait returns the slot.
func (c *Client) EnqueueSemaphore(ctx context.Context, key string, limit int, opts ...AcquireOption) (*SemaphoreTicket, error) {
	if err := checkLimit(limit); err != nil {
		return nil, err
	}
	t, err := c.tracedEnqueue(ctx, "enqueue semaphore", key, int64(limit), opts)
	if err != nil {
		return nil, err
	}
	return &SemaphoreTicket{t: t}, nil
}

func (c *Client) enqueue(ctx context.Context, op, key string, limit int64, opts []AcquireOption) (*ticket, error) {
	if ctx == nil {
		return nil, &ArgError{Arg: "ctx", Reason: "must not be nil"}
	}
	a, err := c.acquireOptions(opts)
	if err != nil {
		return nil, err
	}
	if a.hasTimeout {
		return nil, &ArgError{Arg: "timeout", Value: a.timeout.String(), Reason: "Enqueue does not wait; pass AcquireTimeout to Ticket.Wait"}
	}
	req := wire.Request{Cmd: wire.CmdEnqueue, Key: key, Lease: wire.Seconds(a.lease)}
	if limit != 0 {
		req.Cmd, req.Limit = wire.CmdSemEnqueue, limit
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	srv, opCtx, cancel, err := c.begin(ctx, op, key)
	if err != nil {
		return nil, err
	}
	defer c.leave()
	// Removing opCtx from ctx calls ctx's methods, the caller's code: if
	// one unwinds (a panic, runtime.Goexit), the ticket enqueued (out) is
	// given up rather than left queued, or holding its grant, for nobody.
	var out *ticket
	defer func() {
		handed := false
		defer func() {
			if !handed && out != nil {
				_ = out.cancel()
			}
		}()
		cancel()
		handed = true
	}()
	fail := func(err error) (*ticket, error) {
		if opCtx.Err() != nil {
			err = c.ctxError(ctx, opCtx, ErrNotAcquired)
		}
		return nil, &Error{Op: op, Key: key, Server: srv.addr, Err: err}
	}
	// Getting a wait-pool connection may wait (the pool at its limit, a
	// dial): counted in WaitsInFlight like a blocking acquire's, though
	// not traced as a wait (Enqueue itself never waits for the key).
	acquireConn := func() (*pool.Conn, error) {
		srv.obs.waits.Add(1)
		defer srv.obs.waits.Add(-1)
		return srv.pool.Acquire(opCtx)
	}
	conn, err := acquireConn()
	if err != nil {
		t, ferr := fail(err)
		return t, connectingIn(ferr, err)
	}
	t := &ticket{c: c, srv: srv, key: key, limit: limit, lease: req.Lease}
	r, sent, err := c.exchange(opCtx, srv, conn, req, t.withdraw)
	for err != nil && conn.StaleOnFirstUse(err) && opCtx.Err() == nil {
		// An idle connection the server had closed (exchange destroyed
		// it): again on another, as in waitAcquire; a freshly dialled one
		// is never stale. (No window as for a wait: the server answers an
		// e at once. If it had granted the first one, see staleWindow for
		// what the grant lost with the connection costs.)
		if conn, err = acquireConn(); err != nil {
			t, ferr := fail(err)
			return t, connectingIn(ferr, err)
		}
		r, sent, err = c.exchange(opCtx, srv, conn, req, t.withdraw)
	}
	if err != nil {
		return fail(err)
	}
	switch r.Status {
	case wire.StatusAcquired, wire.StatusOK:
		t.grant = c.track(srv, conn, conn, req, r, sent)
		t.state, t.acquired = ticketAcquired, true
		out = t
		return t, nil
	case wire.StatusQueued:
		if opCtx.Err() != nil {
			t.withdrawLater(conn)
			return fail(opCtx.Err())
		}
		t.state, t.conn, t.queuedAt = ticketQueued, conn, sent
		conn.HoldPlace(true) // the keepalive must not close it: see withdraw
		c.tickets.add(t)
		out = t
		return t, nil
	}
	giveBack(conn, r)
	return nil, refusal(op, key, srv, r)
}

// Key returns the ticket's key.
func (t *Ticket) Key() string { return t.t.key }

// Server returns the address of the key's server.
func (t *Ticket) Server() string { return t.t.srv.addr }

// Acquired reports whether the lock was granted at enqueue time, so that
// Wait returns it at once.
func (t *Ticket) Acquired() bool { return t.t.acquired }

// Wait waits for the lock and returns it. A ticket granted at enqueue
// returns its lock at once, even for a ctx that has ended (the lock is
// held already; Cancel gives it back instead). AcquireTimeout bounds the
// wait (ctx may end it sooner); when it passes, or ctx ends, the ticket
// gives up its place and is done. A ticket can be waited for successfully
// only once; later calls return ErrTicketDone.
//
// The ticket re-joins the queue (at its end) whenever the server-side wait
// runs out first, because the server consumes the place when its wait
// times out: a wait is sent for at most a day, and to servers before v1.14
// (no ping) for at most 10 seconds, so there a long wait can be overtaken
// (see docs/leases.md, "Abandoned waiters").
func (t *Ticket) Wait(ctx context.Context, opts ...AcquireOption) (*Lock, error) {
	return newLock(t.t.tracedAwait(ctx, opts))
}

// Cancel gives up the ticket: a queued ticket leaves the queue, releasing
// the lock if it was granted to the ticket meanwhile; a ticket granted at
// enqueue and not yet collected by Wait releases the lock. Either way Cancel
// waits for the server's answer, at most DefaultReleaseTimeout (then a
// queued ticket's connection lingers for the answer, at most a minute, so
// that a place a paused server grants is still released when it resumes;
// a granted ticket's release is answered in the background, as Release's
// is). A Wait in progress returns, unless it has already read its grant
// and holds it (it then returns the Lock, which Cancel no longer affects);
// Cancel then returns at once, without the server's answer: the Wait
// withdraws the place before it returns, as one whose context ends does.
// A grant for a place queued longer than a quarter of its lease (or of the
// servers' read timeout, if shorter) is first confirmed with a renewal
// before Wait holds it: a Cancel during that round
// trip still ends the Wait, and the grant is released. A grant it reads
// later is released too; its blocking wait is withdrawn
// as a cancelled Lock's is, by half-closing its connection, and a grant
// the server sent at that instant is released when it arrives (on servers
// before v1.14, the connection is closed, and such a grant is ended by the
// server's auto-release on disconnect; with that off, it is held until its
// lease runs out: see docs/leases.md). Cancel is idempotent: a later call
// returns what the release of a grant returned, as Release does, and nil
// otherwise. A ticket already waited for is not affected (release its Lock
// instead).
func (t *Ticket) Cancel() error { return t.t.cancel() }

// Key returns the semaphore's key.
func (t *SemaphoreTicket) Key() string { return t.t.key }

// Limit returns the semaphore's limit.
func (t *SemaphoreTicket) Limit() int { return int(t.t.limit) }

// Server returns the address of the key's server.
func (t *SemaphoreTicket) Server() string { return t.t.srv.addr }

// Acquired reports whether a slot was granted at enqueue time, so that Wait
// returns it at once.
func (t *SemaphoreTicket) Acquired() bool { return t.t.acquired }

// Wait waits for a slot and returns it, as Ticket.Wait does for a lock.
func (t *SemaphoreTicket) Wait(ctx context.Context, opts ...AcquireOption) (*Semaphore, error) {
	return newSemaphore(t.t.tracedAwait(ctx, opts))
}

// Cancel gives up the ticket, as Ticket.Cancel does; a slot granted at
// enqueue and not yet collected by Wait is released. A ticket already
// waited for is not affected (release its Semaphore instead).
func (t *SemaphoreTicket) Cancel() error { return t.t.cancel() }

func (t *ticket) op() string {
	if t.limit > 0 {
		return "wait semaphore"
	}
	return "wait"
}

// await implements Ticket.Wait and SemaphoreTicket.Wait.
func (t *ticket) await(ctx context.Context, opts []AcquireOption) (h *held, err error) {
	c := t.c
	if ctx == nil {
		return nil, &ArgError{Arg: "ctx", Reason: "must not be nil"}
	}
	a, err := c.acquireOptions(opts)
	if err != nil {
		return nil, err
	}
	if a.hasLease {
		return nil, &ArgError{Arg: "lease", Value: a.lease.String(), Reason: "the lease is set at Enqueue"}
	}
	if !c.enter() {
		return nil, &Error{Op: t.op(), Key: t.key, Server: t.srv.addr, Err: ErrClosed}
	}
	defer c.leave()
	// Cancel ends a Wait in progress through its context, never by
	// closing the connection itself: a grant that has already arrived is
	// then either returned (and Cancel no longer affects it) or withdrawn
	// by wait itself, so a Lock that Wait returns is never killed by a
	// racing Cancel. (A blocking wait still to run is withdrawn by wait,
	// which half-closes the connection as any cancelled wait does.)
	// Derived before t.mu is taken: deriving calls ctx's methods, the
	// caller's code, and one that panics must not leave t.mu locked.
	wctx, stop := context.WithCancelCause(ctx)
	defer func() { (&derived{outer: func() { stop(nil) }}).cancel(h) }()

	t.mu.Lock()
	switch t.state {
	case ticketAcquired:
		h := t.grant
		t.state, t.grant = ticketDone, nil
		t.mu.Unlock()
		return h, nil // handedOver refuses it if its lease has ended or is overdue
	case ticketWaiting, ticketDone:
		err := ErrTicketDone
		if !t.cancelled {
			err = &bothError{domain: ErrTicketDone, cause: errTicketUsed}
		}
		t.mu.Unlock()
		return nil, &Error{Op: t.op(), Key: t.key, Server: t.srv.addr, Err: err}
	}
	t.state, t.stopWait = ticketWaiting, stop
	conn := t.conn
	t.mu.Unlock()

	waited := false
	defer func() {
		if !waited {
			// wait unwound before it sent anything (the caller's code
			// runs only at its start: see wait): the place is given back
			// and the ticket is done.
			t.mu.Lock()
			t.state, t.conn, t.stopWait = ticketDone, nil, nil
			t.mu.Unlock()
			c.tickets.remove(t)
			t.withdrawLater(conn)
		}
	}()
	l, err := t.wait(wctx, conn, a)
	waited = true

	t.mu.Lock()
	t.state, t.conn, t.stopWait = ticketDone, nil, nil
	cancelled := t.cancelled
	t.mu.Unlock()
	c.tickets.remove(t)
	if err != nil && cancelled {
		err = &Error{Op: t.op(), Key: t.key, Server: t.srv.addr, Err: &bothError{domain: ErrTicketDone, cause: ErrNotAcquired}}
	}
	return l, err
}

func (t *ticket) wait(ctx context.Context, conn *pool.Conn, a acquireOptions) (*held, error) {
	c := t.c
	opCtx, cancel := c.opContext(ctx)
	defer cancel()
	try := a.hasTimeout && a.timeout == 0
	if a.hasTimeout && !try {
		var cancelT context.CancelFunc
		opCtx, cancelT = context.WithTimeoutCause(opCtx, a.timeout, errAcquireTimeout)
		defer cancelT()
	}
	// The caller's code runs here last (see deadline): await gives the
	// place back if it unwinds.
	dl := deadlineOf(opCtx)
	fail := func(err error) (*held, error) {
		if opCtx.Err() != nil {
			err = c.ctxError(ctx, opCtx, ErrNotAcquired)
		}
		return nil, &Error{Op: t.op(), Key: t.key, Server: t.srv.addr, Err: err}
	}
	defer c.waitBegin(ctx, t.srv).end()
	wcmd, ecmd := wire.CmdWait, wire.CmdEnqueue
	if t.limit > 0 {
		wcmd, ecmd = wire.CmdSemWait, wire.CmdSemEnqueue
	}
	var early earlyTimeouts
	for {
		var secs int64
		if !try {
			var ok bool
			if secs, ok = waitSeconds(opCtx, dl, chunkFor(conn, ticketWaitChunk)); !ok {
				t.withdrawLater(conn)
				return fail(deadlinePassed(opCtx))
			}
		}
		req := wire.Request{Cmd: wcmd, Key: t.key, Timeout: secs, Limit: t.limit}
		// (Ended — cancelled, or stopped by Cancel — before it is sent, the
		// w is not sent: exchange gives the place back with t.withdraw.)
		r, wsent, err := c.exchange(opCtx, t.srv, conn, req, t.withdraw)
		if err != nil {
			return fail(err)
		}
		switch r.Status {
		case wire.StatusOK, wire.StatusAcquired:
			// The place may have been granted at any moment since it was
			// queued, and dflockd v1.10.0 answers the w of a place whose
			// lease lapsed meanwhile (and went to another holder) with ok
			// and the stale token: a place queued longer ago than a
			// quarter of the lease's life is confirmed by a renewal, as a
			// slow grant is. Otherwise the lease cannot have lapsed, and
			// the w reset it: it is tracked from the w.
			req.Lease = t.lease // the lease the e asked for, which the w grants
			sent, err := c.confirmLateGrant(opCtx, conn.Do, req, &r, t.queuedAt, wsent)
			if err != nil {
				c.releaseAside(t.srv, wire.ReleaseRequest(t.key, r.Token, t.limit > 0)) // see waitAcquire
				conn.Destroy()
				return fail(err)
			}
			return c.track(t.srv, conn, conn, req, r, sent), nil
		case wire.StatusTimeout:
			if try || opCtx.Err() != nil || !early.pace(opCtx, secs, wsent) {
				conn.Release() // the server consumed the place: the connection is clean
				return fail(ErrTimeout)
			}
			// The server-side chunk ran out first; the place is gone, so
			// join the queue again (lease as at Enqueue: the server keeps
			// none, so the default applies unless one was given).
			l, queued, err := t.reenqueue(opCtx, conn, ecmd)
			if err != nil || l != nil {
				if err != nil {
					return fail(err)
				}
				return l, nil
			}
			if !queued {
				return fail(ErrNotAcquired)
			}
			continue
		case wire.StatusErrNotEnqueued, wire.StatusErrLeaseExpired:
			// The place was granted while nobody waited, and its lease
			// ran out (error_not_enqueued once the server evicted it).
			conn.Release() // w consumed the place
			word, _ := replyError(r)
			return nil, &Error{Op: t.op(), Key: t.key, Server: t.srv.addr, Reply: word,
				Err: &bothError{domain: ErrNotAcquired, cause: ErrLeaseExpired}}
		}
		giveBack(conn, r)
		return nil, refusal(t.op(), t.key, t.srv, r)
	}
}

// reenqueue re-joins the queue on conn after a server-side wait chunk ran
// out. It returns the lease if the key was granted at once.
func (t *ticket) reenqueue(ctx context.Context, conn *pool.Conn, cmd wire.Command) (*held, bool, error) {
	req := wire.Request{Cmd: cmd, Key: t.key, Limit: t.limit, Lease: t.lease}
	// (A ctx that has ended already sends nothing: the timed-out w consumed
	// the place, and the connection goes back clean.)
	r, sent, err := t.c.exchange(ctx, t.srv, conn, req, t.withdraw)
	if err != nil {
		return nil, false, err
	}
	switch r.Status {
	case wire.StatusAcquired, wire.StatusOK:
		return t.c.track(t.srv, conn, conn, req, r, sent), false, nil
	case wire.StatusQueued:
		t.queuedAt = sent
		conn.HoldPlace(true)
		return nil, true, nil
	}
	giveBack(conn, r)
	return nil, false, refusal(t.op(), t.key, t.srv, r)
}

// cancel implements Ticket.Cancel and SemaphoreTicket.Cancel. Giving up a
// queued place counts as an operation, so that Close, which withdraws the
// queued tickets it finds, waits for one this Cancel took out of its reach.
func (t *ticket) cancel() error {
	t.mu.Lock()
	given := t.given
	t.mu.Unlock()
	if given != nil {
		// The outcome of the release an earlier Cancel made, which Release
		// repeats after Close too.
		return releaseGiven(given)
	}
	if !t.c.enter() {
		// Close has begun: it withdraws the ticket (closeAll) or
		// releases its lease.
		<-t.c.settled
		return nil
	}
	t.mu.Lock()
	switch t.state {
	case ticketQueued:
		conn := t.conn
		t.state, t.conn, t.cancelled = ticketDone, nil, true
		t.mu.Unlock()
		t.c.tickets.remove(t)
		defer t.c.leave()
		ctx, cancel := context.WithTimeout(context.Background(), DefaultReleaseTimeout)
		defer cancel()
		t.withdraw(ctx, conn)
		return nil
	case ticketWaiting:
		stop := t.stopWait
		t.cancelled = true
		t.mu.Unlock()
		t.c.leave()
		stop(ErrTicketDone) // wait withdraws the place (destroys its connection)
		return nil
	case ticketAcquired, ticketDone:
		h := t.grant
		if t.state == ticketDone {
			if h = t.given; h == nil {
				break // waited for, timed out, or withdrawn: nothing to give back
			}
		}
		t.state, t.grant, t.given, t.cancelled = ticketDone, nil, h, true
		t.mu.Unlock()
		// Not counted here: the release is an operation of its own, which
		// waits for Close if Close has begun (Close waiting for this one
		// would then wait for ever), and the lease is the scheduler's
		// until released, so Close releases it if this comes too late.
		t.c.leave()
		return releaseGiven(h)
	}
	t.mu.Unlock()
	t.c.leave()
	return nil
}

// releaseGiven releases h, the grant of a cancelled ticket, waiting for the
// server at most DefaultReleaseTimeout.
func releaseGiven(h *held) error {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultReleaseTimeout)
	defer cancel()
	return h.release(ctx)
}

// abandon is Cancel for Close: a queued ticket gives up its place (ctx
// bounds every ticket's withdrawal together).
func (t *ticket) abandon(ctx context.Context) {
	t.mu.Lock()
	if t.state != ticketQueued {
		t.mu.Unlock()
		return
	}
	conn := t.conn
	t.state, t.conn = ticketDone, nil
	t.mu.Unlock()
	t.withdraw(ctx, conn)
}

// withdraw gives up the queue place held on conn, and any grant already
// made to it. Closing the connection would do both only where the server
// releases on disconnect: with --auto-release-on-disconnect=false it drops
// the place but keeps a grant that came before the close, held by nobody
// until its lease runs out. So the place is tried instead (w key 0), which
// consumes it whatever the answer; a grant is released on the same
// connection, which is then clean and goes back to the pool. If ctx ends
// first, the connection is abandoned to linger for the answer
// (pool.Conn.Abandon), unless the Client is closing; whatever else goes
// wrong, it is destroyed.
func (t *ticket) withdraw(ctx context.Context, conn *pool.Conn) {
	cmd := wire.CmdWait
	if t.limit > 0 {
		cmd = wire.CmdSemWait
	}
	r, err := sendOn(ctx, conn, wire.Request{Cmd: cmd, Key: t.key, Limit: t.limit})
	switch {
	case err == nil:
		switch r.Status {
		case wire.StatusOK, wire.StatusAcquired:
			t.c.giveBackUntrackable(ctx, t.srv, conn, wire.Request{Key: t.key, Limit: t.limit}, r)
			return
		case wire.StatusTimeout, wire.StatusErrNotEnqueued, wire.StatusErrLeaseExpired:
			conn.Release() // the place is consumed; nothing is held
			return
		}
	case ctx.Err() != nil && !t.c.closing.Load():
		// Unanswered in time: a paused server answers it when it
		// resumes, perhaps with a grant, which the lingering connection
		// hands on to be released. (Not once Close has begun: closing
		// the pools would end the linger anyway, and Close would wait
		// for it.)
		conn.Abandon()
		return
	}
	conn.Destroy()
}

// withdrawLater is withdraw for a caller whose context has ended, which must
// not wait for the server: it runs as a background job (through Close too,
// until Close's deadline), or, once Close has stopped the jobs, closes the
// connection.
func (t *ticket) withdrawLater(conn *pool.Conn) {
	t.c.inBackground(conn, func(ctx context.Context) { t.withdraw(ctx, conn) })
}

// sendOn sends req on conn and waits for the answer or ctx. Unlike
// conn.Do it does not end with the Client (Close withdraws tickets with
// it) and leaves the connection alone when ctx ends; the caller destroys
// it then.
func sendOn(ctx context.Context, conn *pool.Conn, req wire.Request) (wire.Reply, error) {
	type answer struct {
		r   wire.Reply
		err error
	}
	ch := make(chan answer, 1)
	conn.SendBatch([]wire.Request{req}, func(_ int, r wire.Reply, err error) { ch <- answer{r, err} })
	select {
	case a := <-ch:
		return a.r, a.err
	case <-ctx.Done():
		return wire.Reply{}, ctx.Err()
	}
}
