package pool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/dflock-sdk/go/wire"
)

// readOwn reads the reply to cl on the caller's goroutine. The caller has
// the turn (send gave it: cl was the only call pending and the reader stood
// aside), so the next line on the connection is cl's reply. ok is false if
// the caller handed the turn to the reader instead: ctx or the pool's
// Lifetime ended; the reply began to arrive without its end (ReadLine
// could then block past the caller's context; the reader reads it whole);
// or the caller found the connection broken, which the reader then fails
// (so Config.OnConnBroken runs there, never on a caller).
func (c *conn) readOwn(ctx context.Context, cl *call) (_ wire.Reply, _ error, ok bool) {
	var stop func() bool
	// ctx's methods are the caller's code. One that panics, or calls
	// runtime.Goexit, while this caller has the turn must not take the
	// turn with it: nobody would read the connection again, and the
	// leases it owns would be lost. The turn goes back to the reader as
	// the caller unwinds (await abandons cl to it).
	passed := false
	defer func() {
		if !passed {
			c.handOff(nil)
			if stop != nil {
				stop()
			}
		}
	}()
	d := ctx.Done()
	if d != nil && d != c.p.lifeDone {
		stop = context.AfterFunc(ctx, c.interruptFn)
	}
	var cause error
	// An end that came before this caller took the turn interrupted
	// nobody: hence the checks before every wait, not only after one.
	for ctx.Err() == nil && !c.p.ended.Load() {
		ready, err := c.wc.AwaitLine()
		if err == nil && !ready {
			break
		}
		if err == nil {
			// The line is buffered whole: no wait is left to interrupt.
			// stop goes before the line is consumed, since it may run
			// the caller's code (a custom context's AfterFunc), and a
			// caller unwinding then leaves the line to the reader, for cl.
			if stop != nil {
				stop()
				stop = nil
			}
			line, err := c.wc.ReadLine() // buffered whole: does not wait
			if err == nil && wire.IsPush(line) {
				// Lane and wait-pool connections listen to nothing.
				if d != nil && d != c.p.lifeDone {
					stop = context.AfterFunc(ctx, c.interruptFn)
				}
				continue
			}
			if err == nil {
				passed = true
				return c.finishOwn(cl, line)
			}
			cause = err // the wire.Conn is broken
			break
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, wire.ErrConnBroken) {
			// The wire.Conn is broken (perhaps by a write that timed
			// out: its error then wraps a deadline error too).
			cause = err
			break
		}
		// Interrupted: by this caller's end (the loop's condition), or
		// late by an earlier caller's, whose interrupt found this one
		// reading, or by fail, which delivered cl its error and leaves
		// the socket to the lingering reader. Either way the deadline
		// goes before anyone reads on.
		c.mu.Lock()
		c.clearForcedLocked()
		broken := c.err != nil
		c.mu.Unlock()
		if broken {
			break
		}
	}
	if stop != nil {
		stop()
	}
	passed = true
	c.handOff(cause)
	return wire.Reply{}, nil, false
}

// desyncedLocked records that a caller consumed a line that answers
// nothing it can trust: the reader is to break the connection with cause
// (failWith), and a linger, begun or to come, matches no more replies.
func (c *conn) desyncedLocked(cause error) {
	c.orphans = c.orphans[:0]
	if c.failWith == nil {
		c.failWith = cause
	}
}

// handOff gives the turn back to the reader goroutine. A non-nil cause is
// a failure the caller found; the reader breaks the connection with it.
func (c *conn) handOff(cause error) {
	c.mu.Lock()
	c.clearForcedLocked()
	if cause != nil && c.failWith == nil {
		c.failWith = cause
	}
	if c.turn == turnCaller {
		c.turn = turnReader
		c.own = nil
	}
	c.wakeReader()
	c.mu.Unlock()
}

