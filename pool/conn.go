package pool

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dflock-sdk/go/wire"
)

// conn is the one framed, pipelined connection under every role (laneConn,
// Conn, ListenerConn). Any number of goroutines may send on it; their
// requests are coalesced into as few writes as possible and replies are
// matched in FIFO order by one reader goroutine. What differs between roles
// — who may send what, what a cancelled caller does to the connection, who
// is told of a break — lives in the role types, not here.
//
// Writing uses leader-based flushing with no idle goroutine per
// connection: a sender encodes its request into the shared buffer under the
// mutex; if no flush is in progress it starts a short-lived flush goroutine,
// which yields the processor once (so that senders already runnable append
// first), swaps the buffer out and writes it outside the lock (bounded by
// Config.writeTimeout for each 16 KiB: writeChunk), looping while other
// senders appended more in the meantime, and exits. Concurrent senders
// therefore coalesce into one write.
// A caller never waits for a write that may block: it waits for its reply or
// for its context, so a caller whose request is stuck in a write to a server
// that stopped reading returns when its context ends. The write itself goes
// on and breaks the connection only if writeTimeout passes (the connection is
// then genuinely stalled). The one exception proves it cannot block: a
// sender (do, sendBatch) on an idle kernel socket writes its own requests
// (writeInlineLocked), sparing the flush goroutine's start and yield. A lane
// connection (oneBatch) has at most one batch in flight while the round trip
// is short: it writes nothing while a request it wrote is unanswered, and
// whoever reads that reply starts the flush of what was held back (batchPace
// says why and when).
//
// Replies are matched against a FIFO ring of pending calls, by the
// connection's reader goroutine or, on a lane or wait-pool connection, by a
// caller reading its own reply: a caller of do whose request is the only
// one pending while the reader stands aside (see readerTurn) reads the reply
// on its own goroutine, as a hand-written blocking client would, sparing the
// reader's wake-up and the hand-off of the reply. A caller whose context
// ends stops waiting at once even then: a forced read deadline interrupts
// its wait for the first byte (wire.Conn.AwaitLine, which consumes nothing
// and so leaves the stream in step), and the reader takes over. Call objects
// are recycled (sync.Pool), so a round trip allocates nothing beyond the
// strings of the parsed reply.
type conn struct {
	p  *Pool
	wc *wire.Conn

	// Set before the reader starts, never changed. onPush receives the
	// `sig` lines (nil drops them); onBroken, if set, is called once after
	// the connection broke, after Config.OnConnBroken.
	onPush   func(wire.Push)
	onBroken func(error)
	// quiet: the connection's end is not reported (Config.OnConnBroken,
	// Stats.Broken): it carries a single request (Pool.Query) and ends
	// when that is answered.
	quiet bool
	// retired: an idle wait-pool connection the janitor closed (Config.
	// MaxIdleConns, MaxConnIdleTime). Not a break: like quiet, its end is
	// not reported; it owned nothing and nobody was using it.
	retired atomic.Bool

	flushFn func() // c.flush, bound once so that starting it allocates nothing
	// inline: a caller may write its request itself when the connection is
	// idle (see writeInlineLocked); set for kernel sockets only.
	inline bool
	// own is the call whose caller reads its reply itself (readOwn), while
	// the turn is that caller's; nil otherwise.
	own *call
	// beforeInlineWrite, if set (tests only, under mu), runs on the caller
	// that is about to write inline, before it takes the buffer.
	beforeInlineWrite func()
	// beforeProbe, if set (tests only, under mu), runs on a caller that
	// claimed the turn, without mu, just before it probes the socket.
	beforeProbe func()
	// afterRequestSent, if set (tests only, before the first request), runs
	// on a caller of request right after its request was queued.
	afterRequestSent func()

	// oneBatch: a write waits until every request written before it is
	// answered, unless the round trip is long for that (lane connections;
	// see batchPace).
	oneBatch bool

	mu   sync.Mutex
	buf  []byte // encoded requests not yet taken by a flusher
	bufN int    // requests in buf (the rest of q is written: onWireLocked)
	// pruneAt is the bufN at which a lane drops the unwritten requests
	// of callers that gave up (pruneAbandonedLocked); 0 is minPrune.
	pruneAt  int
	pace     batchPace
	spare    []byte // the other buffer of the swap
	flushing bool
	// writing is how many requests the write in progress took (the
	// newest written ones of q). A fail meanwhile cannot tell whether any
	// byte of them left; it gives their waiting callers verdict, which
	// the writer closes once it knows (undecided: those calls).
	writing    int
	verdict    chan struct{}
	undecided  []*call
	q          callQueue // calls waiting for a reply, in send order
	blocking   int       // blocking requests queued or in flight
	pings      int       // keepalive pings queued or in flight (pendingNotPing)
	lastActive int64     // p.now() of the last write or blocking reply
	progress   int64     // p.now() when the queue became non-empty, a write found nothing unanswered, or a reply came
	lastRead   int64     // p.now() of the last reply read, or of a probe that found the socket quiet
	seenBytes  int64     // wc.BytesRead() at the keepalive's last look (under mu)
	seenLines  int64     // wc.BytesConsumed() then (under mu)
	// matchedLines is wc.BytesConsumed() when the last reply was matched
	// to its call (answeredLocked; under mu): a line read after it that
	// is not a push (see onPush) is a reply its reader has yet to match.
	matchedLines int64
	err          error // sticky; set once, under mu
	owner        Owner // the lease owner this connection serves now (for OnConnBroken); nil if none
	// behindSince is the p.now() at which the keepalive, about to break
	// the connection, first found this process behind on it: requests not
	// written yet, or replies waiting unread in its socket (behindGrace);
	// 0 once a reply has been read or a write made since (under mu).
	behindSince int64
	// holdsPlace: a two-phase ticket's place is queued here, and the
	// keepalive does not break the connection (Conn.HoldPlace).
	holdsPlace atomic.Bool
	// orphans are requests fail took out of q, oldest first, whose
	// replies may still be read: a grant among them goes to
	// Config.OnReleaseLost (grantLost). When the socket closes at once it
	// is the oldest alone, if it can be answered with a grant (a reply
	// the reader had already begun to read answers it); while the
	// connection lingers, every request that had been written. Taken
	// by the reader, or by the caller reading its own reply.
	orphans []orphan
	// orphansWriting is how many requests the write fail found under way
	// took (writing), while the connection lingers: the newest orphans are
	// those of them not answered yet, and the writer takes those that did
	// not reach the server out of orphans (dropUnsentOrphansLocked). The
	// first of the write's requests may have been answered before the cut:
	// they count here, as they do in what the write sent.
	orphansWriting int
	// lingerUntil is set (once, by fail) if the connection lingers: see
	// linger. stopLinger then unregisters the pool's Close from closing
	// the socket (set with it; linger calls it).
	lingerUntil time.Time
	stopLinger  func() bool
	// lingerClosed is closed once the pool's Close has closed the socket
	// of a lingering connection (see lingersLocked).
	lingerClosed chan struct{}

	// Who reads the next reply (under mu; see readerTurn): the reader
	// goroutine (the zero value, and always on a connection whose callers
	// never read), nobody (the reader is parked: the connection was busy a
	// moment ago, so the next caller reads its own reply), or a caller.
	turn turn
	// failWith: a caller reading its own reply found the connection
	// broken (or its reply malformed); the reader fails it with this cause.
	failWith error
	// forced: interruptRead set a read deadline in the past to stop a
	// caller's wait; cleared (and the deadline with it) before anyone
	// reads again.
	forced bool
	// aside: the reader is parked and the pool's quietWatch is to resume
	// it once the connection is quiet.
	aside bool
	wake  chan struct{} // cap 1: the reader's turn came, or the connection broke
	// interruptFn is c.interruptRead, bound once so that a caller's
	// context.AfterFunc allocates no closure for it.
	interruptFn func()
	dead        chan struct{} // closed when the connection breaks
	readerDone  chan struct{} // closed when readLoop returns

	// The socket, probed by a caller about to read its own reply (nil:
	// callers never do); peekFn is c.peekSocket, bound once, and the
	// peek fields its results (used only by the caller holding the turn).
	raw     syscall.RawConn
	peekFn  func(fd uintptr) bool
	peekBuf [1]byte
	peekN   int
	peekErr error
	tls     bool // the socket carries TLS records

	errp     atomic.Pointer[ServerError] // lock-free mirror of err
	inflight atomic.Int32                // len(q), for lane choice and Release
	// delivering counts answers the reader took out of q and has not yet
	// delivered: a delivery may queue a request (releaseAbandoned) or a
	// background release (a late callback), so SettleLanes waits for it
	// as for inflight.
	delivering atomic.Int32
	ping       atomic.Uint32 // pingUnknown, pingOK, pingUnsupported
	nreq       atomic.Int64
	nwrite     atomic.Int64
	pruned     atomic.Int64 // requests pruneAbandonedLocked dropped (read by tests)
}

