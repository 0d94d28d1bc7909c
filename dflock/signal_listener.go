package dflock

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/pool"
	"github.com/dflock-sdk/go/wire"
)

// Backoff of listener dials and of re-listens the server refused
// (exponential, full jitter: each wait is uniform in [0, backoff)). The
// first dial after a quiet period (no dial for 2×listenMaxBackoff) is
// immediate, so a one-off break is repaired at once, while a server that
// keeps refusing or dropping the connection is retried ever more slowly.
const (
	listenMinBackoff = 50 * time.Millisecond
	listenMaxBackoff = 2 * time.Second
)

// pacer spaces the dials of one listener.
type pacer struct {
	last    time.Time
	backoff time.Duration
}

// next returns how long to wait before the next dial.
func (p *pacer) next() time.Duration {
	if p.last.IsZero() || time.Since(p.last) > 2*listenMaxBackoff {
		p.backoff = listenMinBackoff
		return 0
	}
	d := rand.N(p.backoff)
	p.backoff = min(2*p.backoff, listenMaxBackoff)
	return d
}

// signalHub owns the Client's listener connections and subscriptions, and
// the connections of long Emits.
//
// Connections are keyed by server and queue group: one per server for every
// non-grouped subscription (the reader matches each push against the local
// patterns and hands a copy to every matching subscription — the server
// sends a connection one copy however many of its patterns match), and one
// per (server, pattern, group) for queue groups: the server keys a group by
// (pattern, name) and picks one member connection per signal, and a push
// line does not say which subscription it is for, so each server-side group
// gets a connection of its own, and the local members sharing it take
// turns. Server-side subscriptions are reference-counted: `listen` when the
// first local subscription of a pattern appears on a connection, `unlisten`
// (or closing the connection) when the last one goes.
//
// Lock order: signalHub.mu, then listener.mu, then listener.rmu, then
// Subscription.mu (emitConn.mu and listener.noteMu are leaves).
type signalHub struct {
	mu        sync.Mutex
	closed    bool
	listeners map[listenerKey]*listener
	subs      map[*Subscription]struct{}
	emitters  map[*server]*emitConn
	wg        sync.WaitGroup // listener supervisors

	// testHookReply, when non-nil, is called by a supervisor before it
	// processes each reply to a batch of listens and unlistens. Tests set
	// it right after New (before any Listen) to hold a supervisor between
	// the server's `ok` and its processing; nil in production.
	testHookReply func()
}

type listenerKey struct {
	srv     *server
	group   string
	pattern string // queue-group connections only
}

// attachment is what Listen waits for: the confirmation of its pattern on
// one listener connection.
type attachment struct {
	l  *listener
	ch chan error // cap 1; nil error = listening
}

// attach registers s with the listener of every server in servers
// (creating listeners as needed). The returned attachments complete when
// each server confirmed the subscription (at once if it already had).
func (h *signalHub) attach(c *Client, s *Subscription, servers []*server) ([]attachment, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	if h.listeners == nil {
		h.listeners = make(map[listenerKey]*listener)
		h.subs = make(map[*Subscription]struct{})
	}
	waits := make([]attachment, 0, len(servers))
	for _, srv := range servers {
		key := listenerKey{srv: srv, group: s.group}
		if s.group != "" {
			key.pattern = s.pattern
		}
		l := h.listeners[key]
		if l == nil {
			l = newListener(c, key)
			h.listeners[key] = l
			h.wg.Add(1)
			go l.run()
		}
		s.attached = append(s.attached, l)
		waits = append(waits, attachment{l: l, ch: l.add(s)})
	}
	h.subs[s] = struct{}{}
	return waits, nil
}

// detach removes s from its listeners (once).
func (h *signalHub) detach(s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; !ok {
		return
	}
	delete(h.subs, s)
	for _, l := range s.attached {
		l.remove(s)
	}
}