// finishOwn completes cl with the line its caller read, does the reader's
// bookkeeping and passes the turn on.
func (c *conn) finishOwn(cl *call, line []byte) (_ wire.Reply, _ error, ok bool) {
	// Parsed before the turn passes on: line points into the read buffer,
	// which the next reader refills.
	rep, perr := c.wc.ParseReply(line, cl.cmd)
	if perr != nil {
		// The line is consumed: the reader must not read on, only fail
		// the connection (and cl with it). One that broke meanwhile and
		// lingers stops lingering, and one the keepalive breaks from
		// now on does not linger (failWith): the rest cannot be trusted.
		c.mu.Lock()
		c.desyncedLocked(perr)
		c.mu.Unlock()
		c.handOff(nil)
		return wire.Reply{}, nil, false
	}
	c.mu.Lock()
	if c.err != nil {
		// The connection broke meanwhile (Close, the keepalive): fail
		// took cl out of the queue and delivered the error, which is
		// what the caller gets. A grant it read is nobody's then. The
		// line answered the oldest orphan (cl was alone when its caller
		// took the turn); a lingering reader reads the rest.
		if len(c.orphans) > 0 {
			c.orphans = c.orphans[1:]
		}
		// A cut that found this caller reading forced the read deadline
		// into the past to stop it; the lingering reader needs it back.
		c.clearForcedLocked()
		c.own = nil
		c.wakeReader()
		c.mu.Unlock()
		<-cl.done
		cmd, key := cl.cmd, cl.grantKey
		r, err := cl.reply, cl.err
		if cl.verdict == nil {
			putCall(cl)
		}
		// Otherwise a write that took cl was under way when the
		// connection broke, and its writer may still set cl.unsent
		// (see conn.writing): recycled, the flag would land on another
		// request. Left to the collector, as deliver and await do.
		c.grantLost(cmd, key, rep)
		return r, err, true
	}
	if c.onWireLocked() == 0 {
		// cl, the head of the queue (alone when the caller took the
		// turn), is not written yet: a flush in progress when it was
		// queued writes it. The line answers nothing (as in readReplies):
		// the reader breaks the connection, and cl with it.
		c.desyncedLocked(c.unsolicitedLocked(line))
		c.mu.Unlock()
		c.handOff(nil)
		return wire.Reply{}, nil, false
	}
	c.q.pop() // cl: alone when the caller took the turn, and nobody else reads
	c.own = nil
	c.answeredLocked(cl)
	c.clearForcedLocked()
	if c.q.n > 0 {
		// Requests queued behind this one: the reader reads their replies.
		c.turn = turnReader
		c.wakeReader()
	} else {
		c.turn = turnNobody
		if !c.aside {
			c.p.quiet.add(c)
		}
	}
	c.mu.Unlock()
	putCall(cl)
	return rep, nil, true
}

// interruptRead (c.interruptFn) stops a caller's wait for its reply by
// forcing the read deadline into the past; the caller clears it. It runs
// when a caller's context ends (context.AfterFunc) or the pool's Lifetime
// does, and may come late, when another caller is reading: that one finds
// its own context alive and waits again.
func (c *conn) interruptRead() {
	c.mu.Lock()
	if c.turn == turnCaller && !c.forced && c.err == nil {
		c.forced = true
		_ = c.wc.SetReadDeadline(pastDeadline)
	}
	c.mu.Unlock()
}

func (c *conn) clearForcedLocked() {
	if c.forced {
		c.forced = false
		_ = c.wc.SetReadDeadline(c.lingerUntil) // zero unless lingering
	}
}

// wakeReader tells the parked reader to look at the turn again.
func (c *conn) wakeReader() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// pastDeadline interrupts a read at once.
var pastDeadline = time.Unix(1, 0)

// watchDelay is how long the reader stands aside after the connection's
// last write or reply before it reads again with nothing pending, to watch
// for the server closing the connection: a broken connection owning leases
// is reported within this delay of going quiet (docs/leases.md), and
// meanwhile another client may be granted a lease this one still believes
// it holds. While the connection is busier than that, callers read their
// own replies. The pool's quietWatch resumes the reader; shorter costs
// more of its passes while a caller reads (one per delay); longer widens
// that window (at 10 ms a 3-minute soak counted 9 such overlaps after
// fault kills, against none with the reader always reading: one run each,
// but the direction is plain).
const watchDelay = 2 * time.Millisecond

type turn uint8