// newConn wraps a handshaken connection; the caller sets its hooks and
// registers it.
func (p *Pool) newConn(wc *wire.Conn, ping uint32) *conn {
	c := &conn{p: p, wc: wc, lastActive: p.now(), inline: kernelSocket(wc.NetConn()),
		matchedLines: wc.BytesConsumed(),
		wake:         make(chan struct{}, 1), dead: make(chan struct{}), readerDone: make(chan struct{})}
	c.flushFn = c.flush
	c.interruptFn = c.interruptRead
	if c.inline {
		c.raw = rawSocket(wc.NetConn())
		c.peekFn = c.peekSocket
		_, c.tls = wc.NetConn().(*tls.Conn)
	}
	c.ping.Store(ping)
	return c
}

// kernelSocket reports whether nc (under TLS, its transport) is a socket of
// the kernel's, whose write into an empty send buffer returns at once.
func kernelSocket(nc net.Conn) bool {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	switch nc.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	}
	return false
}

const (
	pingUnknown uint32 = iota
	pingOK
	pingUnsupported
)

// maxKeepBuf bounds the write buffers a conn keeps between flushes.
const maxKeepBuf = 64 << 10

var pingReq = wire.Request{Cmd: wire.CmdPing}

// do sends req and waits for its reply or for ctx. sent is false if nothing
// was sent (context already done, connection already broken, request
// refused by framed) or the connection broke before any byte of the request
// was written (a reset the reader had not yet seen as the request went out).
// abandoned is true if ctx ended first: the reply will still be read (and,
// if grantKey is set and the reply is a grant, released at once on this
// connection); what else to do about the abandoned exchange is the caller's
// decision.
//
// The wait also ends when the pool's Config.Lifetime does (the error then
// matches ErrClosed unless ctx has ended too).
func (c *conn) do(ctx context.Context, req *wire.Request, grantKey string) (_ wire.Reply, sent, abandoned bool, _ error) {
	if err := ctx.Err(); err != nil {
		return wire.Reply{}, false, false, serverErr(c.p.cfg.Addr, err, nil)
	}
	cl := getCall()
	cl.kind = callWait
	cl.cmd = req.Cmd
	cl.blocking = req.Blocking()
	cl.key = grantKey
	cl.grantKey = grantKeyOf(req)
	reads, unwritten, err := c.send(req, cl)
	if err != nil {
		putCall(cl)
		return wire.Reply{}, false, false, err
	}
	r, abandoned, unsent, err := c.await(ctx, cl, reads)
	return r, !unwritten && !unsent, abandoned, err
}

// request is do for a request that must reach the server even if ctx has
// already ended (a release: its lease is no longer renewed, so a release
// never sent would hold the lock until its TTL). It is sent unless the
// connection is broken or framed refuses it, and never blocks on the
// network. answered reports that r and err are the outcome; otherwise ctx
// (or the pool's Lifetime) ended first, err says so, and late receives the
// outcome later, exactly once, from the reader goroutine (or from whoever
// breaks the connection). late must not block.
func (c *conn) request(ctx context.Context, req *wire.Request, late func(i int, r wire.Reply, err error)) (r wire.Reply, answered bool, err error) {
	cl := getCall()
	cl.kind = callWait
	cl.cmd = req.Cmd
	cl.blocking = req.Blocking()
	cl.cb = late
	cl.grantKey = grantKeyOf(req)
	ended := ctx.Err()
	if ended != nil {
		// An ended ctx reports so at once, whatever the timing: the
		// reader hands the answer to late, as to a batch's callback, and
		// the caller neither reads it nor waits (waiting, it would take
		// a reply that came back before it looked as answered).
		cl.kind = callBatch
	}
	reads, _, err := c.send(req, cl)
	if err != nil {
		putCall(cl)
		return wire.Reply{}, true, err
	}
	if c.afterRequestSent != nil {
		c.afterRequestSent()
	}
	if ended != nil {
		return wire.Reply{}, false, serverErr(c.p.cfg.Addr, ended, nil)
	}
	r, abandoned, _, err := c.await(ctx, cl, reads)
	return r, !abandoned, err
}

