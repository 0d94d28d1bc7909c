package pool

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"time"

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