const (
	turnReader turn = iota
	turnNobody
	turnCaller
)

// claimTurnLocked takes the turn to read for a caller about to send a
// waiting request while nothing is pending and the reader stands aside,
// and reports whether the caller keeps it. It first makes sure nothing is
// waiting to be read, since the reader, standing aside, did not look: a
// connection the server closed, or on which it sent bytes nobody asked for
// (a stray line would be taken for the reply to this request), must not
// take the request. Such a connection is broken here — by the reader, so
// that Config.OnConnBroken runs there — and send returns its error with
// nothing sent, so that Pool.Do sends the request on another connection.
// Called and returning with c.mu held; releases it meanwhile.
func (c *conn) claimTurnLocked() bool {
	c.turn = turnCaller
	var res probeResult
	var cause error
	var tlsErr error
	if c.tls && c.wc.Buffered() == 0 {
		tlsErr = c.pullTLSRecordLocked()
	}
	switch {
	case tlsErr != nil:
		res, cause = probeBroken, tlsErr
	case c.wc.Buffered() > 0:
		// Read along with the last reply: free to find, unlike the rest.
		res, cause = probeBroken, errStrayBytes
	case c.p.now()-c.lastRead < int64(probeAfter):
		return true // read from a moment ago; see probeAfter
	default:
		hook := c.beforeProbe
		c.mu.Unlock()
		if hook != nil {
			hook()
		}
		res, cause = c.probe()
		c.mu.Lock()
		if (cause == errStrayBytes || cause == errTLSRecord) && c.q.n > 0 {
			// Requests were queued (and perhaps answered) while the
			// socket was probed without the lock: the bytes may be
			// their replies, for the reader to match.
			res, cause = probeData, nil
		}
	}
	if c.err != nil {
		return false
	}
	if res == probeQuiet && c.q.n == 0 {
		c.lastRead = c.p.now() // as good as a read: see probeAfter
		return true
	}
	// Given back: to read what the socket holds, the replies of senders
	// that queued meanwhile, or to break the connection.
	c.clearForcedLocked()
	c.turn = turnReader
	c.wakeReader()
	if res == probeBroken {
		if c.failWith == nil {
			c.failWith = cause
		}
		c.mu.Unlock()
		<-c.dead
		c.mu.Lock()
	}
	return false
}

// pullTLSRecordLocked moves into wc's buffer a record that crypto/tls read
// from the socket along with the last reply: it hands bufio one record per
// Read, so a stray line (or a close_notify) that came in the same segment
// sits in the tls.Conn, where neither wc.Buffered nor the socket probe sees
// it. The read cannot wait (its deadline is past): a whole record already
// read is decrypted without a system call, anything else fails at once and
// consumes nothing (as greet's check does). It returns the connection's
// break if the read found one (a close_notify reads as EOF). Called with
// c.mu held by a caller claiming the turn: nobody else reads.
func (c *conn) pullTLSRecordLocked() error {
	_ = c.wc.SetReadDeadline(pastDeadline)
	_, err := c.wc.AwaitLine()
	_ = c.wc.SetReadDeadline(c.lingerUntil) // zero unless lingering
	if err != nil && (!errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, wire.ErrConnBroken)) {
		return err
	}
	return nil
}

// brokenWhileIdle reports whether an idle wait-pool connection that Acquire
// is about to hand out was closed by the server (or sent bytes nobody asked
// for) while its reader stood aside. puddle hands out the connection
// released last, the likeliest to be within its reader's quiet period, and
// a request on a connection found broken then could not go elsewhere
// (Conn.Do has no other connection), so Acquire looks first, as a caller
// claiming the turn does (claimTurnLocked: the same probe, which the
// request's own claim then skips for probeAfter).
func (c *conn) brokenWhileIdle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return true
	}
	if c.turn != turnNobody || c.q.n != 0 {
		return false // the reader reads: it would have seen a close
	}
	if c.claimTurnLocked() {
		// A late interrupt (an earlier caller's context.AfterFunc, or
		// the Lifetime's) may have found the turn ours during the probe:
		// its deadline must not meet the reader's next read.
		c.clearForcedLocked()
		c.turn = turnNobody
		if !c.aside {
			c.p.quiet.add(c) // the watch let it go while the turn was ours
		}
		return false
	}
	return c.err != nil
}