// await waits for the reply to cl, which send queued; reads is send's
// verdict that this caller reads it itself. abandoned is true if ctx or the
// pool's Lifetime ended first: the reader then owns cl and handles the
// reply without the caller (deliver). unsent reports that the connection
// broke before any byte of cl's request was written.
func (c *conn) await(ctx context.Context, cl *call, reads bool) (_ wire.Reply, abandoned, unsent bool, _ error) {
	if reads {
		if r, err, ok := c.readOwn(ctx, cl); ok {
			return r, false, false, err
		}
		// The reader has the turn now; wait like any other caller.
	}
	s := stateWaiting
	if ctx.Err() == nil && !c.p.ended.Load() {
		// The pool's Lifetime ends this wait through cl.done too
		// (endWaits), so that the waiting callers do not all queue on
		// its one channel: a receive on a channel of the caller's own
		// costs far less than a select over a shared one, whose lock
		// every waiter takes twice.
		if d := ctx.Done(); d == nil || d == c.p.lifeDone {
			s = <-cl.done
		} else {
			select {
			case s = <-cl.done:
			case <-d:
			}
		}
	}
	if s == stateWaiting && !cl.state.CompareAndSwap(stateWaiting, stateAbandoned) {
		s = <-cl.done // the reply, or the Lifetime, won the race: its token
	}
	if s != stateDelivered {
		// From here the reader owns cl: this caller gave up, or the
		// pool's Lifetime gave up for it.
		if err := ctx.Err(); err != nil {
			return wire.Reply{}, true, false, serverErr(c.p.cfg.Addr, err, nil)
		}
		return wire.Reply{}, true, false, serverErr(c.p.cfg.Addr, ErrClosed, nil)
	}
	if v := cl.verdict; v != nil {
		// The connection broke while a write that took cl was under way:
		// wait for the writer to say whether it left (the write returns
		// soon: the socket is closed, or its write deadline comes).
		select {
		case <-v:
		case <-ctx.Done():
			// The writer may still set cl.unsent: cl is left to the
			// collector, not recycled. Taken as sent: not sent again.
			return cl.reply, false, false, cl.err
		}
	}
	unsent = cl.unsent
	r, err := cl.result()
	return r, false, unsent, err
}

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
	if d := ctx.Done(); d != nil && d != c.p.lifeDone {
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
			line, err := c.wc.ReadLine() // buffered whole: does not wait
			if err == nil && wire.IsPush(line) {
				continue // lane and wait-pool connections listen to nothing
			}
			if err == nil {
				if stop != nil {
					stop()
				}
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

// endWaits ends, when the pool's Lifetime ends, the waits of the callers
// waiting for the reader to deliver their replies (await), as their own
// ctx would: each call still waiting is abandoned to the reader. The caller
// reading its own reply (c.own) is left to interruptRead. (Not simply the
// head of the queue while the turn is a caller's: while a caller claiming
// the turn probes the socket, its request is not queued yet, and the head
// is another caller's, waiting for the reader.)
func (c *conn) endWaits() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return // fail delivered every call
	}
	for i := 0; i < c.q.n; i++ {
		cl := c.q.at(i)
		if cl != c.own && cl.kind == callWait && cl.state.CompareAndSwap(stateWaiting, stateEnded) {
			cl.done <- stateEnded // cap 1, and nobody else sends now
		}
	}
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

// sendBatch writes reqs in one write (coalesced with concurrent senders) and
// calls done once per request, in order, from the reader goroutine (or with
// an error if the connection breaks). Requests refused by the framing check
// are not sent: done reports their error synchronously, before sendBatch
// returns and before the replies to the others; so does every request if
// the connection is already broken. It never blocks on the network: it
// writes on the caller's goroutine only into an empty send buffer
// (writeInlineLocked), and otherwise leaves the write to the flush
// goroutine.
func (c *conn) sendBatch(reqs []wire.Request, done func(i int, r wire.Reply, err error)) {
	bad := false
	for i := range reqs {
		if err := framed(&reqs[i]); err != nil {
			bad = true
			done(i, wire.Reply{}, err)
		}
	}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		for i := range reqs {
			if !bad || framed(&reqs[i]) == nil {
				done(i, wire.Reply{}, err)
			}
		}
		return
	}
	idle := c.idleLocked()
	n := 0
	for i := range reqs {
		req := &reqs[i]
		if bad && framed(req) != nil {
			continue
		}
		cl := getCall()
		cl.kind = callBatch
		cl.cmd = req.Cmd
		cl.blocking = req.Blocking()
		cl.cb = done
		cl.idx = i
		cl.grantKey = grantKeyOf(req) // a ticket's withdrawing w, say
		c.enqueueLocked(req, cl, false)
		n++
	}
	if n == 0 {
		c.mu.Unlock()
		return
	}
	// The renewal scheduler calls sendBatch from its one goroutine for every
	// owner in turn: it must never block on a socket whose send buffer is
	// full (a blackholed server), or every other lease's renewal would wait
	// behind it. writeInlineLocked writes only into an empty send buffer;
	// startFlushLocked writes on the flush goroutine (c.err == nil under
	// c.mu, so the reader is still running and counted in p.io).
	if idle {
		c.writeInlineLocked(true)
		return
	}
	c.startFlushLocked()
}

// framed is the one check a request gets again below package dflock, which
// validates every request once, at its API boundary. It is the cheap check
// that protects the connection itself: a line break inside a field would
// make the server read extra requests and answer them, and every later
// reply on the connection would be matched to the wrong caller — on a lane
// connection, callers that have nothing to do with the bad request.
// Anything else a server refuses costs only that request's answer.
func framed(req *wire.Request) error {
	for _, f := range [...]struct{ name, v string }{{"key", req.Key}, {"token", req.Token}, {"arg", req.Arg}} {
		if strings.IndexByte(f.v, '\n') >= 0 {
			return &wire.ArgError{Arg: f.name, Reason: "contains a line break, which would desynchronise the connection"}
		}
	}
	return nil
}

// Err is nil while the connection is usable; afterwards the sticky error.
func (c *conn) Err() error {
	if e := c.errp.Load(); e != nil {
		return e
	}
	return nil
}

// setOwner records the lease owner the connection serves from now on (nil:
// none), reported to Config.OnConnBroken if it breaks.
func (c *conn) setOwner(o Owner) {
	c.mu.Lock()
	c.owner = o
	c.mu.Unlock()
}

// send enqueues one request and starts a flush (or leaves it to the flush
// in progress). It never blocks on the network: the caller then waits for
// the reply or its context, whichever comes first. reads is true if the
// caller is to read the reply itself (enqueueLocked). unwritten is true if
// the caller wrote the request itself and the write failed before any byte
// left (the call is queued all the same, and gets the connection's error).
func (c *conn) send(req *wire.Request, cl *call) (reads, unwritten bool, _ error) {
	if err := framed(req); err != nil {
		return false, false, err
	}
	c.mu.Lock()
	claimed := false
	if c.err == nil && c.turn == turnNobody && c.q.n == 0 && cl.kind == callWait {
		claimed = c.claimTurnLocked()
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return false, false, err
	}
	idle := c.idleLocked()
	reads = c.enqueueLocked(req, cl, claimed)
	if idle {
		// A caller that claimed the turn found its connection quiet:
		// unless the other lanes are busy, nobody is likely to join its
		// write, and it does not yield for them (see writeInlineLocked).
		unwritten = c.writeInlineLocked(!reads || c.p.lanesBusy(c))
		return reads, unwritten, nil
	}
	// c.err == nil under c.mu: the reader is still running and counted in
	// p.io, so the flush goroutine may be counted too.
	c.startFlushLocked()
	return reads, false, nil
}

// idleLocked reports whether the next sender may write inline: a kernel
// socket with no write in progress and every request written so far
// answered. It is checked before the sender enqueues.
func (c *conn) idleLocked() bool {
	return c.inline && c.q.n == 0 && !c.flushing
}

