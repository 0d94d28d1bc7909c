package pool

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/wire"
)

// laneConn is a control-lane connection: shared by every goroutine, long
// lived, owner of the leases granted on it. It is never closed because one
// caller gave up, and it carries only small non-blocking commands. Requests
// reach it through Pool.Do; the renewal scheduler and releases reach it as
// the lease Owner that Pool.Do returned, which is all a caller needs of it.
type laneConn struct {
	c *conn
}

// SendBatch implements Owner.SendBatch. A request the lane must not carry
// (laneCheck, as Pool.Do) is answered with its error at once and not sent:
// a blocking acquire would park every lease on the connection behind it,
// an over-long line would make the server close it.
func (l *laneConn) SendBatch(reqs []wire.Request, done func(i int, r wire.Reply, err error)) {
	for i := range reqs {
		if laneCheck(&reqs[i]) != nil {
			l.sendLaneSafe(reqs, done)
			return
		}
	}
	l.c.sendBatch(reqs, done)
}

// sendLaneSafe is SendBatch for a batch with requests laneCheck refuses.
func (l *laneConn) sendLaneSafe(reqs []wire.Request, done func(i int, r wire.Reply, err error)) {
	done = orDiscard(done)
	var safe []wire.Request
	var index []int // in reqs, of safe's requests
	for i := range reqs {
		if err := laneCheck(&reqs[i]); err != nil {
			done(i, wire.Reply{}, err)
			continue
		}
		safe = append(safe, reqs[i])
		index = append(index, i)
	}
	if len(safe) > 0 {
		l.c.sendBatch(safe, func(i int, r wire.Reply, err error) { done(index[i], r, err) })
	}
}

// Request implements Owner.Request; a request laneCheck refuses is not
// sent (see SendBatch).
func (l *laneConn) Request(ctx context.Context, req wire.Request, late func(i int, r wire.Reply, err error)) (wire.Reply, bool, error) {
	if err := laneCheck(&req); err != nil {
		return wire.Reply{}, true, err
	}
	return l.c.request(ctx, &req, late)
}

// Err implements Owner.Err.
func (l *laneConn) Err() error { return l.c.Err() }

// Do sends a non-blocking request (try-acquire, renew, release, ping,
// signal) on the control lane and waits for its reply. The returned Owner
// is the lane connection that carried it: for a grant it is the lease owner
// (and the owner Config.OnConnBroken later reports). It is non-nil whenever
// a lane connection was chosen, even with an error. A
// request that could not be sent because its connection had just broken is
// retried on another lane connection (nothing reached the server).
//
// If ctx ends first Do returns an error matching ctx.Err(); the lane
// connection is NOT closed (it may own other leases): the reply is still
// read, and a grant that arrives for an abandoned l/sl request is released
// at once on the same connection.
//
// Requests that could stall or break a shared connection — blocking
// acquires, e/se/w/sw, stats, listen/unlisten, auth, and any request whose
// encoded line exceeds wire.MaxLine (the cap of servers before v1.15) — are
// refused with an error naming the command. Requests are otherwise not
// validated here: package dflock validates them at its API (see framed for
// the one check that is made again). The lane picks the healthy connection
// with the fewest replies pending (ties to the first), which concentrates
// light load on one connection so that it coalesces, and spreads heavy load.
func (p *Pool) Do(ctx context.Context, req wire.Request) (wire.Reply, Owner, error) {
	if err := laneCheck(&req); err != nil {
		return wire.Reply{}, nil, err
	}
	grantKey := ""
	if req.Cmd == wire.CmdLock || req.Cmd == wire.CmdSemLock {
		grantKey = req.Key // laneCheck admits no other grant-carrying command
	}
	for attempt := 0; ; attempt++ {
		l, err := p.pickLane(ctx, p.lifeDone)
		if err != nil {
			return wire.Reply{}, nil, err
		}
		r, sent, _, err := l.c.do(ctx, &req, grantKey)
		if !sent && err != nil && l.c.errp.Load() != nil && attempt <= len(p.lanes) {
			// The connection broke before the request went out (between
			// the choice and the send, or under a write that wrote
			// nothing): another lane connection may carry it. Each retry
			// follows a broken lane, so all of them may have broken at
			// once (a reset of every connection) and a fresh dial, the
			// last attempt, carries it.
			continue
		}
		return r, l, err
	}
}