// close ends every listener (closing its connection) and subscription, and
// the long-Emit connections, and waits for the supervisors. Client.Close
// calls it, once no operation is in progress, before closing the pools.
func (h *signalHub) close() {
	h.mu.Lock()
	h.closed = true
	ls, subs, ems := h.listeners, h.subs, h.emitters
	h.listeners, h.subs, h.emitters = nil, nil, nil
	h.mu.Unlock()
	for _, l := range ls {
		close(l.quit)
	}
	for _, e := range ems {
		e.close()
	}
	h.wg.Wait()
	closedErr := &bothError{domain: ErrSubscriptionClosed, cause: ErrClosed}
	for s := range subs {
		s.finish(closedErr)
	}
}

// emitter returns the long-Emit connection holder of srv, creating it.
func (h *signalHub) emitter(srv *server) (*emitConn, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	e := h.emitters[srv]
	if e == nil {
		if h.emitters == nil {
			h.emitters = make(map[*server]*emitConn)
		}
		e = &emitConn{srv: srv}
		h.emitters[srv] = e
	}
	return e, nil
}

// emitConn is the connection that the Emits of one server with a payload
// over 256 bytes share (see Client.Emit): a listener-type connection
// (pool.DialListener) that listens to nothing, so it owns no lease, is
// outside the wait pool (a full wait pool cannot delay it), and a server
// before v1.15 that closes it for a long line closes nothing else. Emits
// are pipelined on it. It is dialled on first use, re-dialled after it
// broke, and closed by Client.Close.
type emitConn struct {
	srv *server

	mu      sync.Mutex
	closed  bool
	conn    *pool.ListenerConn
	dialing chan struct{} // non-nil while a dial is in progress; closed when it ends
}

// get returns the live connection, dialling it (under ctx) if needed.
// Concurrent callers share one dial.
func (e *emitConn) get(ctx context.Context) (*pool.ListenerConn, error) {
	for {
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			return nil, ErrClosed
		}
		if e.conn != nil && e.conn.Err() == nil {
			conn := e.conn
			e.mu.Unlock()
			return conn, nil
		}
		if ch := e.dialing; ch != nil {
			e.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		old := e.conn
		e.conn = nil
		ch := make(chan struct{})
		e.dialing = ch
		e.mu.Unlock()
		if old != nil {
			old.Destroy() // broken already; this only settles the bookkeeping
		}
		conn, err := e.srv.pool.DialListener(ctx, func(wire.Push) {}, nil)
		e.mu.Lock()
		e.dialing = nil
		close(ch)
		if err == nil && e.closed {
			err = ErrClosed
		} else if err == nil {
			e.conn = conn
		}
		e.mu.Unlock()
		if err != nil {
			if conn != nil {
				conn.Destroy()
			}
			return nil, err
		}
		return conn, nil
	}
}

// discard destroys conn, and forgets it if it is still the current one.
func (e *emitConn) discard(conn *pool.ListenerConn) {
	e.mu.Lock()
	if e.conn == conn {
		e.conn = nil
	}
	e.mu.Unlock()
	conn.Destroy()
}

func (e *emitConn) close() {
	e.mu.Lock()
	e.closed = true
	conn := e.conn
	e.conn = nil
	e.mu.Unlock()
	if conn != nil {
		conn.Destroy()
	}
}

// listener is one listener connection (re-dialled as needed) and the local
// subscriptions it serves. Its supervisor goroutine (run) does all the I/O
// other than reading — dial, listen, unlisten, reconnect — and all the
// logging. Reading is done by the pool connection's reader, which calls
// onPush: it never blocks and never runs user code (not even a log
// handler); what it has to report it notes for the supervisor.
type listener struct {
	c    *Client
	srv  *server
	key  listenerKey
	wake chan struct{} // cap 1: there is work for the supervisor
	quit chan struct{} // closed by signalHub.close
	pace pacer         // supervisor only

	noteMu sync.Mutex
	slow   []*Subscription // slow-consumer episodes to log
	breaks []breakNote     // broken connections to log

	mu  sync.Mutex
	cur *lconn // the live connection; nil while (re)connecting
	// rmu guards, for the reader, the routing state: pats (membership),
	// wild, and each pat's subs and idx. They are written with both mu and
	// rmu held, and read under either.
	rmu    sync.RWMutex
	pats   map[string]*pat   // patterns with local subscriptions, or with server-side state to withdraw
	wild   []*pat            // the wildcard patterns of pats (pat.widx), scanned per push
	wanted int               // patterns of pats that have subscriptions
	dirty  map[*pat]struct{} // patterns whose server side the supervisor must bring in line
	retry  map[*pat]struct{} // refused re-listens, due again when the backoff timer fires
}