// maxInlineWrite bounds what a caller writes on its own goroutine: far below
// the smallest send buffer a kernel socket has (Linux: 4608 bytes), so that
// an empty send buffer takes it whole. Lane requests are at most 3·257
// bytes.
const maxInlineWrite = 2048

// writeInlineLocked writes the buffer on the caller's goroutine, sparing the
// two goroutine switches of a flush (start, yield) on an idle connection. It
// is called with c.mu held, c.err == nil, no flush in progress and every
// earlier request answered, and returns with c.mu released.
//
// Why this cannot hold the caller past its context, although a write may
// block: every byte written before was answered, so the server (and any
// proxy on the way) has read it, and the acknowledgement of it arrived with
// the reply, before the reply was read. The socket's send buffer is
// therefore empty and takes a write of maxInlineWrite bytes without waiting.
// That argument needs a kernel socket, whence c.inline; any other net.Conn
// (a user's wrapper may throttle) always goes through the flush goroutine.
//
// The caller is the writer for the time of the write (c.flushing), so
// concurrent senders append to c.buf meanwhile and are written together by
// the flush goroutine afterwards, without a write of their own each; they
// could not write inline anyway, since this request is unanswered.
//
// unwritten reports that the write failed before any byte of it left: the
// sender's own request, which it holds, never reached the server. (The
// other callers hear it through call.unsent: from fail, or, when the reader
// failed the connection while the write was under way, from the writer,
// which alone knows what it wrote; see conn.writing.)
func (c *conn) writeInlineLocked(yield bool) (unwritten bool) {
	c.flushing = true
	hook := c.beforeInlineWrite
	c.mu.Unlock()
	if hook != nil {
		hook()
	}
	if yield {
		// As the flush goroutine does: senders runnable now append to
		// this write rather than queue behind it for a write of their
		// own. (The yield is not free: it wakes another thread to look
		// for work.)
		runtime.Gosched()
	}
	c.mu.Lock()
	if c.err != nil {
		c.flushing = false
		c.mu.Unlock()
		return false // fail delivered the error to every queued call, as unsent
	}
	if len(c.buf) > maxInlineWrite {
		// Too much to be sure the send buffer takes it at once.
		c.p.io.Add(1)
		c.mu.Unlock()
		go c.flushFn()
		return false
	}
	now, n, err := c.writeQueuedLocked()
	if err != nil {
		// The failed write broke the wire.Conn, which interrupts the
		// reader's read at once; the reader fails the connection (and
		// this call, which is queued) with the write's error. Failing it
		// here would run the pool's OnConnBroken on the sender, which
		// may be the renewal scheduler.
		c.flushing = false
		c.mu.Unlock()
		return n == 0
	}
	c.lastActive = now
	if len(c.buf) > 0 && c.err == nil && c.mayWriteLocked() {
		// Senders joined during the write: the flush goroutine takes
		// over (c.flushing stays set). c.err == nil under c.mu, so the
		// reader is still counted in p.io.
		c.p.io.Add(1)
		c.mu.Unlock()
		go c.flushFn()
		return false
	}
	c.flushing = false
	c.mu.Unlock()
	return false
}

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
var errStrayBytes = &wire.ProtocolError{Reason: "bytes received with no request pending"}

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

// enqueueLocked encodes req (checked by framed) into the write buffer and
// queues cl for its reply. claimed is claimTurnLocked's verdict for cl's
// caller: with it, cl (then alone in the queue) is read by its caller
// (reads). Otherwise, if the reader stands aside (turnNobody), the turn
// goes back to the reader, which is woken.
func (c *conn) enqueueLocked(req *wire.Request, cl *call, claimed bool) (reads bool) {
	if c.q.n == 0 {
		c.progress = c.p.now()
		c.behindSince = 0
		// Bytes read before this request are no progress on it.
		c.seenBytes = c.wc.BytesRead()
		c.seenLines = c.wc.BytesConsumed()
	}
	if c.oneBatch && c.bufN >= max(c.pruneAt, minPrune) {
		c.pruneAbandonedLocked()
		c.pruneAt = 2 * c.bufN
	}
	c.buf = req.AppendTo(c.buf)
	c.bufN++
	c.q.push(cl)
	c.inflight.Add(1)
	if cl.kind == callPing {
		c.pings++
	}
	if cl.blocking {
		c.blocking++
	}
	c.nreq.Add(1)
	if claimed {
		c.own = cl
		return true
	}
	if c.turn == turnNobody {
		c.turn = turnReader
		c.wakeReader()
	}
	return false
}

// startFlushLocked is called with c.mu held and c.err == nil, and returns with
// c.mu released. If a flush is in progress the data just appended rides on
// its next write; otherwise it starts the flush goroutine. It never blocks on
// the network, so every sender may call it: callers of do (which then wait
// for their reply or their context), the reader goroutine (releasing an
// abandoned grant), the renewal scheduler (sendBatch) and the janitor
// (keepalive pings), none of which may stall behind a socket whose send
// buffer is full.
//
// c.err == nil under c.mu means that the reader goroutine has not yet failed
// the connection and so is still counted in p.io; the flush goroutine is
// added to p.conns here, under c.mu, so that Pool.Close waits for it too.
func (c *conn) startFlushLocked() {
	if c.flushing || !c.mayWriteLocked() {
		c.mu.Unlock()
		return
	}
	c.flushing = true
	c.p.io.Add(1)
	c.mu.Unlock()
	go c.flushFn()
}

// mayWriteLocked reports whether the requests in c.buf may be written now.
// A oneBatch connection writes nothing while a request it wrote is
// unanswered, unless its pace finds the round trip too long for that (see
// batchPace for why); answeredLocked starts the flush of what was held back.
func (c *conn) mayWriteLocked() bool {
	return !c.oneBatch || c.onWireLocked() == 0 || c.pace.pipelining(c.p.now())
}

// onWireLocked is the number of requests written and not yet answered.
func (c *conn) onWireLocked() int { return c.q.n - c.bufN }

// minPrune is the backlog of unwritten requests at which a lane first
// looks for requests to drop (pruneAbandonedLocked); it then looks again
// each time the backlog has doubled, so the scans cost O(1) per request.
const minPrune = 1024

