package testutil

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// errLineTooLong is the fatal read error of an over-long line (code 12).
var errLineTooLong = errors.New("testutil: line too long")

// authFailDelay is the pause before the server closes a connection that
// failed auth (§6.1).
const authFailDelay = 100 * time.Millisecond

// request is one parsed 3-line request. key and arg alias the connection's
// line buffers and are valid until the next read.
type request struct {
	cmd      cmdID
	key, arg []byte
}

// conn is one client connection. A single goroutine (serve) reads, executes
// and answers requests strictly in order (§8e). Responses are buffered and
// flushed before the goroutine would block, so a pipelined batch is answered
// with few writes — unless Config.ReplyPerWrite asks for dflockd's pacing,
// one write per reply; pushes from the signal hub go through a separate writer
// goroutine (signals.go). Both write under wmu, so lines never interleave.
type conn struct {
	srv *Server
	id  uint64
	nc  net.Conn     // what requests are read from and replies written to (TLS or raw)
	raw *countedConn // the socket under nc
	br  *bufio.Reader

	wmu      sync.Mutex
	bw       *bufio.Writer
	werr     error // first write error; the connection is finished once set
	perWrite bool  // Config.ReplyPerWrite: every line is flushed on its own

	done      chan struct{} // closed when the connection is torn down
	closeOnce sync.Once
	finished  chan struct{} // closed once serve has cleaned up after itself

	// Read state, owned by serve. A line interrupted by a read timeout
	// during a Stall is resumed afterwards, so it is kept across calls.
	authed  bool
	bufs    [3][]byte
	lineIdx int
	inLine  bool
	tooLong bool
	armedAt time.Time // when the current line's read deadline was set
	armed   bool      // the current line's read blocked, under that deadline
	// pausedDeadline is the read deadline the paused process would find
	// expired or not when a stall ends: that of the first line that came
	// in during the stall while the server was waiting for it (zero if
	// none). See readRequest.
	pausedDeadline time.Time

	// With a clock other than the real one the socket has no read deadline
	// of its own: a timer on that clock expires it (see armDeadline). dlGen
	// tells a timer that fires late that it has been superseded.
	dlMu    sync.Mutex
	dlGen   uint64
	dlTimer Timer

	pushCh chan []byte // signal push buffer; created on the first listen
}

func newConn(s *Server, id uint64, nc net.Conn, raw *countedConn) *conn {
	return &conn{
		srv:      s,
		id:       id,
		nc:       nc,
		raw:      raw,
		br:       bufio.NewReaderSize(nc, readBufSize),
		bw:       bufio.NewWriterSize(nc, readBufSize),
		perWrite: s.cfg.ReplyPerWrite,
		done:     make(chan struct{}),
		finished: make(chan struct{}),
	}
}

// close tears the connection down from any goroutine. It closes the raw
// socket, not the TLS layer, so that it never blocks on a close_notify.
func (c *conn) close() {
	c.closeOnce.Do(func() {
		close(c.done)
		_ = c.raw.Close()
	})
}

func (c *conn) closing() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *conn) serve() {
	defer c.srv.wg.Done()
	defer c.finish()
	s := c.srv
	for {
		if !c.awaitStall() {
			return
		}
		req, err := c.readRequest()
		if err != nil {
			c.readFailed(err)
			return
		}
		// A request that arrived while the server was being stalled is held.
		if !c.awaitStall() {
			return
		}
		if c.timedOutInPause() {
			c.readFailed(os.ErrDeadlineExceeded)
			return
		}
		s.requests[req.cmd].Add(1)
		if s.authToken != "" && !c.authed {
			if req.cmd != cmdAuth || !s.checkSecret(req.arg) {
				c.failAuth()
				return
			}
			c.authed = true
			c.reply("ok")
			continue
		}
		if s.draining() && s.cfg.Version != V1_10 {
			c.reply("error_draining")
			_ = c.flush()
			return
		}
		if !c.handle(req) || c.writeErr() != nil {
			return
		}
	}
}