type breakNote struct {
	err  error
	subs int
}

// lconn is one connection of a listener.
type lconn struct {
	conn *pool.ListenerConn
	dead atomic.Bool // broken or retired: its pushes are ignored
}

// pat is one pattern of a listener and its local subscriptions. A pattern
// whose last subscription went stays (with no subscription) until the
// supervisor has withdrawn it from the server, so that a subscription of
// the same pattern arriving meanwhile finds it still listening.
type pat struct {
	pattern string
	wild    bool
	widx    int // index in listener.wild

	// Routing state, see listener.rmu.
	subs []*Subscription
	idx  map[*Subscription]int // position in subs, for O(1) removal

	// Under listener.mu.
	on      bool   // the server confirmed listen on the current connection
	sentOn  *lconn // a listen is in flight on this connection (cleared by its reply)
	waiters map[*Subscription]chan error
	rr      atomic.Uint64 // queue groups: whose turn it is
}

func newListener(c *Client, key listenerKey) *listener {
	return &listener{
		c:     c,
		srv:   key.srv,
		key:   key,
		wake:  make(chan struct{}, 1),
		quit:  make(chan struct{}),
		pats:  make(map[string]*pat),
		dirty: make(map[*pat]struct{}),
		retry: make(map[*pat]struct{}),
	}
}

func (l *listener) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// add registers s; the returned channel receives nil once the server
// listens for s's pattern on this connection, or the error that prevented
// it. O(1).
func (l *listener) add(s *Subscription) chan error {
	ch := make(chan error, 1)
	l.mu.Lock()
	p := l.pats[s.pattern]
	l.rmu.Lock()
	if p == nil {
		p = &pat{pattern: s.pattern, wild: isWildcard(s.pattern), idx: make(map[*Subscription]int)}
		l.pats[s.pattern] = p
		if p.wild {
			p.widx = len(l.wild)
			l.wild = append(l.wild, p)
		}
	}
	p.idx[s] = len(p.subs)
	p.subs = append(p.subs, s)
	l.rmu.Unlock()
	if len(p.subs) == 1 {
		l.wanted++
	}
	poke := false
	if p.on {
		// Still confirmed on the current connection (perhaps kept for an
		// unlisten that is no longer needed): no second listen.
		ch <- nil
	} else {
		if p.waiters == nil {
			p.waiters = make(map[*Subscription]chan error)
		}
		p.waiters[s] = ch
		l.dirty[p] = struct{}{}
		poke = true
	}
	l.mu.Unlock()
	if poke {
		l.poke()
	}
	return ch
}

// remove unregisters s (and its pending Listen, if any); the server-side
// subscription goes with the last local one. O(1).
func (l *listener) remove(s *Subscription) {
	l.mu.Lock()
	p := l.pats[s.pattern]
	if p == nil {
		l.mu.Unlock()
		return
	}
	i, ok := p.idx[s]
	if !ok {
		l.mu.Unlock()
		return
	}
	l.rmu.Lock()
	last := len(p.subs) - 1
	if i != last {
		moved := p.subs[last]
		p.subs[i] = moved
		p.idx[moved] = i
	}
	p.subs[last] = nil
	p.subs = p.subs[:last]
	delete(p.idx, s)
	l.rmu.Unlock()
	delete(p.waiters, s)
	poke := false
	if len(p.subs) == 0 {
		l.wanted--
		l.dirty[p] = struct{}{}
		poke = true
	}
	l.mu.Unlock()
	if poke {
		l.poke()
	}
}