// errStrayBytes breaks a connection on which the server sent bytes while no
// request was pending.
var errStrayBytes = wire.LinelessProtocolError("bytes received with no request pending")

// errTLSRecord breaks a quiet TLS connection on which the server sent an
// application-data record. Under TLS 1.3 every record after the handshake
// is one, the close_notify before a server's FIN included, so this is not
// reported as a protocol violation (errStrayBytes): the record cannot be
// read without consuming it.
var errTLSRecord = errors.New("TLS record received on an idle connection (under TLS 1.3, likely the server's close_notify)")

// errTLSAlert breaks a quiet TLS connection on which the server sent an
// alert: a close_notify before its FIN, or a fatal error.
var errTLSAlert = errors.New("TLS alert received on an idle connection")

// probeAfter: a caller claiming the turn skips the probe if a reply was
// read this recently. The probe is a system call, as dear as a tenth of a
// loopback round trip, and a busy connection would pay it on every
// request; the price is that a close by the server within probeAfter of the
// last reply (rare: the server closes a busy connection when it shuts down
// or crashes, when requests are usually in flight anyway) fails the next
// request instead of sending it on another connection, as the reader,
// which saw such a close within microseconds, would have in most cases;
// and that a stray line the server writes on its own within probeAfter
// (a protocol violation) is taken for the next request's reply, as it
// always is when it comes after the request is sent. Stray bytes that
// came with the last reply are found anyway (claimTurnLocked).
const probeAfter = time.Millisecond

type probeResult uint8

const (
	probeQuiet  probeResult = iota // nothing to read
	probeData                      // something for the reader (a TLS handshake record), or unknown
	probeBroken                    // closed, or bytes nobody asked for
)

// readLoop is the connection's reader goroutine: it matches reply lines to
// calls in FIFO order until the connection breaks, except while callers read
// their own (readerTurn).
func (c *conn) readLoop() {
	defer c.p.io.Done()
	defer close(c.readerDone)
	c.readReplies()
	// Not deferred: a panic must not run it, as it waits for c.mu, which
	// the panicking frame may hold (the panic would hang, unseen).
	c.linger()
}

func (c *conn) readReplies() {
	// Callers may read only where pushes cannot come (a listener's reader
	// must see every push) and where a deadline can interrupt them (a
	// kernel socket; see writeInlineLocked for why only those).
	turns := c.raw != nil && c.onPush == nil
	more := false // the last reply left calls pending
	for {
		if turns && !more && !c.readerTurn() {
			return
		}
		line, err := c.wc.ReadLine()
		if err != nil {
			c.fail(err)
			return
		}
		if wire.IsPush(line) {
			if c.onPush == nil {
				continue // only listener connections listen
			}
			push, err := c.wc.ParsePush(line)
			if err != nil {
				c.fail(err)
				return
			}
			c.onPush(push)
			continue
		}
		c.mu.Lock()
		var cl *call
		if c.onWireLocked() > 0 {
			// Only a written request can be answered: with none on the
			// wire the line is unsolicited (a server's `error` as its
			// read timeout closes the connection, say), even while
			// requests wait in c.buf.
			cl = c.q.pop()
		}
		if cl != nil {
			// Before inflight falls: SettleLanes reads inflight, then
			// delivering.
			c.delivering.Add(1)
			c.answeredLocked(cl)
		}
		more = c.q.n > 0
		broken := c.err != nil
		var unsolicited error
		if cl == nil && !broken {
			unsolicited = c.unsolicitedLocked(line)
		}
		c.mu.Unlock()
		if cl == nil {
			if broken {
				// Read as fail emptied the queue: the line answers the
				// oldest call it took (and linger reads on, if the
				// connection lingers and the line parsed).
				c.orphanAnswered(line)
				return
			}
			c.fail(unsolicited)
			return
		}
		rep, err := c.wc.ParseReply(line, cl.cmd)
		if err != nil {
			c.fail(err)
			c.deliver(cl, wire.Reply{}, c.Err())
			c.delivering.Add(-1)
			return
		}
		c.deliver(cl, rep, nil)
		c.delivering.Add(-1)
	}
}