// Lane returns a healthy lane connection, dialling one if there is none,
// for requests sent with its SendBatch (which must be lane-safe). Unlike Do
// it does not end with Config.Lifetime: a Client that is closing sends its
// last releases through it, until the pool itself closes.
func (p *Pool) Lane(ctx context.Context) (Owner, error) {
	l, err := p.pickLane(ctx, nil)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// errNotLaneSafe matches the error of a request refused by the control lane.
var errNotLaneSafe = errors.New("dflock: request not allowed on the control lane")

// laneCheck refuses requests that must not share a lease-owning connection.
func laneCheck(req *wire.Request) error {
	switch req.Cmd {
	case wire.CmdLock, wire.CmdSemLock:
		if req.Blocking() {
			return fmt.Errorf("%w: %s with a timeout > 0 blocks the connection", errNotLaneSafe, req.Cmd)
		}
	case wire.CmdRelease, wire.CmdSemRelease, wire.CmdRenew, wire.CmdSemRenew, wire.CmdPing, wire.CmdSignal:
	default:
		return fmt.Errorf("%w: %s", errNotLaneSafe, req.Cmd)
	}
	if n := req.LineLen(); n > wire.MaxLine {
		return fmt.Errorf("%w: %s has a %d-byte line (over %d)", errNotLaneSafe, req.Cmd, n, wire.MaxLine)
	}
	return nil
}

type laneSlot struct {
	conn     atomic.Pointer[laneConn]
	dialling bool // a dial for this slot is in progress; under p.mu
}

// pickLane returns a healthy lane connection, dialling if there is none.
// A healthy lane connection is used even while the server is marked down
// (the down state only stops new dials; the probe makes them); with none,
// a down server fails fast. A wait for a dial also ends when life does
// (Config.Lifetime's Done for Do, whose callers Close waits for; nil for
// Lane).
func (p *Pool) pickLane(ctx context.Context, life <-chan struct{}) (*laneConn, error) {
	var dialErr error
	for {
		if p.closed.Load() {
			return nil, serverErr(p.cfg.Addr, ErrClosed, nil)
		}
		if best, missing := p.bestLane(); best != nil && !missing {
			return best, nil
		}
		if p.afterLaneScan != nil {
			p.afterLaneScan()
		}
		// After a failed dial, wait only for dials already in progress
		// (another slot's may succeed) instead of starting new ones.
		best, ended, fails := p.kickLaneDials(dialErr == nil)
		if best != nil {
			return best, nil
		}
		if ended == nil {
			if dialErr != nil {
				return nil, dialErr
			}
			if err := p.usable(); err != nil {
				return nil, err
			}
			continue // a lane connection broke, or the server came up, since the kick
		}
		select {
		case <-ended:
			if err := p.laneDialFailedSince(fails); err != nil {
				dialErr = err
			}
		case <-ctx.Done():
			return nil, serverErr(p.cfg.Addr, ctx.Err(), laneWaitingFor(dialErr))
		case <-life:
			// The owner (the Client) is closing: it waits for this
			// caller before it closes the pool, which ends the dial.
			return nil, serverErr(p.cfg.Addr, ErrClosed, nil)
		}
	}
}

// laneWaitingFor says what a pickLane whose context ended was waiting
// for, dialErr being the failure of a lane dial it saw (nil if none): in
// words only, since the caller's context ended it. Without it, a call's
// first use of a server that accepts connections but never answers the
// handshake reads like a contended key (as waitingFor's does for the wait
// pool).
func laneWaitingFor(dialErr error) error {
	if dialErr != nil {
		return fmt.Errorf("waiting for a control-lane connection being dialled, after a failed dial: %v", causeOf(dialErr))
	}
	return errors.New("waiting for a control-lane connection being dialled")
}

// lanesBusy reports whether a lane connection other than c has replies
// pending: a sign that other goroutines are sending now.
func (p *Pool) lanesBusy(c *conn) bool {
	for i := range p.lanes {
		if l := p.lanes[i].conn.Load(); l != nil && l.c != c && l.c.inflight.Load() > 0 {
			return true
		}
	}
	return false
}

// bestLane returns the healthy lane connection with the fewest replies
// pending (ties to the first; nil if none), and whether a slot is empty or
// broken.
func (p *Pool) bestLane() (best *laneConn, missing bool) {
	var bestN int32
	for i := range p.lanes {
		l := p.lanes[i].conn.Load()
		if l == nil || l.c.errp.Load() != nil {
			missing = true
			continue
		}
		if n := l.c.inflight.Load(); best == nil || n < bestN {
			best, bestN = l, n
		}
	}
	return best, missing
}

// kickLaneDials starts a dial (if start) for every empty or broken lane
// slot that has none in progress, unless the pool is closed or the server
// down, and returns the best healthy lane connection (as bestLane). With
// none and a dial in progress, it also returns a channel closed when the
// next lane dial ends and the count of failed lane dials so far (for
// laneDialFailedSince); ended is nil when no dial is in progress. The
// channel stands for every slot's dial: waiting for one slot's in
// particular held a caller, while that dial hung, beside a healthy
// connection another slot's dial had brought.
//
// It scans under p.mu, which dialLane holds to store its connection and
// end its dial, so every slot is either dialling or settled: pickLane's
// lock-free scan can miss a dial that finishes just after it, and taking
// that slot for neither healthy nor dialling failed a caller with another
// slot's dial error while that slot had a healthy connection.
func (p *Pool) kickLaneDials(start bool) (best *laneConn, ended <-chan struct{}, fails uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	dialling := false
	for i := range p.lanes {
		s := &p.lanes[i]
		if s.dialling {
			dialling = true
			continue
		}
		if l := s.conn.Load(); l != nil && l.c.errp.Load() == nil {
			continue
		}
		if !start || p.closed.Load() || p.down.Load() != nil {
			continue
		}
		s.dialling, dialling = true, true
		p.bg.Add(1)
		go p.dialLane(s)
	}
	if best, _ = p.bestLane(); best != nil || !dialling {
		return best, nil, 0
	}
	if p.laneDialEnd == nil {
		p.laneDialEnd = make(chan struct{})
	}
	return nil, p.laneDialEnd, p.laneDialFails
}

// laneDialFailedSince returns the last lane dial failure if a lane dial
// failed after kickLaneDials counted fails, else nil.
func (p *Pool) laneDialFailedSince(fails uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.laneDialFails == fails {
		return nil
	}
	return p.laneDialErr
}

func (p *Pool) dialLane(s *laneSlot) {
	defer p.bg.Done()
	l, err := p.dialLaneConn(p.ctx, false)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		s.conn.Store(l)
	} else {
		p.laneDialFails++
		p.laneDialErr = err
	}
	s.dialling = false
	if p.laneDialEnd != nil {
		close(p.laneDialEnd)
		p.laneDialEnd = nil // the next waiter makes a new one
	}
}