// finish runs when serve returns: drop subscriptions, apply auto-release
// (the next waiter is granted), uncount the connection and close the
// socket — in the order of the version imitated. v1.10 cleans up before it
// closes, so a client that sees the close (after `error` for an over-long
// line, say) and reacts to it finds the connection's locks handed on; from
// v1.15 the deferred teardown closes the socket first, and such a client
// may still find them held for a moment.
func (c *conn) finish() {
	c.disarmDeadline()
	closeSocket := func() {
		_ = c.nc.Close() // graceful for TLS (close_notify); the raw close follows
		c.close()
	}
	closeFirst := c.srv.cfg.Version != V1_10
	if closeFirst {
		closeSocket()
	}
	c.srv.hub.removeConn(c)
	c.srv.locks.disconnect(c.id, !c.srv.cfg.DisableAutoRelease)
	c.srv.removeConn(c)
	if !closeFirst {
		closeSocket()
	}
	close(c.finished)
	c.srv.log.Debug("testutil: connection closed", "conn", c.id)
}

// readFailed answers a fatal read error (§4): `error` for a timeout or an
// over-long line, nothing if the peer is gone. Before authentication every
// read error is a failed auth, the peer's EOF included, as in dflockd:
// `error_auth` (which a peer that only half-closed still reads), then the
// pause, during which the connection still counts.
func (c *conn) readFailed(err error) {
	if c.closing() {
		return
	}
	c.srv.log.Debug("testutil: read failed", "conn", c.id, "err", err)
	if c.srv.authToken != "" && !c.authed {
		c.failAuth()
		return
	}
	if !errors.Is(err, errLineTooLong) && !isTimeout(err) {
		return
	}
	c.reply("error")
	_ = c.flush()
}

