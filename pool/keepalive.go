package pool

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/dflock-sdk/go/wire"
	"github.com/jackc/puddle/v2"
)

// never is a p.now() that is never reached.
const never = math.MaxInt64

// Backoff of the down-server probe (full jitter: each wait is uniform in
// [0, backoff)).
const (
	probeMinBackoff = 50 * time.Millisecond
	probeMaxBackoff = 2 * time.Second
)

// janitor is the pool's one background loop. It wakes when the earliest
// connection is due for a keepalive (never later than KeepAlive after the
// previous wake), pings every connection — lane, idle or acquired — that
// has written nothing for KeepAlive and has no blocking request in flight,
// breaks connections whose ping went unanswered for 2·KeepAlive, and
// closes idle wait-pool connections that broke, that exceed
// Config.MaxIdleConns, or that have been idle for Config.MaxConnIdleTime
// (it also wakes when the longest-idle one is due to expire).
//
// Idle connections are pinged in place rather than taken out with
// AcquireAllIdle: a Conn is pipelined and goroutine-safe, so a ping that
// races with an Acquire is simply answered first; taking them out would make
// concurrent Acquires dial new connections. AcquireAllIdle is used only when
// some idle connection is to be closed.
func (p *Pool) janitor() {
	defer p.bg.Done()
	ka := int64(p.cfg.KeepAlive)
	minWait := max(ka/16, int64(time.Millisecond))
	t := time.NewTimer(p.cfg.KeepAlive)
	defer t.Stop()
	var conns []*conn
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		now := p.now()
		next := satAdd(now, ka)
		conns = p.snapshot(conns[:0])
		for _, c := range conns {
			if n := c.keepalive(now, ka); n >= 0 && n < next {
				next = n
			}
		}
		clear(conns)
		sweep := p.needSweep.Swap(false)
		if p.idleDue.Load() <= now || p.pp.Stat().IdleResources() > p.cfg.MaxIdleConns {
			sweep = true
		}
		if sweep {
			p.sweepIdle(now)
		}
		next = min(next, p.idleDue.Load())
		t.Reset(time.Duration(max(next-p.now(), minWait)))
	}
}

// sweepIdle closes the idle wait-pool connections that broke, that have
// been idle for MaxConnIdleTime, and, of the rest, those beyond MaxIdleConns
// that have been idle longest (pgxpool style: take every idle resource,
// destroy the bad, hand the rest back). The most recently used are kept
// because they are the last to expire. now is p.now() at the call.
func (p *Pool) sweepIdle(now int64) {
	// Reset before taking the idle ones out: a connection released from
	// here on lowers idleDue itself; every one released before is in idle.
	p.idleDue.Store(never)
	idle := p.pp.AcquireAllIdle()
	slices.SortFunc(idle, func(a, b *puddle.Resource[*conn]) int {
		return cmp.Compare(a.IdleDuration(), b.IdleDuration())
	})
	limit := int64(p.cfg.MaxConnIdleTime)
	kept, due := int32(0), int64(never)
	for _, res := range idle {
		c := res.Value()
		d := int64(res.IdleDuration())
		switch {
		case c.errp.Load() != nil:
			res.Destroy()
		case kept >= p.cfg.MaxIdleConns || d >= limit:
			c.retired.Store(true)
			p.idleClosed.Add(1)
			res.Destroy()
		default:
			kept++
			due = min(due, satAdd(now, limit-d))
			// ReleaseUnused keeps the time it was last used.
			res.ReleaseUnused()
		}
	}
	p.lowerIdleDue(due)
}

// idleFrom records that a wait-pool connection is idle from t (p.now()),
// so that it expires no earlier than t + MaxConnIdleTime.
func (p *Pool) idleFrom(t int64) { p.lowerIdleDue(satAdd(t, int64(p.cfg.MaxConnIdleTime))) }

func (p *Pool) lowerIdleDue(due int64) {
	for {
		cur := p.idleDue.Load()
		if cur <= due || p.idleDue.CompareAndSwap(cur, due) {
			return
		}
	}
}

// markDown records that the server is unreachable and starts the probe if
// it is not running. The latest failure replaces the previous one. With
// unlessLive it does nothing while any connection to the server is alive.
func (p *Pool) markDown(err *ServerError, unlessLive bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		return
	}
	if unlessLive {
		for c := range p.conns {
			if c.errp.Load() == nil {
				return
			}
		}
	}
	if p.down.Load() == nil {
		// Before down is set: DownFor never pairs this outage with the
		// time an earlier one began.
		p.downSince.Store(p.stamp())
	}
	if p.down.Swap(err) == nil {
		p.log.Warn("dflock: server unavailable", "err", err.Cause)
		p.gate.broadcast() // callers waiting for a paced dial now fail fast
	}
	if !p.probing {
		p.probing = true
		p.bg.Add(1)
		go p.probe()
	}
}

// reached records a dial that reached the server (handshaken, or refused
// its auth token): up since now if it was down, else since the first such
// dial. upSince is stored before down is cleared, so that Stats never shows
// Up with the time from before an outage.
func (p *Pool) reached() {
	now := p.stamp()
	if p.down.Load() != nil {
		p.upSince.Store(now)
		p.markUp()
		return
	}
	p.upSince.CompareAndSwap(0, now)
}

// markUp clears the down state after a dial that reached the server.
func (p *Pool) markUp() {
	if p.down.Swap(nil) != nil {
		p.log.Info("dflock: server reachable again")
		p.gate.reset()
	}
}

// probe re-dials a down server with exponential backoff and full jitter
// until a dial succeeds (the connection becomes a lane connection) or fails
// for a reason other than the network (e.g. auth: the server is up), or the
// pool closes.
func (p *Pool) probe() {
	defer p.bg.Done()
	backoff := probeMinBackoff
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for {
		if p.probeDone() {
			return
		}
		t.Reset(rand.N(backoff))
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		if p.down.Load() == nil {
			continue // someone else's dial succeeded; probeDone decides
		}
		l, err := p.dialLaneConn(p.ctx, true)
		switch {
		case err == nil:
			p.adoptLane(l) // dial marked the server up
		case p.ctx.Err() != nil:
			return
		case p.down.Load() != nil && isUnavailable(err):
			backoff = min(2*backoff, probeMaxBackoff)
		default:
			// Reachable but refusing (auth, which handshake recorded
			// already, or draining): up, as far as failing fast goes.
			p.reached()
		}
	}
}

// probeDone ends the probe if the server is up, atomically with markDown's
// decision to start a new probe.
func (p *Pool) probeDone() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down.Load() != nil && !p.closed.Load() {
		return false
	}
	p.probing = false
	return true
}

// The keepalive of one connection (janitor above calls it): pings, and the
// cut of a connection whose server stopped answering.

const (
	pingUnknown uint32 = iota
	pingOK
	pingUnsupported
)

var pingReq = wire.Request{Cmd: wire.CmdPing}

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