// readerExited reports whether readLoop has returned.
func (c *conn) readerExited() bool {
	select {
	case <-c.readerDone:
		return true
	default:
		return false
	}
}

// answeredLocked is the bookkeeping of a reply read for cl, just taken
// out of the queue, by the reader or by cl's caller.
func (c *conn) answeredLocked(cl *call) {
	now := c.p.now()
	c.lastRead = now
	c.matchedLines = c.wc.BytesConsumed()
	c.inflight.Add(-1)
	if cl.kind == callPing {
		c.pings--
	}
	if c.oneBatch {
		c.pace.answered(c.onWireLocked() == 0, now)
	}
	if len(c.buf) > 0 && !c.flushing && c.err == nil && c.mayWriteLocked() {
		// The last request written is answered: write those held back
		// (see mayWriteLocked).
		c.flushing = true
		c.p.io.Add(1)
		go c.flushFn()
	}
	if cl.blocking {
		c.blocking--
		// The server resumes its idle read deadline now.
		c.lastActive = now
	}
	if c.q.n > 0 {
		c.progress = now
		c.seenBytes = c.wc.BytesRead()
		c.seenLines = c.wc.BytesConsumed()
	}
	c.behindSince = 0
}

// readerTurn returns when the reader goroutine is to read the next line:
// calls are pending, or the connection has been quiet for watchDelay and is
// watched for the server closing it. Until then the reader parks, the turn
// is nobody's, so that the next caller of do reads its own reply, and the
// pool's quietWatch wakes the reader when the quiet is complete. It returns
// false once the connection is broken.
func (c *conn) readerTurn() bool {
	c.mu.Lock()
	for {
		if c.err != nil {
			if c.own == nil || c.lingerUntil.IsZero() {
				c.mu.Unlock()
				return false
			}
			// It lingers, and a caller reading its own reply is to hand
			// the socket on before the reader reads it (linger).
			c.mu.Unlock()
			<-c.wake
			c.mu.Lock()
			continue
		}
		if cause := c.failWith; cause != nil {
			c.mu.Unlock()
			c.fail(cause)
			return false
		}
		switch c.turn {
		case turnReader, turnNobody:
			if c.q.n > 0 || satAdd(c.lastActive, int64(watchDelay)) <= c.p.now() {
				c.turn = turnReader
				c.mu.Unlock()
				return true
			}
			c.turn = turnNobody
			if !c.aside {
				c.p.quiet.add(c)
			}
		case turnCaller:
			// The caller passes the turn on when it has its reply.
		}
		c.mu.Unlock()
		<-c.wake
		c.mu.Lock()
	}
}

// unsolicitedLocked is the error of line, read with no request on the
// wire: dflockd's goodbye to a connection idle past its read timeout, or a
// protocol violation. The connection was idle either because the server's
// read timeout is shorter than the keepalive allows for, or because this
// process wrote nothing for longer than its keepalive should have let it
// (paused: SIGSTOP, a frozen VM or laptop), which the advice of
// errIdleTimeout would not cure.
func (c *conn) unsolicitedLocked(line []byte) error {
	if string(line) == "error" {
		ka := c.p.cfg.KeepAlive
		if quiet := time.Duration(c.p.now() - c.lastActive); quiet > 2*ka {
			return fmt.Errorf("the server closed the connection as idle (an unsolicited `error`, as dflockd writes at its --read-timeout) "+
				"after this client wrote nothing for %v, more than twice its keepalive (%v): was this process paused?",
				quiet.Round(100*time.Millisecond), ka)
		}
		return errIdleTimeout
	}
	return &wire.ProtocolError{Line: truncLine(c.wc.Scrubbed(line)), Reason: errUnsolicited.Error()}
}