// forgetLocked removes p, which has no subscription, from the listener.
// l.mu held.
func (l *listener) forgetLocked(p *pat) {
	l.rmu.Lock()
	if l.pats[p.pattern] == p {
		delete(l.pats, p.pattern)
		if p.wild {
			last := len(l.wild) - 1
			moved := l.wild[last]
			l.wild[p.widx] = moved
			moved.widx = p.widx
			l.wild[last] = nil
			l.wild = l.wild[:last]
		}
	}
	l.rmu.Unlock()
	delete(l.dirty, p)
	delete(l.retry, p)
}

// onPush returns the push handler of connection lc. It runs on lc's reader
// goroutine and never blocks: a literal pattern is found by one map lookup,
// wildcard patterns are matched one by one.
func (l *listener) onPush(lc *lconn) func(wire.Push) {
	return func(p wire.Push) {
		sig := Signal{Channel: p.Channel, Payload: p.Payload}
		l.rmu.RLock()
		if lc.dead.Load() {
			l.rmu.RUnlock()
			return
		}
		if l.key.group == "" {
			if pt := l.pats[p.Channel]; pt != nil {
				// A channel has no wildcard: this is the literal pattern
				// equal to it.
				l.deliverAll(pt.subs, sig)
			}
			for _, pt := range l.wild {
				if wire.MatchPattern(pt.pattern, p.Channel) {
					l.deliverAll(pt.subs, sig)
				}
			}
			l.rmu.RUnlock()
			return
		}
		// Queue group: the server chose this connection for this copy;
		// exactly one local member takes it, in turn, skipping members
		// whose buffer is full (as the server does). If all are full, the
		// drop is counted on the member whose turn it was.
		pt := l.pats[l.key.pattern]
		if pt == nil || len(pt.subs) == 0 {
			l.rmu.RUnlock()
			return
		}
		n := uint64(len(pt.subs))
		start := pt.rr.Add(1) - 1
		for j := uint64(0); j < n; j++ {
			if pt.subs[(start+j)%n].offer(sig) {
				l.rmu.RUnlock()
				return
			}
		}
		s := pt.subs[start%n]
		l.rmu.RUnlock()
		if s.drop() {
			l.noteSlow(s)
		}
	}
}

func (l *listener) deliverAll(subs []*Subscription, sig Signal) {
	for _, s := range subs {
		if !s.offer(sig) && s.drop() {
			l.noteSlow(s)
		}
	}
}

// noteSlow has the supervisor log the start of s's slow-consumer episode.
func (l *listener) noteSlow(s *Subscription) {
	l.noteMu.Lock()
	l.slow = append(l.slow, s)
	l.noteMu.Unlock()
	l.poke()
}

// logNotes logs what the reader and the break handler noted. Supervisor
// only: a slow log handler delays the supervisor, never the reader.
func (l *listener) logNotes() {
	l.noteMu.Lock()
	slow, breaks := l.slow, l.breaks
	l.slow, l.breaks = nil, nil
	l.noteMu.Unlock()
	for _, b := range breaks {
		l.c.log.Warn("dflock: signal listener connection lost; reconnecting",
			"server", l.srv.addr, "group", l.key.group, "subscriptions", b.subs, "err", b.err)
	}
	for _, s := range slow {
		s.warnSlow()
	}
}

// onBroken returns the break handler of connection lc: every subscription
// that was being served by it gets a gap, and the supervisor reconnects.
// It may run on any goroutine (lc's reader among them), so it does not
// log: it notes the break for the supervisor.
func (l *listener) onBroken(lc *lconn) func(error) {
	return func(err error) {
		// Under rmu: a delivery from lc in progress (another goroutine may
		// have broken lc under its reader) ends first, and none starts
		// after, so the gap follows every signal lc delivered.
		l.rmu.Lock()
		lc.dead.Store(true)
		l.rmu.Unlock()
		l.mu.Lock()
		if l.cur != lc {
			l.mu.Unlock()
			return // retired, closed, or never became current
		}
		l.cur = nil
		var gapped []*Subscription
		for _, p := range l.pats {
			// A listen sent on lc may have been answered, and signals
			// delivered, before the supervisor saw the answer: that
			// subscription was being served too.
			if p.on || p.sentOn == lc {
				gapped = append(gapped, p.subs...)
			}
			p.on = false
		}
		l.mu.Unlock()
		g := &GapError{Server: l.srv.addr, Err: err}
		for _, s := range gapped {
			s.gap(g)
		}
		l.noteMu.Lock()
		l.breaks = append(l.breaks, breakNote{err: err, subs: len(gapped)})
		l.noteMu.Unlock()
		l.poke()
	}
}