// dialLaneConn dials a connection for the lane (for the probe if probe is
// set). A network failure marks the server down (see dialFailed).
func (p *Pool) dialLaneConn(ctx context.Context, probe bool) (*laneConn, error) {
	l := &laneConn{}
	_, err := p.dialAs(ctx, roleLane, probe, p.cfg.maxReplyLine, func(c *conn) {
		c.owner = l // for OnConnBroken: the lane connection owns its leases
		c.oneBatch = true
		l.c = c
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// adoptLane puts a freshly dialled lane connection into an empty slot, or
// closes it if there is none.
func (p *Pool) adoptLane(l *laneConn) {
	p.mu.Lock()
	for i := range p.lanes {
		s := &p.lanes[i]
		if old := s.conn.Load(); !s.dialling && (old == nil || old.c.errp.Load() != nil) {
			s.conn.Store(l)
			p.mu.Unlock()
			return
		}
	}
	p.mu.Unlock()
	l.c.fail(errDestroyed)
}

// SettleLanes waits, until deadline, for every healthy lane connection to
// have no reply pending but those of keepalive pings: Close ends the calls in progress (Config.Lifetime)
// but their requests are on the wire, and a grant among their answers,
// released by the reader since its caller gave up (see Do), would
// otherwise be answered to a closed connection — held by nobody on a
// server with auto-release off. An answer being delivered counts as
// pending: its delivery may queue that release; so does a broken lane
// connection whose reader has not exited, since a grant it read as the
// connection broke goes to Config.OnReleaseLost. It polls every
// millisecond: it runs once, in Client.Close.
func (p *Pool) SettleLanes(deadline time.Time) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		busy := false
		for i := range p.lanes {
			// pending, delivering, pending again: a delivery that ends
			// between the first two reads queued its release (if any)
			// before, so the third sees it.
			l := p.lanes[i].conn.Load()
			if l == nil {
				continue
			}
			if l.c.errp.Load() != nil {
				// Broken: its reader may hold a grant read as fail
				// emptied the queue, on its way to OnReleaseLost.
				if !l.c.readerExited() {
					busy = true
					break
				}
				continue
			}
			if l.c.pendingNotPing() > 0 || l.c.delivering.Load() > 0 || l.c.pendingNotPing() > 0 {
				busy = true
				break
			}
		}
		if !busy {
			return
		}
		<-tick.C
	}
}
