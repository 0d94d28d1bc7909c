package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
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
//
// The code follows that split: this file has the type, its requests and its
// break (fail); conn_write.go the write buffer, inline writes, the flush
// goroutine and a lane's prune of abandoned requests; conn_reply.go the
// reader goroutine, the turn between it and a caller reading its own reply,
// and the delivery of replies; conn_linger.go what a broken connection still
// reads (lingering for grants, orphans); keepalive.go the pings and the cut
// of a stalled connection; call.go the calls and their FIFO ring.
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
	// noDeadlines: the connection's deadline setters fail (a WithDialer
	// connection such as an SSH channel's). It never lingers, whose end is
	// a read deadline; the keepalive's cut (a close) still bounds a stall.
	noDeadlines bool
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
	if !c.inline {
		c.noDeadlines = wc.NetConn().SetReadDeadline(time.Time{}) != nil
	}
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
// breaks the connection). late must not block. A caller that unwinds
// through ctx's methods (a panic or runtime.Goexit) leaves the request
// sent, or failed, and late receives its outcome.
func (c *conn) request(ctx context.Context, req *wire.Request, late func(i int, r wire.Reply, err error)) (r wire.Reply, answered bool, err error) {
	cl := getCall()
	cl.kind = callWait
	cl.cmd = req.Cmd
	cl.blocking = req.Blocking()
	cl.cb = orDiscard(late)
	cl.grantKey = grantKeyOf(req)
	// ctx.Err is the caller's code: a caller that unwinds through it (a
	// panic, runtime.Goexit) has the request sent all the same, as for an
	// ended ctx, and late receives the outcome.
	checked := false
	defer func() {
		if !checked {
			cl.kind = callBatch
			if _, _, err := c.send(req, cl); err != nil {
				cb := cl.cb
				putCall(cl)
				cb(0, wire.Reply{}, err)
			}
		}
	}()
	ended := ctx.Err()
	checked = true
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
	// ctx's methods are the caller's code: a caller that unwinds through
	// one (a panic, runtime.Goexit) before it knows cl's fate abandons cl,
	// as one whose ctx ended does.
	settled := false
	defer func() {
		if !settled {
			c.abandonUnwound(cl)
		}
	}()
	if reads {
		if r, err, ok := c.readOwn(ctx, cl); ok {
			settled = true
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
	settled = true
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
		// ctx.Done is the caller's code: a caller unwinding through it
		// leaves the outcome, delivered to it, unclaimed (a Request's
		// late is told); cl is left to the collector.
		claimed := false
		defer func() {
			if !claimed {
				c.unclaimed(cl, cl.reply, cl.err)
			}
		}()
		d := ctx.Done()
		claimed = true
		select {
		case <-v:
		case <-d:
			// The writer may still set cl.unsent: cl is left to the
			// collector, not recycled. Taken as sent: not sent again.
			return cl.reply, false, false, cl.err
		}
	}
	unsent = cl.unsent
	r, err := cl.result()
	return r, false, unsent, err
}

// abandonUnwound abandons cl for a caller of await that unwinds (a panic
// or runtime.Goexit in its ctx's methods) while cl is pending: the reader
// then handles the reply as one whose caller gave up (deliver). A reply
// delivered before the caller left is handled here the same way, so that a
// grant is given back and a request's late gets its outcome.
func (c *conn) abandonUnwound(cl *call) {
	if cl.state.CompareAndSwap(stateWaiting, stateAbandoned) {
		return
	}
	if s := <-cl.done; s != stateDelivered {
		return // stateEnded: the Lifetime abandoned cl to the reader
	}
	c.unclaimed(cl, cl.reply, cl.err)
	if cl.verdict == nil {
		putCall(cl) // else the writer may still set cl.unsent (see conn.writing)
	}
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
	done = orDiscard(done)
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

// orDiscard is done, or if it is nil a callback that drops the reply: the
// reader calls it unchecked, and a panic there would end the program.
func orDiscard(done func(i int, r wire.Reply, err error)) func(i int, r wire.Reply, err error) {
	if done == nil {
		return discardReply
	}
	return done
}

func discardReply(int, wire.Reply, error) {}

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
	withdraws := lingers && errors.Is(cause, errWithdrawn)
	// A connection that is not a kernel socket is closed, or half-closed,
	// on a goroutine of its own (see closesApartLocked): a user's CloseWrite
	// or Close may take its time, and this may be the caller's goroutine
	// (Conn.Withdraw).
	apart := (!lingers || withdraws) && c.closesApartLocked()
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
	switch {
	case apart && withdraws:
		go c.shutWriteApart()
	case apart:
		go c.closeApart()
	case !lingers:
		_ = c.wc.Close()
	case withdraws:
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
