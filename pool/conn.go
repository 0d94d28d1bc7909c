package pool

import (
	"context"
	"crypto/tls"
	"fmt"
	"math"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
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
// Config.writeTimeout), looping while other senders appended more in the
// meantime, and exits. Concurrent senders therefore coalesce into one write.
// A caller never waits for a write that may block: it waits for its reply or
// for its context, so a caller whose request is stuck in a write to a server
// that stopped reading returns when its context ends. The write itself goes
// on and breaks the connection only if writeTimeout passes (the connection is
// then genuinely stalled). The one exception proves it cannot block: a
// sender (do, sendBatch) on an idle kernel socket writes its own requests
// (writeInlineLocked), sparing the flush goroutine's start and yield.
//
// Replies are matched by one reader goroutine against a FIFO ring of
// pending calls; call objects are recycled (sync.Pool), so a round trip
// allocates nothing beyond the strings of the parsed reply.
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
	// beforeInlineWrite, if set (tests only, under mu), runs on the caller
	// that is about to write inline, before it takes the buffer.
	beforeInlineWrite func()

	mu         sync.Mutex
	buf        []byte // encoded requests not yet taken by a flusher
	spare      []byte // the other buffer of the swap
	flushing   bool
	q          callQueue // calls waiting for a reply, in send order
	blocking   int       // blocking requests queued or in flight
	lastActive int64     // p.now() of the last write or blocking reply
	progress   int64     // p.now() when the queue became non-empty or last got a reply
	err        error     // sticky; set once, under mu
	owner      Owner     // the lease owner this connection serves now (for OnConnBroken); nil if none

	errp     atomic.Pointer[ServerError] // lock-free mirror of err
	inflight atomic.Int32                // len(q), for lane choice and Release
	ping     atomic.Uint32               // pingUnknown, pingOK, pingUnsupported
	nreq     atomic.Int64
	nwrite   atomic.Int64
}