// pruneAbandonedLocked drops from a lane's unwritten requests those whose
// caller gave up and whose sending nobody needs: try-acquires, Emits and
// pings sent with Do. A lane writes nothing while a write is unanswered,
// so while a server makes no progress (a partition, a paused process)
// every request queues in c.buf until the keepalive cuts the connection:
// callers with short deadlines, each of whom gets its context's error at
// once, would otherwise grow the queue without bound (hundreds of
// megabytes in the keepalive's 20 s) and, if the server came back before
// the cut, flood it with requests nobody waits for (grants released at
// once, each costing the server a key). Releases and renewals stay: they
// must reach the server whether or not anyone waits for their answer
// (they carry a callback, or their caller waits).
//
// The unwritten requests are the newest bufN calls of q, encoded in order
// in c.buf, three lines each (wire.CountRequests). A write that failed
// leaves the two out of step until fail runs; then nothing is dropped.
func (c *conn) pruneAbandonedLocked() {
	first := c.q.n - c.bufN
	found := false
	for i := first; i < c.q.n && !found; i++ {
		found = c.droppableLocked(c.q.at(i))
	}
	if !found || c.err != nil || wire.CountRequests(c.buf) != c.bufN {
		return
	}
	// Compact c.buf and q's tail in place, keeping order. A caller may
	// give up meanwhile (its state is not under c.mu): each call is
	// judged once, here.
	out, kept := 0, first
	for i, start := first, 0; i < c.q.n; i++ {
		end := start
		for range 3 {
			end += bytes.IndexByte(c.buf[end:], '\n') + 1
		}
		if cl := c.q.at(i); c.droppableLocked(cl) {
			putCall(cl)
		} else {
			out += copy(c.buf[out:], c.buf[start:end])
			c.q.set(kept, cl)
			kept++
		}
		start = end
	}
	dropped := c.q.n - kept
	c.q.truncate(kept)
	c.buf = c.buf[:out]
	c.bufN -= dropped
	c.inflight.Add(int32(-dropped))
	c.nreq.Add(int64(-dropped))
	c.pruned.Add(int64(dropped))
}

// droppableLocked reports whether pruneAbandonedLocked may drop cl, an
// unwritten call: its caller gave up (its state can change no more), and
// neither the caller nor a callback needs its request sent.
func (c *conn) droppableLocked(cl *call) bool {
	if cl.kind != callWait || cl.cb != nil || cl == c.own || cl.state.Load() != stateAbandoned {
		return false
	}
	switch cl.cmd {
	case wire.CmdLock, wire.CmdSemLock, wire.CmdSignal, wire.CmdPing:
		return !cl.blocking
	}
	return false
}

// flush is the flush goroutine (c.flushFn): it writes what senders have
// queued, looping until the buffer stays empty, then exits.
func (c *conn) flush() {
	defer c.p.io.Done()
	// Yield once before the first write so that senders that are runnable
	// right now (typically woken by the reader's last replies) append to
	// this write instead of each starting their own. Measured with 64
	// goroutines on one lane (BenchmarkLaneDo, 2 CPUs): ~16 requests per
	// write, ~26 since a lane holds writes back while one is unanswered;
	// a lone caller pays a goroutine start (BenchmarkLaneDoSerial).
	runtime.Gosched()
	c.mu.Lock()
	for len(c.buf) > 0 && c.mayWriteLocked() {
		now, _, err := c.writeQueuedLocked()
		if err != nil {
			c.flushing = false
			c.mu.Unlock()
			c.fail(err)
			return
		}
		c.lastActive = now
	}
	c.flushing = false
	c.mu.Unlock()
}

// writeQueuedLocked writes what senders have queued in c.buf. c.mu is
// held on entry and on return but not during the write: the buffers swap,
// so senders keep appending to the other one meanwhile, and the written one
// is kept as the next spare unless it grew past maxKeepBuf. n is what the
// write reports written: with an error and n == 0 none of the requests in
// b reached the server.
func (c *conn) writeQueuedLocked() (now int64, n int, err error) {
	b := c.buf
	c.buf = c.spare[:0]
	c.spare = nil
	idle, now := c.onWireLocked() == 0, c.p.now()
	if idle {
		// The server owes nothing before this write: requests that
		// waited for it (held back, or their flusher starved of CPU)
		// have gone unanswered only from now.
		c.progress, c.behindSince = max(c.progress, now), 0
	}
	if c.oneBatch {
		c.pace.wrote(idle, now)
	}
	inB := c.bufN
	c.bufN = 0
	c.pruneAt = 0
	c.writing = inB
	c.mu.Unlock()
	now, n, err = c.write(b)
	c.mu.Lock()
	c.writing = 0
	if c.orphansWriting > 0 {
		c.dropUnsentOrphansLocked(wire.CountRequests(b[:n]))
	}
	if c.verdict != nil {
		// fail came first and could not tell: only this write knows
		// whether any byte of b left.
		if n == 0 {
			for _, cl := range c.undecided {
				cl.unsent = true
			}
		}
		close(c.verdict)
		clear(c.undecided)
		c.verdict, c.undecided = nil, c.undecided[:0]
	}
	if err != nil && n == 0 && c.err == nil {
		// Nothing of b left (a reset the reader has not seen yet, say):
		// its requests count as unwritten again, for fail to tell their
		// callers so (call.unsent). They are the oldest of those still
		// unwritten: later senders appended to the other buffer.
		c.bufN += inB
		if c.bufN > c.q.n {
			// A line read during the write was matched to one of b's
			// requests, which never left: it answered nothing. Every
			// call still queued is unwritten, and the connection is
			// desynchronised (the reader breaks it).
			c.bufN = c.q.n
			c.desyncedLocked(&wire.ProtocolError{Reason: errUnsolicited.Error()})
		}
	}
	if cap(b) <= maxKeepBuf {
		c.spare = b[:0]
	}
	return now, n, err
}

// writeChunk is the most one deadline covers: writeTimeout breaks a
// connection whose write makes no progress, not one whose large write (a
// re-listen of thousands of patterns, a burst of long Emits, a renewal
// round of thousands of leases) a server reads steadily over a slow link.
// A write of 530 KB to a server reading 45 KB/s was cut at 5 s on every
// connection, over and over. One TLS record's worth: crypto/tls cannot
// resume a write that timed out, so no chunk may.
const writeChunk = 16 << 10

func (c *conn) write(b []byte) (now int64, n int, err error) {
	t := time.Now()
	// Counted before writing: the replies (and a caller reading Stats
	// after them) may come before WriteRaw returns.
	c.nwrite.Add(1)
	for start := t; ; start = time.Now() {
		// Set before each WriteRaw, which checks EndWrites after it: a cut
		// (lingersLocked) either ends writes before this deadline is set,
		// or sets its own past deadline after it.
		_ = c.wc.SetWriteDeadline(start.Add(c.p.cfg.writeTimeout))
		var k int
		k, err = c.wc.WriteRaw(b[n:min(len(b), n+writeChunk)])
		n += k
		if err != nil || n == len(b) {
			return int64(t.Sub(c.p.start)), n, err
		}
	}
}

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

// lingerFor bounds how long a connection the keepalive broke stays open
// for the replies to what it had written (see linger).
const lingerFor = time.Minute

// withdrawLingerFor bounds how long a connection Conn.Withdraw half-closed
// stays open for the answer to its wait. What it waits for is a grant the
// server wrote before it saw the half-close, so within a round trip of it;
// dflockd v1.15+ closes its side as soon as it sees it. v1.14 sees nothing
// until the wait ends, and its waiter stays queued whatever the client
// does (docs/leases.md): the bound caps what that costs here.
const withdrawLingerFor = 2 * time.Second