func (c *conn) failAuth() {
	c.reply("error_auth")
	_ = c.flush()
	delay, stop := clockTimer(c.srv.clock, authFailDelay)
	defer stop()
	select {
	case <-delay:
	case <-c.done:
	}
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// readRequest reads the three lines of one request.
func (c *conn) readRequest() (request, error) {
	for c.lineIdx < 3 {
		limit := maxLineBytes
		if c.lineIdx == 2 {
			limit = c.srv.cfg.Version.argCap(c.bufs[0])
		}
		if _, err := c.readLine(c.lineIdx, limit); err != nil {
			if isTimeout(err) {
				// A deadline that passes while the server is paused times
				// the connection out when it resumes, as dflockd's does
				// (its timer fires on resume); not before.
				if !c.awaitStall() {
					return request{}, net.ErrClosed
				}
			}
			return request{}, err
		}
		if c.armed && c.raw != nil && c.raw.readInPause.Load() && c.pausedDeadline.IsZero() && c.srv.cfg.ReadTimeout > 0 {
			c.pausedDeadline = c.armedAt.Add(c.srv.cfg.ReadTimeout)
		}
		c.lineIdx++
	}
	c.lineIdx = 0
	return request{cmd: lookupCmd(c.bufs[0]), key: c.bufs[1], arg: c.bufs[2]}, nil
}

// timedOutInPause reports, once the stall a request came in during has
// ended, whether the paused process would have timed its connection out
// instead of reading the request: dflockd, resumed, finds both the data
// and its expired read deadline, and the deadline wins that race about a
// quarter of the time (measured against a SIGSTOPped v1.10.0). testutil
// always lets it win, the harsher branch for a client.
func (c *conn) timedOutInPause() bool {
	d := c.pausedDeadline
	c.pausedDeadline = time.Time{}
	return !d.IsZero() && !d.After(c.srv.lastStallEnd())
}

// readLine reads line i into c.bufs[i] with the semantics of the server's
// ReadLine: the cap counts every byte before '\n' (a '\r' included), an
// over-long line is drained to its '\n' and then fails, and all trailing
// '\r' are stripped.
func (c *conn) readLine(i, limit int) ([]byte, error) {
	if !c.inLine {
		c.inLine, c.tooLong = true, false
		c.bufs[i] = c.bufs[i][:0]
		c.armed = false
		if !c.lineBuffered() {
			c.armed = true
			if c.raw != nil {
				c.raw.readInPause.Store(false)
			}
			// About to block on the socket: the client may be waiting for
			// the answers to what it sent so far. On a clock the test
			// drives, the timeout is armed before they leave, so that a
			// test holding a reply can advance the clock past it.
			real := isRealClock(c.srv.clock)
			if !real {
				c.armDeadline()
			}
			if err := c.flush(); err != nil {
				return nil, err
			}
			if real {
				c.armDeadline()
			}
		}
	}
	for {
		frag, err := c.br.ReadSlice('\n')
		n := len(frag)
		if err == nil {
			n-- // the '\n'
		}
		if !c.tooLong {
			if len(c.bufs[i])+n > limit {
				c.tooLong = true
			} else {
				c.bufs[i] = append(c.bufs[i], frag[:n]...)
			}
		}
		if err == nil {
			c.inLine = false
			if c.tooLong {
				return nil, errLineTooLong
			}
			c.bufs[i] = bytes.TrimRight(c.bufs[i], "\r")
			return c.bufs[i], nil
		}
		if err != bufio.ErrBufferFull {
			if c.tooLong && !isTimeout(err) {
				// The peer went away (EOF, reset) while the server drained
				// an over-long line: still the over-long line's error, as
				// dflockd reports it. A timeout keeps its own path (a
				// stalled server resumes the drain; otherwise it answers
				// `error` all the same).
				c.inLine = false
				return nil, errLineTooLong
			}
			return nil, err
		}
	}
}

// lineBuffered reports whether a whole line is already buffered, in which
// case reading it cannot block and needs no deadline.
func (c *conn) lineBuffered() bool {
	n := c.br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := c.br.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}

// armDeadline sets the per-line read deadline (§2), which also bounds the
// idle wait for the next request (§8c).
func (c *conn) armDeadline() {
	clk := c.srv.clock
	c.armedAt = clk.Now()
	rt := c.srv.cfg.ReadTimeout
	if isRealClock(clk) {
		var d time.Time
		if rt > 0 {
			d = c.armedAt.Add(rt)
		}
		_ = c.nc.SetReadDeadline(d)
		return
	}
	// The kernel knows only real time, so the read timeout is a timer on
	// the server's clock that, when it fires, sets a deadline in the past:
	// the blocked read fails with os.ErrDeadlineExceeded as it would have.
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	c.disarmDeadlineLocked()
	_ = c.nc.SetReadDeadline(time.Time{})
	if rt <= 0 {
		return
	}
	gen, at := c.dlGen, c.armedAt.Add(rt)
	expire := func() { _ = c.nc.SetReadDeadline(time.Unix(1, 0)) }
	c.dlTimer = clk.AfterFunc(at.Sub(clk.Now()), func() {
		c.dlMu.Lock()
		defer c.dlMu.Unlock()
		if c.dlGen == gen {
			expire()
		}
	})
	// As in clockTimerAt: the clock may have passed at since armedAt was read.
	if !clk.Now().Before(at) && c.dlTimer.Stop() {
		expire()
	}
}

// disarmDeadline cancels a pending read timeout on a non-real clock, so that
// it cannot fire into a read that must not time out (a parked waiter's).
func (c *conn) disarmDeadline() {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	c.disarmDeadlineLocked()
}

func (c *conn) disarmDeadlineLocked() {
	c.dlGen++
	if c.dlTimer != nil {
		c.dlTimer.Stop()
		c.dlTimer = nil
	}
}

// awaitStall blocks while the server is stalled; false if the connection
// closed meanwhile. Replies already buffered stay buffered: a stalled server
// writes nothing (countedConn holds any write that gets that far).
func (c *conn) awaitStall() bool { return c.srv.awaitStallOr(c.done) }

// Writing.

func (c *conn) reply(status string) {
	c.wmu.Lock()
	if c.werr == nil {
		_, _ = c.bw.WriteString(status)
		c.werr = c.bw.WriteByte('\n')
		c.endLineLocked()
	}
	c.wmu.Unlock()
}

// replyExtra writes `<status> <extra>`.
func (c *conn) replyExtra(status string, extra []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	if n := len(status) + 1 + len(extra) + 1; c.perWrite && n > c.bw.Available() {
		// Written in pieces, a line longer than the buffer would leave in
		// several writes; as one slice into the empty buffer it leaves in
		// one (bufio writes an oversize slice straight through).
		line := make([]byte, 0, n)
		line = append(append(append(append(line, status...), ' '), extra...), '\n')
		_, c.werr = c.bw.Write(line)
		return
	}
	_, _ = c.bw.WriteString(status)
	_ = c.bw.WriteByte(' ')
	_, _ = c.bw.Write(extra)
	c.werr = c.bw.WriteByte('\n')
	c.endLineLocked()
}

// replyGrant writes `<status> <token> <lease>`.
func (c *conn) replyGrant(status, token string, lease int64) {
	var b [96]byte
	line := append(b[:0], status...)
	line = append(line, ' ')
	line = append(line, token...)
	line = append(line, ' ')
	line = strconv.AppendInt(line, lease, 10)
	line = append(line, '\n')
	c.wmu.Lock()
	if c.werr == nil {
		_, c.werr = c.bw.Write(line)
		c.endLineLocked()
	}
	c.wmu.Unlock()
}

// endLineLocked ends a reply or push line: with ReplyPerWrite it leaves at
// once in a write of its own (the buffer held nothing before it, since
// every earlier line was flushed the same way). c.wmu must be held.
func (c *conn) endLineLocked() {
	if c.perWrite && c.werr == nil {
		c.werr = c.bw.Flush()
	}
}

func (c *conn) replyInt(status string, n int64) {
	var b [24]byte
	c.replyExtra(status, strconv.AppendInt(b[:0], n, 10))
}

func (c *conn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr == nil && c.bw.Buffered() > 0 {
		c.werr = c.bw.Flush()
	}
	return c.werr
}

func (c *conn) writeErr() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.werr
}

