package pool

import (
	"bytes"
	"runtime"
	"time"

	"github.com/dflock-sdk/go/wire"
)

// maxKeepBuf bounds the write buffers a conn keeps between flushes.
const maxKeepBuf = 64 << 10

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
			c.desyncedLocked(wire.LinelessProtocolError(errUnsolicited.Error()))
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