// halfCloser returns what shuts the write side of nc's socket (under TLS,
// of its transport's), or nil if nc has no such thing. Under TLS no
// close_notify is sent: tls.Conn.CloseWrite may wait for a writer, and
// Conn.Withdraw must not; the server's TLS layer reads the transport's end
// as an error, which ends a blocked wait as an end of stream does.
func halfCloser(nc net.Conn) interface{ CloseWrite() error } {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	hc, _ := nc.(interface{ CloseWrite() error })
	return hc
}

// shutWrite shuts the write side of a connection that lingers to withdraw a
// blocked wait (Conn.Withdraw), or closes it if that fails: the server
// withdraws the waiter of a peer it sees gone, and what it wrote before
// that is still read.
func (c *conn) shutWrite() {
	if err := halfCloser(c.wc.NetConn()).CloseWrite(); err != nil {
		_ = c.wc.Close()
	}
}

// linger keeps reading a connection the keepalive broke, or that
// Conn.Withdraw half-closed (see fail), after its callers got the error,
// until the replies to every request it had written are read or
// lingerUntil passes, and hands a grant among them to
// Config.OnReleaseLost; then it closes the socket. The server was only
// slow, perhaps: paused, it reads those requests when it resumes — a
// dflockd past its read deadline too, most of the time — and a grant it
// made to a closed socket would be held by nobody until its lease ran out
// on a server with auto-release off. Read here, its token is known and the
// grant is released elsewhere. A connection that broke any other way, or
// that did not linger, was closed by fail; linger then returns at once.
// The pool's Close ends it too (lingersLocked arranges it).
func (c *conn) linger() {
	c.mu.Lock()
	until, stop, closed := c.lingerUntil, c.stopLinger, c.lingerClosed
	c.mu.Unlock()
	if until.IsZero() {
		return
	}
	defer c.p.nLingering.Add(-1) // counted by lingersLocked
	defer c.wc.Close()
	defer func() {
		if !stop() {
			// The pool's Close is closing the socket (a WithDialer
			// connection's Close may take its time): this reader,
			// counted in p.io, waits for it, so Pool.Close does too.
			<-closed
		}
	}()
	for c.orphansLeft() {
		line, err := c.wc.ReadLine() // bounded by the deadline fail set
		if err != nil {
			return
		}
		if wire.IsPush(line) {
			continue // lane and wait-pool connections listen to nothing
		}
		if !c.orphanAnswered(line) {
			return
		}
	}
}

// reserveLinger counts one more lingering connection, unless as many
// linger as the pool may have open in its roles (MaxConns + LaneConns):
// the connection is then closed at once. A lingering socket is outside
// every cap, and a server that never closes its side of a withdrawn wait
// (v1.14) would otherwise let sockets pile up with the rate of cancelled
// waits — to the process's file descriptor limit, failing every other
// server's dials too.
func (p *Pool) reserveLinger() bool {
	limit := int64(p.cfg.MaxConns) + int64(p.cfg.LaneConns)
	for {
		n := p.nLingering.Load()
		if n >= limit {
			return false
		}
		if p.nLingering.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// dropUnsentOrphansLocked takes out of the orphans the requests of the
// write fail found under way (orphansWriting of them; the newest orphans
// are their unanswered ones) beyond the first sent, which reached the
// server: fail cut the write short, so the rest never did, and their
// replies will never come. A linger would otherwise wait for them until
// lingerUntil, holding the socket and its place among the lingering
// connections for a minute. With nothing left to read, the socket is
// closed, which ends the linger's read.
func (c *conn) dropUnsentOrphansLocked(sent int) {
	unsent := c.orphansWriting - sent
	c.orphansWriting = 0
	if unsent <= 0 {
		return
	}
	c.orphans = c.orphans[:max(len(c.orphans)-unsent, 0)]
	if len(c.orphans) == 0 {
		if c.inline {
			_ = c.wc.Close()
		} else {
			// The user's Close, not under c.mu (see closesApartLocked).
			// This is the flush goroutine (only a kernel socket is
			// written inline), itself counted in p.io: the count may
			// grow.
			c.p.io.Add(1)
			go c.closeApart()
		}
	}
}

// closesApartLocked reports whether the socket is to be closed on a
// goroutine of its own (closeApart), and if so counts that goroutine in
// p.io. A kernel socket's Close returns at once; a net.Conn that
// WithDialer made is the user's, and its Close may wait (an SSH channel
// writes to its transport, a wrapper flushes or logs). The goroutines that
// close connections — a reader, the janitor, a flusher, the loss notifier
// destroying a lease's connection, and Pool.Close for each connection in
// turn — must not wait for it: one stalled a renewal scheduler's losses
// on every server, and left a lease believed held for as long as the
// Close took after the server had handed it on. Called by fail with c.mu
// held before it publishes the break: the reader, which exits only once it
// sees the break, is still counted in p.io, so the count may grow.
func (c *conn) closesApartLocked() bool {
	if c.inline {
		return false
	}
	c.p.io.Add(1)
	return true
}

// closeApart closes the socket; see closesApartLocked.
func (c *conn) closeApart() {
	defer c.p.io.Done()
	_ = c.wc.Close()
}

func (c *conn) orphansLeft() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.orphans) > 0
}

// orphanAnswered takes line, read after the connection broke, as the reply
// to the oldest orphan, and hands a grant to Config.OnReleaseLost. It
// returns false if there was no orphan, or if the line could not be parsed
// as that reply: the replies after it cannot be trusted, so it drops the
// orphans left, which ends a linger.
func (c *conn) orphanAnswered(line []byte) bool {
	c.mu.Lock()
	if len(c.orphans) == 0 {
		c.mu.Unlock()
		return false
	}
	o := c.orphans[0]
	c.orphans = c.orphans[1:]
	c.mu.Unlock()
	r, err := c.wc.ParseReply(line, o.cmd)
	if err != nil {
		c.mu.Lock()
		c.orphans = c.orphans[:0]
		c.mu.Unlock()
		return false
	}
	c.grantLost(o.cmd, o.key, r)
	return true
}

// orphan is a request whose reply nobody waits for (conn.orphans): its
// command, to parse the reply, and the key of a grant it may carry (call.
// grantKey), or "".
type orphan struct {
	cmd wire.Command
	key string
}

// pendingNotPing is the number of replies pending on c but those of
// keepalive pings, which carry nothing SettleLanes must wait for (with a
// round trip longer than the keepalive, one is always pending).
func (c *conn) pendingNotPing() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.q.n - c.pings
}

// supportsPing reports whether the server answered the handshake's ping
// with ok (v1.14+).
func (c *conn) supportsPing() bool { return c.ping.Load() == pingOK }

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
		switch {
		case cl.cb != nil:
			cl.cb(0, r, err) // request's late
		case err == nil && cl.key != "":
			c.releaseAbandoned(cl, &r)
		}
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

// onlyPingPending reports whether no reply is pending on the connection
// but (perhaps) that of the janitor's keepalive ping, which is sent only
// when nothing else is: such a connection may go back to the wait pool,
// where the reader reads the ping's reply ahead of the next user's.
func (c *conn) onlyPingPending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.q.n == 0 || (c.q.n == 1 && c.q.at(0).kind == callPing)
}