// Dispatch.

var outcomeWords = [...]string{
	outTimeout:         "timeout",
	outMaxLocks:        "error_max_locks",
	outMaxWaiters:      "error_max_waiters",
	outLimitMismatch:   "error_limit_mismatch",
	outAlreadyEnqueued: "error_already_enqueued",
	outNotEnqueued:     "error_not_enqueued",
	outLeaseExpired:    "error_lease_expired",
	outFailed:          "error",
}

// handle executes one request; false means the connection must close.
func (c *conn) handle(req request) bool {
	s := c.srv
	v := s.cfg.Version
	if !v.supports(req.cmd) {
		c.reply("error")
		return true
	}
	switch req.cmd {
	case cmdStats:
		c.replyExtra("ok", s.statsJSON())
		return true
	case cmdPing:
		c.reply("ok")
		return true
	}
	if !validKey(req.key) {
		c.reply("error")
		return true
	}
	key := string(req.key)
	switch req.cmd {
	case cmdLock, cmdSemLock:
		return c.lock(key, req.arg, req.cmd == cmdSemLock)
	case cmdEnqueue, cmdSemEnqueue:
		return c.enqueue(key, req.arg, req.cmd == cmdSemEnqueue)
	case cmdWait, cmdSemWait:
		return c.wait(key, req.arg, req.cmd == cmdSemWait)
	case cmdRelease, cmdSemRelease:
		token := strings.TrimSpace(string(req.arg))
		if token == "" {
			c.reply("error")
			return true
		}
		switch s.locks.release(key, token, req.cmd == cmdSemRelease) {
		case outGranted:
			c.reply("ok")
		case outStopped:
			return false
		default:
			c.reply("error")
		}
	case cmdRenew, cmdSemRenew:
		token, lease, ok := v.parseRenewArg(req.arg, s.defaultLease)
		if !ok {
			c.reply("error")
			return true
		}
		switch s.locks.renew(key, token, req.cmd == cmdSemRenew, lease) {
		case outGranted:
			c.replyInt("ok", lease)
		case outStopped:
			return false
		default:
			c.reply("error")
		}
	case cmdListen, cmdUnlisten:
		if !validPattern(key) {
			c.reply("error")
			return true
		}
		group := strings.TrimSpace(string(req.arg))
		if req.cmd == cmdUnlisten {
			s.hub.unlisten(c, key, group)
			c.reply("ok")
			return true
		}
		c.ensureWriter()
		if s.hub.listen(c, key, group) {
			c.reply("ok")
		} else {
			c.reply("error")
		}
	case cmdSignal:
		c.signal(key, req.arg)
	}
	return true
}