// run is the supervisor: it brings the server side in line with the local
// subscriptions whenever poked, retries refused re-listens with backoff,
// logs, and retires the listener (closing its connection) when no
// subscription is left.
func (l *listener) run() {
	defer l.c.signals.wg.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	armed := false // t runs for the refused listens in l.retry
	backoff := listenMinBackoff
	for {
		select {
		case <-l.quit:
			l.shutdown()
			return
		case <-l.wake:
		case <-t.C:
			armed = false
			l.mu.Lock()
			for p := range l.retry {
				l.dirty[p] = struct{}{}
			}
			clear(l.retry)
			l.mu.Unlock()
		}
		l.logNotes()
		exit := l.step()
		if exit {
			return
		}
		l.mu.Lock()
		retrying := len(l.retry) > 0
		l.mu.Unlock()
		switch {
		case retrying && !armed:
			// The timer is left running across the steps that other
			// work causes, so that they cannot postpone a retry.
			t.Reset(rand.N(backoff))
			armed = true
			backoff = min(2*backoff, listenMaxBackoff)
		case !retrying && !armed:
			backoff = listenMinBackoff
		}
	}
}

// shutdown closes the connection at Client.Close.
func (l *listener) shutdown() {
	l.mu.Lock()
	lc := l.cur
	l.cur = nil
	l.mu.Unlock()
	if lc != nil {
		lc.dead.Store(true)
		lc.conn.Destroy()
	}
}

type batchResult struct {
	i   int
	r   wire.Reply
	err error
}

// step does one round of work: retire, or (re)connect, then send the
// listens and unlistens that are due in one write and process the replies.
// It reports whether the supervisor must exit.
func (l *listener) step() (exit bool) {
	h := &l.c.signals
	h.mu.Lock()
	l.mu.Lock()
	if l.wanted == 0 {
		// Nothing to serve: retire. attach creates a new listener for
		// the next subscription (both locks held, so none can slip in).
		if h.listeners[l.key] == l {
			delete(h.listeners, l.key)
		}
		lc := l.cur
		l.cur = nil
		l.mu.Unlock()
		h.mu.Unlock()
		if lc != nil {
			lc.dead.Store(true)
			lc.conn.Destroy()
		}
		return true
	}
	h.mu.Unlock()
	lc := l.cur
	l.mu.Unlock()

	if lc == nil {
		if d := l.pace.next(); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-l.quit:
				t.Stop()
				l.shutdown()
				return true
			case <-t.C:
			}
		}
		var ok bool
		lc, ok = l.connect()
		l.pace.last = time.Now()
		if !ok {
			l.poke() // paced by l.pace; retires if the waiters leave
			return false
		}
	}

	l.mu.Lock()
	if l.cur != lc {
		// lc broke meanwhile: onBroken poked for the reconnect.
		l.mu.Unlock()
		return false
	}
	var reqs []wire.Request
	var ps []*pat // nil for an unlisten
	for p := range l.dirty {
		switch {
		case len(p.subs) > 0:
			if !p.on && p.sentOn == nil {
				p.sentOn = lc
				reqs = append(reqs, wire.Request{Cmd: wire.CmdListen, Key: p.pattern, Arg: l.key.group})
				ps = append(ps, p)
			}
		case p.on:
			// The last subscription went. A subscription of the same
			// pattern that comes after the unlisten gets a new pat, whose
			// listen follows the unlisten on this connection.
			p.on = false
			reqs = append(reqs, wire.Request{Cmd: wire.CmdUnlisten, Key: p.pattern, Arg: l.key.group})
			ps = append(ps, nil)
			l.forgetLocked(p)
		case p.sentOn == nil:
			l.forgetLocked(p) // nothing on the server
		default:
			// A listen is in flight: listened withdraws it if still
			// unwanted.
		}
	}
	clear(l.dirty)
	l.mu.Unlock()
	if len(reqs) == 0 {
		return false
	}
	results := make(chan batchResult, len(reqs))
	lc.conn.SendBatch(reqs, func(i int, r wire.Reply, err error) { results <- batchResult{i, r, err} })
	for range reqs {
		var res batchResult
		select {
		case res = <-results:
		case <-l.quit:
			l.shutdown()
			return true
		}
		if hook := h.testHookReply; hook != nil {
			hook()
		}
		if p := ps[res.i]; p != nil {
			l.listened(lc, p, res)
		} else if res.err == nil && res.r.Status != wire.StatusOK {
			l.c.log.Debug("dflock: unlisten refused", "server", l.srv.addr, "pattern", reqs[res.i].Key, "reply", res.r.Status.String())
		}
	}
	return false
}