func (c *conn) pingDone(r wire.Reply, err error) {
	if err != nil {
		return
	}
	switch r.Status {
	case wire.StatusOK:
		c.ping.Store(pingOK)
	case wire.StatusError:
		c.ping.Store(pingUnsupported)
	case wire.StatusErrDraining:
		// A server shutting down (v1.16+) answers the next request so
		// and closes the connection: a keepalive ping is no exception.
		c.fail(ErrDraining)
	default:
		c.fail(fmt.Errorf("%w: unexpected reply to ping (status %d %q)", wire.ErrProtocol, r.Status, statusWord(r)))
	}
}

// keepalive pings the connection if it has written nothing for ka and has
// nothing in flight, and breaks it if replies to non-blocking requests
// (keepalive pings included) have made no progress for 2·ka: the server
// answers those at once, so it is stalled or the path to it is dead, and
// callers waiting with a context that never ends would wait forever. It
// returns when the connection next needs attention (p.now() units), or -1
// if it is broken.
func (c *conn) keepalive(now, ka int64) int64 {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return -1
	}
	if c.blocking > 0 {
		// A ping would sit behind the wait, and the server does not time
		// out a connection parked in a blocking command.
		c.mu.Unlock()
		return satAdd(now, ka)
	}
	if c.q.n > 0 {
		if n := c.wc.BytesRead(); n != c.seenBytes {
			// A line still arriving (a large stats reply on a slow link)
			// is progress too, seen here rather than as the bytes come (a
			// stall after them is found up to a keepalive later). Only
			// the same line, though: lines consumed since the last look
			// were pushes (a reply is progress when matched, in
			// answeredLocked), and the bytes after them may start the
			// next one.
			c.seenBytes = n
			if cons := c.wc.BytesConsumed(); n > cons && cons == c.seenLines {
				c.progress, c.behindSince = now, 0
			} else {
				c.seenLines = cons
			}
		}
		due := satAdd(c.progress, satAdd(ka, ka))
		// This process may be behind, not the server: see behindGrace.
		onWire := c.onWireLocked()
		behind := onWire == 0 || c.onPush == nil && c.wc.BytesConsumed() > c.matchedLines
		writingAll := onWire > 0 && onWire == c.writing
		onlyPings := c.q.n == c.pings
		c.mu.Unlock()
		if due > now {
			return due
		}
		if onlyPings && c.holdsPlace.Load() {
			// Nobody waits on the connection, and a closed one could not
			// give the place up: see Conn.HoldPlace. (A request of the
			// ticket's Wait is waited for: cut as any other.)
			return satAdd(now, ka)
		}
		if later := c.behindGrace(now, ka, behind, writingAll); later > 0 {
			return later
		}
		c.fail(errNoReply)
		return -1
	}
	if due := satAdd(c.lastActive, ka); due > now {
		c.mu.Unlock()
		return due
	}
	cl := getCall()
	cl.kind = callPing
	cl.cmd = wire.CmdPing
	c.enqueueLocked(&pingReq, cl, false)
	c.p.pings.Add(1)
	// Never write on the janitor: one stalled connection must not delay
	// the keepalive of the others. c.err == nil under c.mu, so the reader
	// is still running and counted in p.io.
	c.startFlushLocked()
	return satAdd(now, ka)
}

// stuckClientAfter bounds behindGrace: requests left unwritten, or replies
// unread, this long mean a flusher or reader that does not run at all (a
// bug), not a slow one, and the keepalive's break is then what frees the
// callers waiting on the connection.
const stuckClientAfter = 5 * time.Second