func (c *conn) lock(key string, arg []byte, sem bool) bool {
	s := c.srv
	a, ok := s.cfg.Version.parseLockArg(arg, sem, s.defaultLease)
	if !ok {
		c.reply("error")
		return true
	}
	out, token, w := s.locks.acquire(c.id, key, sem, a)
	switch out {
	case outGranted:
		c.replyGrant("ok", token, a.lease)
	case outQueued:
		return c.park(w, a.timeout)
	case outStopped:
		return false
	default:
		c.reply(outcomeWords[out])
	}
	return true
}

func (c *conn) enqueue(key string, arg []byte, sem bool) bool {
	s := c.srv
	a, ok := s.cfg.Version.parseEnqueueArg(arg, sem, s.defaultLease)
	if !ok {
		c.reply("error")
		return true
	}
	switch out, token := s.locks.enqueue(c.id, key, sem, a); out {
	case outGranted:
		c.replyGrant("acquired", token, a.lease)
	case outQueued:
		c.reply("queued")
	case outStopped:
		return false
	default:
		c.reply(outcomeWords[out])
	}
	return true
}

func (c *conn) wait(key string, arg []byte, sem bool) bool {
	s := c.srv
	timeout, ok := s.cfg.Version.parseWaitArg(arg)
	if !ok {
		c.reply("error")
		return true
	}
	out, token, lease, w := s.locks.wait(c.id, key, sem)
	switch {
	case out == outGranted:
		c.replyGrant("ok", token, lease)
	case out == outStopped:
		return false
	case out != outQueued:
		c.reply(outcomeWords[out])
	case timeout > 0:
		return c.park(w, timeout)
	case s.locks.withdraw(w):
		c.reply("timeout")
	default: // granted in the meantime
		c.replyGrant("ok", w.h.token, w.leaseSecs)
	}
	return true
}

// park blocks the connection on a queued waiter until it is granted, the
// timeout passes, the server drains, or the connection goes away (§6.2, §8f).
// It returns false if the connection must close.
func (c *conn) park(w *waiter, timeout int64) bool {
	s := c.srv
	// The client may be waiting for answers to earlier pipelined requests.
	if c.flush() != nil {
		if s.cfg.Version == V1_10 {
			s.locks.withdraw(w) // a grant that won the race is released on disconnect
		} else {
			s.locks.undo(w)
		}
		return false
	}
	// v1.10 does not watch the peer while a waiter is parked (§8e): an
	// abandoned waiter stays queued, counting against MaxWaiters, until its
	// timeout; if it is granted first, the reply's write or the next read
	// fails and finish auto-releases the grant to the next waiter.
	var gone <-chan struct{}
	if s.cfg.Version != V1_10 {
		var stop func()
		gone, stop = c.watchPeer()
		defer stop()
	}
	// Counted from when the table queued the waiter, so that a test that
	// sees the waiter in Stats and advances a ManualClock past the timeout
	// gets the timeout even if this timer is armed only afterwards.
	timedOut, stop := clockTimerAt(s.clock, w.parkedAt.Add(seconds(timeout)))
	defer stop()

	var word string
	select {
	case <-w.ready:
		c.replyGrant("ok", w.h.token, w.leaseSecs)
		return true
	case <-timedOut:
		word = "timeout"
	case <-s.drainCh:
		word = "error" // §8j: blocked waiters fail at once
	case <-c.done:
		if gone != nil {
			s.locks.undo(w)
		} else {
			s.locks.withdraw(w)
		}
		return false
	case <-gone:
		s.locks.undo(w)
		c.close()
		return false
	}
	if s.locks.withdraw(w) {
		c.reply(word)
	} else {
		c.replyGrant("ok", w.h.token, w.leaseSecs)
	}
	return true
}