func truncLine(b []byte) string {
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

// deliver completes cl exactly once.
func (c *conn) deliver(cl *call, r wire.Reply, err error) {
	switch cl.kind {
	case callBatch:
		cl.cb(cl.idx, r, err)
	case callPing:
		c.pingDone(r, err)
	case callDiscard:
	case callWait:
		cl.reply, cl.err = r, err
		if cl.state.CompareAndSwap(stateWaiting, stateDelivered) {
			cl.done <- stateDelivered
			return // the waiter recycles cl
		}
		c.unclaimed(cl, r, err)
		if cl.state.Load() == stateEnded || cl.verdict != nil {
			// Its caller may not have taken the Lifetime's token yet:
			// recycled, the call would hand it to the next request.
			// Or the writer may still set its unsent (see
			// conn.writing). Left to the collector (this happens at
			// Close, or as a connection breaks, only).
			return
		}
	}
	putCall(cl)
}

// unclaimed handles the reply to a waiting call whose caller gave up: a
// request's late receives it, a try-acquire's grant is released.
func (c *conn) unclaimed(cl *call, r wire.Reply, err error) {
	switch {
	case cl.cb != nil:
		cl.cb(0, r, err) // request's late
	case err == nil && cl.key != "":
		c.releaseAbandoned(cl, &r)
	}
}

// releaseAbandoned releases a grant that arrived for a caller that gave up,
// on the same connection, without waiting for the answer. Only Pool.Do sets
// cl.key, and only for try-acquires: laneCheck refuses every other
// grant-carrying command on the lane.
func (c *conn) releaseAbandoned(cl *call, r *wire.Reply) {
	if r.Status != wire.StatusOK || r.Token == "" {
		return
	}
	if cl.cmd != wire.CmdLock && cl.cmd != wire.CmdSemLock {
		return
	}
	req := wire.ReleaseRequest(cl.key, r.Token, cl.cmd == wire.CmdSemLock)
	if framed(&req) != nil {
		return // the reply parser never yields a token with a line break
	}
	c.p.log.Debug("dflock: releasing a grant whose caller gave up", "key", cl.key)
	rel := getCall()
	rel.kind = callDiscard
	rel.cmd = req.Cmd
	if lost := c.p.cfg.OnReleaseLost; lost != nil {
		// A broken connection releases the grant only where the server
		// releases on disconnect: let the owner send it elsewhere.
		rel.kind = callBatch
		rel.cb = func(_ int, r wire.Reply, err error) {
			// The bare error: a paused server's read timeout may have
			// answered it unapplied (dflock's mayNotBeApplied).
			if err != nil || r.Status == wire.StatusError {
				lost(req)
			}
		}
	}
	c.mu.Lock()
	if err := c.err; err != nil {
		c.mu.Unlock()
		if rel.cb != nil {
			rel.cb(0, wire.Reply{}, err)
		}
		putCall(rel)
		return
	}
	c.enqueueLocked(&req, rel, false)
	// c.err == nil under c.mu, so the reader (this goroutine) is still
	// running and counted in p.io.
	c.startFlushLocked()
}

// grantKeyOf is the key of a request that can be answered with a grant
// (see call.grantKey), or "".
func grantKeyOf(req *wire.Request) string {
	switch req.Cmd {
	case wire.CmdLock, wire.CmdSemLock, wire.CmdEnqueue, wire.CmdSemEnqueue, wire.CmdWait, wire.CmdSemWait:
		return req.Key
	}
	return ""
}

// grantLost hands a grant read for a request (cmd, key: see call.grantKey)
// whose caller got the connection's error instead — the connection broke
// between the read and its delivery — to Config.OnReleaseLost, as
// releaseAbandoned does for a grant it cannot send back: on a server with
// auto-release off it is held by nobody otherwise.
func (c *conn) grantLost(cmd wire.Command, key string, r wire.Reply) {
	lost := c.p.cfg.OnReleaseLost
	if lost == nil || key == "" || r.Token == "" ||
		(r.Status != wire.StatusOK && r.Status != wire.StatusAcquired) {
		return
	}
	sem := cmd == wire.CmdSemLock || cmd == wire.CmdSemEnqueue || cmd == wire.CmdSemWait
	req := wire.ReleaseRequest(key, r.Token, sem)
	if framed(&req) != nil {
		return
	}
	lost(req)
}