// newConn wraps a handshaken connection; the caller sets its hooks and
// registers it.
func (p *Pool) newConn(wc *wire.Conn, ping uint32) *conn {
	c := &conn{p: p, wc: wc, lastActive: p.now(), inline: kernelSocket(wc.NetConn())}
	c.flushFn = c.flush
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
// refused by framed). abandoned is true if ctx ended first: the
// reply will still be read (and, if grantKey is set and the reply is a
// grant, released at once on this connection); what else to do about the
// abandoned exchange is the caller's decision.
func (c *conn) do(ctx context.Context, req *wire.Request, grantKey string) (_ wire.Reply, sent, abandoned bool, _ error) {
	if err := ctx.Err(); err != nil {
		return wire.Reply{}, false, false, serverErr(c.p.cfg.Addr, err, nil)
	}
	cl := getCall()
	cl.kind = callWait
	cl.cmd = req.Cmd
	cl.blocking = req.Blocking()
	cl.key = grantKey
	if err := c.send(req, cl); err != nil {
		putCall(cl)
		return wire.Reply{}, false, false, err
	}
	select {
	case <-cl.done:
		r, err := cl.result()
		return r, true, false, err
	case <-ctx.Done():
	}
	if !cl.state.CompareAndSwap(stateWaiting, stateAbandoned) {
		// The reply won the race; it is ours.
		<-cl.done
		r, err := cl.result()
		return r, true, false, err
	}
	// From here the reader owns cl.
	return wire.Reply{}, true, true, serverErr(c.p.cfg.Addr, ctx.Err(), nil)
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
		c.enqueueLocked(req, cl)
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
		c.writeInlineLocked()
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
// the reply or its context, whichever comes first.
func (c *conn) send(req *wire.Request, cl *call) error {
	if err := framed(req); err != nil {
		return err
	}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	idle := c.idleLocked()
	c.enqueueLocked(req, cl)
	if idle {
		c.writeInlineLocked()
		return nil
	}
	// c.err == nil under c.mu: the reader is still running and counted in
	// p.io, so the flush goroutine may be counted too.
	c.startFlushLocked()
	return nil
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
func (c *conn) writeInlineLocked() {
	c.flushing = true
	hook := c.beforeInlineWrite
	c.mu.Unlock()
	if hook != nil {
		hook()
	}
	// As the flush goroutine does: senders runnable now append to this
	// write rather than queue behind it for a write of their own.
	runtime.Gosched()
	c.mu.Lock()
	if c.err != nil {
		c.flushing = false
		c.mu.Unlock()
		return // fail delivered the error to every queued call
	}
	if len(c.buf) > maxInlineWrite {
		// Too much to be sure the send buffer takes it at once.
		c.p.io.Add(1)
		c.mu.Unlock()
		go c.flushFn()
		return
	}
	now, err := c.writeQueuedLocked()
	if err != nil {
		// The failed write broke the wire.Conn, which interrupts the
		// reader's read at once; the reader fails the connection (and
		// this call, which is queued) with the write's error. Failing it
		// here would run the pool's OnConnBroken on the sender, which
		// may be the renewal scheduler.
		c.flushing = false
		c.mu.Unlock()
		return
	}
	c.lastActive = now
	if len(c.buf) > 0 && c.err == nil {
		// Senders joined during the write: the flush goroutine takes
		// over (c.flushing stays set). c.err == nil under c.mu, so the
		// reader is still counted in p.io.
		c.p.io.Add(1)
		c.mu.Unlock()
		go c.flushFn()
		return
	}
	c.flushing = false
	c.mu.Unlock()
}

// enqueueLocked encodes req (checked by framed) into the write buffer and
// queues cl for its reply.
func (c *conn) enqueueLocked(req *wire.Request, cl *call) {
	if c.q.n == 0 {
		c.progress = c.p.now()
	}
	c.buf = req.AppendTo(c.buf)
	c.q.push(cl)
	c.inflight.Add(1)
	if cl.blocking {
		c.blocking++
	}
	c.nreq.Add(1)
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
	if c.flushing {
		c.mu.Unlock()
		return
	}
	c.flushing = true
	c.p.io.Add(1)
	c.mu.Unlock()
	go c.flushFn()
}

// flush is the flush goroutine (c.flushFn): it writes what senders have
// queued, looping until the buffer stays empty, then exits.
func (c *conn) flush() {
	defer c.p.io.Done()
	// Yield once before the first write so that senders that are runnable
	// right now (typically woken by the reader's last replies) append to
	// this write instead of each starting their own. Measured with 64
	// goroutines on one lane (BenchmarkLaneDo, 2 CPUs): ~16 requests per
	// write; a lone caller pays a goroutine start (BenchmarkLaneDoSerial).
	runtime.Gosched()
	c.mu.Lock()
	for len(c.buf) > 0 {
		now, err := c.writeQueuedLocked()
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
// is kept as the next spare unless it grew past maxKeepBuf.
func (c *conn) writeQueuedLocked() (now int64, err error) {
	b := c.buf
	c.buf = c.spare[:0]
	c.spare = nil
	c.mu.Unlock()
	now, err = c.write(b)
	c.mu.Lock()
	if cap(b) <= maxKeepBuf {
		c.spare = b[:0]
	}
	return now, err
}

func (c *conn) write(b []byte) (int64, error) {
	t := time.Now()
	_ = c.wc.SetWriteDeadline(t.Add(c.p.cfg.writeTimeout))
	// Counted before writing: the replies (and a caller reading Stats
	// after them) may come before WriteRaw returns.
	c.nwrite.Add(1)
	err := c.wc.WriteRaw(b)
	return int64(t.Sub(c.p.start)), err
}

// readLoop is the connection's only reader: it matches reply lines to calls
// in FIFO order until the connection breaks.
func (c *conn) readLoop() {
	defer c.p.io.Done()
	for {
		line, err := c.wc.ReadLine()
		if err != nil {
			c.fail(err)
			return
		}
		if wire.IsPush(line) {
			if c.onPush == nil {
				continue // only listener connections listen
			}
			push, err := wire.ParsePush(line)
			if err != nil {
				c.fail(err)
				return
			}
			c.onPush(push)
			continue
		}
		c.mu.Lock()
		cl := c.q.pop()
		if cl != nil {
			c.inflight.Add(-1)
			if cl.blocking {
				c.blocking--
				// The server resumes its idle read deadline now.
				c.lastActive = c.p.now()
			}
			if c.q.n > 0 {
				c.progress = c.p.now()
			}
		}
		c.mu.Unlock()
		if cl == nil {
			c.fail(&wire.ProtocolError{Line: truncLine(line), Reason: errUnsolicited.Error()})
			return
		}
		rep, err := wire.ParseReply(line, cl.cmd)
		if err != nil {
			c.fail(err)
			c.deliver(cl, wire.Reply{}, c.Err())
			return
		}
		c.deliver(cl, rep, nil)
	}
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
			cl.done <- struct{}{}
			return // the waiter recycles cl
		}
		if err == nil && cl.key != "" {
			c.releaseAbandoned(cl, &r)
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
	c.p.log.Debug("dflock: releasing a grant whose caller gave up", "server", c.p.cfg.Addr, "key", cl.key)
	rel := getCall()
	rel.kind = callDiscard
	rel.cmd = req.Cmd
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		putCall(rel)
		return // closing the connection releases the grant
	}
	c.enqueueLocked(&req, rel)
	// c.err == nil under c.mu, so the reader (this goroutine) is still
	// running and counted in p.io.
	c.startFlushLocked()
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
	default:
		c.fail(fmt.Errorf("%w: unexpected reply to ping (status %d %q)", wire.ErrProtocol, r.Status, r.Word))
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
		due := satAdd(c.progress, satAdd(ka, ka))
		c.mu.Unlock()
		if due <= now {
			c.fail(errNoReply)
			return -1
		}
		return due
	}
	if due := satAdd(c.lastActive, ka); due > now {
		c.mu.Unlock()
		return due
	}
	cl := getCall()
	cl.kind = callPing
	cl.cmd = wire.CmdPing
	c.enqueueLocked(&pingReq, cl)
	c.p.pings.Add(1)
	// Never write on the janitor: one stalled connection must not delay
	// the keepalive of the others. c.err == nil under c.mu, so the reader
	// is still running and counted in p.io.
	c.startFlushLocked()
	return satAdd(now, ka)
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
	err := brokenErr(c.p.cfg.Addr, cause)
	c.err = err
	c.errp.Store(err)
	var pending []*call
	for cl := c.q.pop(); cl != nil; cl = c.q.pop() {
		pending = append(pending, cl)
	}
	c.inflight.Store(0)
	c.blocking = 0
	owner := c.owner
	c.mu.Unlock()
	_ = c.wc.Close()
	for _, cl := range pending {
		c.deliver(cl, wire.Reply{}, err)
	}
	c.p.connBroken(c, owner, err)
	if c.onBroken != nil {
		c.onBroken(err)
	}
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
	done     chan struct{} // cap 1, callWait only
	reply    wire.Reply
	err      error
	key      string // lane l/sl: to release an abandoned grant
	cb       func(int, wire.Reply, error)
	idx      int
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
	stateDelivered
)

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func getCall() *call { return callPool.Get().(*call) }

func putCall(cl *call) {
	cl.reply = wire.Reply{}
	cl.err = nil
	cl.key = ""
	cl.cb = nil
	cl.blocking = false
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

func (q *callQueue) pop() *call {
	if q.n == 0 {
		return nil
	}
	cl := q.buf[q.head]
	q.buf[q.head] = nil
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.n--
	return cl
}