// watchPeer imitates v1.15 watchPeerClose: while the serve goroutine is
// parked, read ahead into the buffered reader (consuming nothing) so that a
// peer close or half-close is noticed and the waiter withdrawn. Pipelined
// bytes that fill the whole read buffer are treated as abuse. The returned
// channel is closed in either case; stop ends the watch and waits for it.
func (c *conn) watchPeer() (gone <-chan struct{}, stop func()) {
	ch := make(chan struct{})
	exited := make(chan struct{})
	var stopping atomic.Bool
	// A blocking wait may outlast the read timeout (§8c).
	c.disarmDeadline()
	_ = c.nc.SetReadDeadline(time.Time{})
	c.srv.wg.Add(1)
	go func() {
		defer c.srv.wg.Done()
		defer close(exited)
		for {
			n := c.br.Buffered()
			if n >= c.br.Size() {
				c.srv.log.Warn("testutil: pipelined data filled the read buffer during a blocking wait; closing", "conn", c.id)
				close(ch)
				return
			}
			if _, err := c.br.Peek(n + 1); err != nil {
				if !stopping.Load() {
					close(ch)
				}
				return
			}
		}
	}()
	return ch, func() {
		stopping.Store(true)
		_ = c.nc.SetReadDeadline(time.Unix(1, 0)) // wakes the Peek; the next read re-arms
		<-exited
	}
}

func (c *conn) signal(channel string, arg []byte) {
	payload := string(arg)
	if strings.ContainsAny(channel, "*>") || strings.TrimSpace(payload) == "" ||
		len(payload) > maxLargeBytes-5-len(channel) {
		c.reply("error")
		return
	}
	n, victims := c.srv.hub.signal(channel, payload)
	for _, v := range victims {
		c.srv.log.Warn("testutil: signal push buffer full; disconnecting listener", "conn", v.id)
		v.close()
	}
	c.replyInt("ok", int64(n))
}

// countedConn wraps an accepted socket: it counts Read calls that returned
// data (Stats.Reads) and Write calls, gives every socket write its own
// WriteTimeout, and holds every read and write while the server is stalled
// (so that no path — reply, push, TLS record, auth failure — can slip a byte
// past a Stall). A read already blocked in the kernel when a stall begins
// is not interrupted, but what it returns is not acted on until the stall
// ends (conn.serve checks the stall again before handling a request).
type countedConn struct {
	net.Conn
	reads, writes *atomic.Int64
	writeTimeout  time.Duration
	stall         func() chan struct{} // Server.stallGate
	closed        chan struct{}        // closed by Close
	closeOnce     sync.Once
	// readInPause: a Read returned bytes that came in during a stall (see
	// conn.readRequest); the reader clears it before each blocking read.
	readInPause atomic.Bool
}

// hold waits out a stall; false if the connection was closed meanwhile.
func (c *countedConn) hold() bool {
	_, ok := c.holdWaited()
	return ok
}

// holdWaited is hold, and reports whether there was a stall to wait out.
func (c *countedConn) holdWaited() (waited, ok bool) {
	for {
		gate := c.stall()
		if gate == nil {
			return waited, true
		}
		waited = true
		select {
		case <-gate:
		case <-c.closed:
			return waited, false
		}
	}
}

func (c *countedConn) Read(p []byte) (int, error) {
	if !c.hold() {
		return 0, net.ErrClosed
	}
	n, err := c.Conn.Read(p)
	// A read already waiting in the kernel when a stall began returns
	// during it: what it got (bytes, EOF, a reset) is acted on only after
	// the stall, as a paused process would.
	waited, ok := c.holdWaited()
	if !ok {
		return 0, net.ErrClosed
	}
	if waited && n > 0 {
		c.readInPause.Store(true)
	}
	if n > 0 {
		c.reads.Add(1)
	}
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	if !c.hold() {
		return 0, net.ErrClosed
	}
	c.writes.Add(1)
	if c.writeTimeout > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	}
	return c.Conn.Write(p)
}

func (c *countedConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// countingListener wraps accepted sockets in countedConn, beneath any TLS layer.
type countingListener struct {
	net.Listener
	reads, writes *atomic.Int64
	writeTimeout  time.Duration
	stall         func() chan struct{}
}

func (l *countingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: nc, reads: l.reads, writes: l.writes, writeTimeout: l.writeTimeout,
		stall: l.stall, closed: make(chan struct{})}, nil
}

// secretMatches compares the trimmed auth arg with the token in constant time.
func secretMatches(arg []byte, token string) bool {
	return subtle.ConstantTimeCompare(bytes.TrimSpace(arg), []byte(token)) == 1
}