// behindGrace spares, for a while, a connection the keepalive would break
// for want of replies when this process, not the server, is behind on it:
// its requests are not written yet (the flusher started for them has not
// run: behind), or their write has not reached the kernel (writingAll: a
// write is under way with every unanswered request in it, and the socket
// has nothing unacknowledged; a write blocked on a server that stopped
// reading leaves the kernel full), a reply has been read but not yet
// matched to its call (behind), or replies wait in its socket, unread. The
// process was frozen (a stopped or suspended VM, a long GC pause) or
// starved of CPU, and the janitor ran before the flusher or the reader;
// breaking the connection would lose its leases for nothing. It returns
// when to look again, or 0 to break it: none is the case (the socket is
// looked at only where socketPending can), or it has lasted
// stuckClientAfter since first seen here.
func (c *conn) behindGrace(now, ka int64, behind, writingAll bool) int64 {
	nc := c.wc.NetConn()
	if !behind && !(writingAll && socketSendIdle(nc)) && !socketPending(nc) {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.behindSince == 0 {
		c.behindSince = now
	}
	end := satAdd(c.behindSince, int64(stuckClientAfter))
	if now >= end {
		return 0
	}
	return min(satAdd(now, ka), end)
}

// satAdd adds two non-negative p.now() quantities, saturating at
// math.MaxInt64 instead of wrapping: Config.KeepAlive has no upper bound
// here, and a wrapped deadline would be in the past.
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// fail breaks the connection with cause unless it is already broken: the
// socket closes, every pending call fails, and the pool is told (which
// calls Config.OnConnBroken) exactly once, then onBroken.
func (c *conn) fail(cause error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	err := brokenErr(c.p.cfg.Addr, redact(cause, c.p.secret))
	c.err = err
	written := max(c.q.n-c.bufN, 0) // bufN ≤ q.n (writeQueuedLocked); a bug must not panic here, under c.mu
	pending := make([]*call, 0, c.q.n)
	for cl := c.q.pop(); cl != nil; cl = c.q.pop() {
		pending = append(pending, cl)
	}
	// Requests never written stay so: their calls get the error, and a
	// flush goroutine that takes c.mu before the socket closes must find
	// nothing to write (a try-lock written now could be granted to a
	// connection about to close).
	c.buf = c.buf[:0]
	for _, cl := range pending[written:] {
		cl.unsent = true // no byte of it left: see do
	}
	// Those of the write under way: the writer decides (see writing).
	for _, cl := range pending[max(written-c.writing, 0):written] {
		if cl.kind == callWait {
			if c.verdict == nil {
				c.verdict = make(chan struct{})
			}
			cl.verdict = c.verdict
			c.undecided = append(c.undecided, cl)
		}
	}
	lingers := c.lingersLocked(cause, pending[:written])
	apart := !lingers && c.closesApartLocked()
	// Published after lingersLocked counted a lingering connection: one who
	// sees Err() != nil finds it in Stats too.
	c.errp.Store(err)
	c.inflight.Store(0)
	c.pings = 0
	c.blocking = 0
	c.bufN = 0 // their calls are gone: onWireLocked stays 0
	owner := c.owner
	c.mu.Unlock()
	close(c.dead)
	c.wakeReader() // a parked reader exits, or lingers
	if apart {
		go c.closeApart()
	} else if !lingers {
		_ = c.wc.Close()
	} else if errors.Is(cause, errWithdrawn) {
		c.shutWrite()
	}
	for _, cl := range pending {
		c.deliver(cl, wire.Reply{}, err)
	}
	c.p.connBroken(c, owner, err)
	if c.onBroken != nil {
		c.onBroken(err)
	}
}

// lingersLocked decides, in fail, whether the connection lingers (see
// linger) and records the orphans, written being the calls fail took out of
// the queue that had been written. It lingers when the keepalive broke it,
// Conn.Abandon, or Conn.Withdraw (see there for when), no caller found it
// broken or desynchronised first (failWith), and one of those could be
// answered with a grant that an owner could release elsewhere; the socket
// then stays open, bounded by lingerFor (withdrawLingerFor), and nothing
// more is written on it.
func (c *conn) lingersLocked(cause error, written []*call) bool {
	c.orphans = c.orphans[:0]
	withdraw := errors.Is(cause, errWithdrawn) && c.supportsPing() && halfCloser(c.wc.NetConn()) != nil
	lingers := (withdraw || errors.Is(cause, errNoReply) || errors.Is(cause, errAbandoned)) && c.failWith == nil && c.p.cfg.OnReleaseLost != nil && !c.p.closed.Load() &&
		slices.ContainsFunc(written, func(cl *call) bool { return cl.grantKey != "" }) &&
		c.p.reserveLinger() // last: it counts the connection as lingering
	if !lingers {
		if len(written) > 0 && written[0].grantKey != "" {
			c.orphans = append(c.orphans, orphan{written[0].cmd, written[0].grantKey})
		}
		return false
	}
	for _, cl := range written {
		c.orphans = append(c.orphans, orphan{cl.cmd, cl.grantKey})
	}
	c.orphansWriting = c.writing
	d := lingerFor
	if withdraw {
		d = withdrawLingerFor
	}
	c.lingerUntil = time.Now().Add(d)
	// Nothing more is written; a write under way (the flush goroutine's,
	// blocked on the stalled server) that fails later must not end the
	// reading as a broken connection would. That write is cut short now
	// rather than at its own deadline: its callers, failed by this break,
	// wait for its verdict (see conn.writing), and what it has not sent
	// yet is better never sent. (A write starting after this fails at
	// once: EndWrites is checked after its deadline is set.)
	c.wc.EndWrites()
	_ = c.wc.SetWriteDeadline(pastDeadline)
	// The pool's Close ends the linger by closing the socket, from now:
	// the reader may still be in a read it began before the cut, not yet
	// in linger, and that read's deadline is now lingerUntil.
	c.lingerClosed = make(chan struct{})
	c.stopLinger = context.AfterFunc(c.p.ctx, func() {
		_ = c.wc.Close()
		close(c.lingerClosed)
	})
	// The count reserveLinger took lasts until linger returns: the reader
	// has not exited (it exits only once c.err is set), and its readLoop
	// ends in linger.
	if c.own != nil {
		// A caller reads its own reply: stopped (its call has the error),
		// it clears this deadline to lingerUntil and hands the socket to
		// the reader (readOwn).
		c.forced = true
		_ = c.wc.SetReadDeadline(pastDeadline)
	} else {
		c.forced = false // a late interrupt of a caller that never read
		_ = c.wc.SetReadDeadline(c.lingerUntil)
	}
	return true
}

// call is one request awaiting its reply. Calls are recycled through
// callPool; a call belongs to exactly one party at a time (sender until
// enqueued, then the reader/failer, then — for callWait — the waiter once
// delivered).
type call struct {
	kind     uint8
	blocking bool
	cmd      wire.Command
	state    atomic.Uint32
	// done receives, for callWait only, the state that ended the wait:
	// stateDelivered from the reader (or fail), or stateEnded from the
	// pool's Lifetime (endWaits). Cap 1; at most one send per use, by
	// whoever moved state from stateWaiting.
	done  chan uint32
	reply wire.Reply
	err   error
	key   string // lane l/sl: to release an abandoned grant
	// grantKey is the key of a request that can be answered with a grant
	// (l, sl, e, se, w, sw): a grant read for it as the connection
	// breaks, when its caller gets the connection's error, goes to
	// Config.OnReleaseLost (grantLost).
	grantKey string
	cb       func(int, wire.Reply, error)
	idx      int
	// unsent: the connection broke before any byte of the request was
	// written (set by fail, before delivering, or by the writer before it
	// closes verdict), so the server never saw it.
	unsent bool
	// verdict, if set (by fail, before delivering), closes once the
	// writer has decided unsent (see conn.writing).
	verdict chan struct{}
}

const (
	callWait uint8 = iota
	callBatch
	callPing
	callDiscard
)

const (
	stateWaiting uint32 = iota
	stateAbandoned
	// stateEnded: abandoned by the pool's Lifetime (endWaits), which sent
	// the caller a token on done; such a call is never recycled.
	stateEnded
	stateDelivered
)

var callPool = sync.Pool{New: func() any { return &call{done: make(chan uint32, 1)} }}

func getCall() *call { return callPool.Get().(*call) }

func putCall(cl *call) {
	cl.reply = wire.Reply{}
	cl.err = nil
	cl.key = ""
	cl.grantKey = ""
	cl.cb = nil
	cl.idx = 0
	cl.blocking = false
	cl.unsent = false
	cl.verdict = nil
	cl.state.Store(stateWaiting)
	callPool.Put(cl)
}

func (cl *call) result() (wire.Reply, error) {
	r, err := cl.reply, cl.err
	putCall(cl)
	return r, err
}

// callQueue is a FIFO ring of calls; its storage is reused.
type callQueue struct {
	buf  []*call // len is a power of two
	head int
	n    int
}

func (q *callQueue) push(cl *call) {
	if q.n == len(q.buf) {
		nb := make([]*call, max(16, 2*len(q.buf)))
		for i := 0; i < q.n; i++ {
			nb[i] = q.buf[(q.head+i)&(len(q.buf)-1)]
		}
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.n)&(len(q.buf)-1)] = cl
	q.n++
}

// at returns the i-th call from the head; 0 <= i < q.n.
func (q *callQueue) at(i int) *call { return q.buf[(q.head+i)&(len(q.buf)-1)] }

func (q *callQueue) pop() *call {
	if q.n == 0 {
		return nil
	}
	cl := q.buf[q.head]
	q.buf[q.head] = nil
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.n--
	if q.n == 0 && len(q.buf) > maxKeepCalls {
		// A backlog passed (a stall): a connection lives for weeks and
		// need not keep its peak's ring.
		q.buf, q.head = nil, 0
	}
	return cl
}

// maxKeepCalls is the largest ring a callQueue keeps once empty.
const maxKeepCalls = 1024

// set replaces the i-th call from the head; 0 <= i < q.n.
func (q *callQueue) set(i int, cl *call) { q.buf[(q.head+i)&(len(q.buf)-1)] = cl }

// truncate keeps the first n calls; 0 <= n <= q.n.
func (q *callQueue) truncate(n int) {
	for i := n; i < q.n; i++ {
		q.set(i, nil)
	}
	q.n = n
}