// connect dials a new listener connection and makes it current. On failure
// every Listen waiting on this listener gets the error.
func (l *listener) connect() (*lconn, bool) {
	lc := &lconn{}
	conn, err := l.srv.pool.DialListener(l.c.ctx, l.onPush(lc), l.onBroken(lc))
	if err == nil {
		lc.conn = conn
	}
	l.mu.Lock()
	if err == nil {
		// A connection that broke at once was not current when onBroken ran.
		err = conn.Err()
	}
	if err != nil {
		var ws []chan error
		for _, p := range l.pats {
			for _, w := range p.waiters {
				ws = append(ws, w)
			}
			clear(p.waiters)
		}
		l.mu.Unlock()
		if conn != nil {
			lc.dead.Store(true)
			conn.Destroy()
		}
		for _, w := range ws {
			w <- err
		}
		l.c.log.Debug("dflock: signal listener dial failed", "server", l.srv.addr, "err", err)
		return nil, false
	}
	l.cur = lc
	for _, p := range l.pats {
		p.on, p.sentOn = false, nil
		l.dirty[p] = struct{}{}
	}
	clear(l.retry)
	l.mu.Unlock()
	return lc, true
}

// listened processes the reply to a listen for p sent on lc.
func (l *listener) listened(lc *lconn, p *pat, res batchResult) {
	var ws []chan error
	var werr error
	l.mu.Lock()
	if p.sentOn != lc {
		// A reconnect superseded it.
		l.mu.Unlock()
		return
	}
	switch {
	case res.err != nil:
		// lc broke: onBroken reports the gap (sentOn tells it that p
		// may have been served) and connect starts afresh; waiters keep
		// waiting for the reconnect, whose dial failure would reach them.
	case res.r.Status == wire.StatusOK:
		p.sentOn = nil
		if l.cur != lc {
			break // lc broke; connect starts afresh
		}
		p.on = true
		for _, w := range p.waiters {
			ws = append(ws, w)
		}
		clear(p.waiters)
		if len(p.subs) == 0 {
			// Every subscription went while the listen was in flight.
			l.dirty[p] = struct{}{}
			l.mu.Unlock()
			l.poke()
			return
		}
	default:
		p.sentOn = nil
		werr = errNotSupported
		if res.r.Status != wire.StatusError {
			word, sentinel := replyError(res.r)
			werr = fmt.Errorf("%w (server replied %s)", sentinel, word)
		}
		for _, w := range p.waiters {
			ws = append(ws, w)
		}
		clear(p.waiters)
		// The Listen calls waiting for this reply fail (and detach);
		// subscriptions already established stay, and the listen is
		// retried for them with backoff while there are any.
		if established := len(p.subs) - len(ws); established > 0 {
			l.retry[p] = struct{}{}
			l.c.log.Warn("dflock: signal re-listen refused; retrying", "server", l.srv.addr,
				"pattern", p.pattern, "group", l.key.group, "subscriptions", established, "reply", res.r.Status.String())
		} else if len(p.subs) == 0 {
			l.dirty[p] = struct{}{}
			defer l.poke()
		}
	}
	l.mu.Unlock()
	for _, w := range ws {
		w <- werr
	}
}
