package dflock

import (
	"fmt"
	"math/rand/v2"
	"slices"
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

// signalHub owns the Client's listener connections and subscriptions.
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
// Lock order: signalHub.mu, then listener.mu, then Subscription.mu.
type signalHub struct {
	mu        sync.Mutex
	closed    bool
	listeners map[listenerKey]*listener
	subs      map[*Subscription]struct{}
	wg        sync.WaitGroup // listener supervisors
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
// waits for the supervisors. Client.Close calls it before closing the
// pools.
func (h *signalHub) close() {
	h.mu.Lock()
	h.closed = true
	ls, subs := h.listeners, h.subs
	h.listeners, h.subs = nil, nil
	h.mu.Unlock()
	for _, l := range ls {
		close(l.quit)
	}
	h.wg.Wait()
	closedErr := &bothError{domain: ErrSubscriptionClosed, cause: ErrClosed}
	for s := range subs {
		s.finish(closedErr)
	}
}

// listener is one listener connection (re-dialled as needed) and the local
// subscriptions it serves. Its supervisor goroutine (run) does all the I/O
// other than reading: dial, listen, unlisten, reconnect. Reading is done by
// the pool connection's reader, which calls onPush and never blocks.
type listener struct {
	c    *Client
	srv  *server
	key  listenerKey
	wake chan struct{} // cap 1: there is work for the supervisor
	quit chan struct{} // closed by signalHub.close

	table atomic.Pointer[[]route] // the reader's immutable view of pats
	pace  pacer                   // supervisor only

	mu   sync.Mutex
	cur  *lconn          // the live connection; nil while (re)connecting
	pats map[string]*pat // patterns with local subscriptions
	drop map[string]bool // patterns the server may still have on cur, with no subscription left
}

// lconn is one connection of a listener.
type lconn struct {
	conn *pool.Conn
	dead atomic.Bool // broken or retired: its pushes are ignored
}

// pat is one pattern of a listener and its local subscriptions.
type pat struct {
	pattern string
	subs    []*Subscription
	on      bool         // the server confirmed listen on the current connection
	sent    bool         // a listen is in flight
	waiters []chan error // Listen calls waiting for on
	rr      atomic.Uint64
}

// route is one entry of the reader's view.
type route struct {
	pattern string
	subs    []*Subscription
	rr      *atomic.Uint64
}

func newListener(c *Client, key listenerKey) *listener {
	return &listener{
		c:    c,
		srv:  key.srv,
		key:  key,
		wake: make(chan struct{}, 1),
		quit: make(chan struct{}),
		pats: make(map[string]*pat),
		drop: make(map[string]bool),
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
// it.
func (l *listener) add(s *Subscription) chan error {
	ch := make(chan error, 1)
	l.mu.Lock()
	p := l.pats[s.pattern]
	if p == nil {
		p = &pat{pattern: s.pattern}
		l.pats[s.pattern] = p
	}
	p.subs = append(p.subs, s)
	if p.on {
		ch <- nil
	} else {
		p.waiters = append(p.waiters, ch)
	}
	l.rebuildLocked()
	l.mu.Unlock()
	l.poke()
	return ch
}

// remove unregisters s; the server-side subscription goes with the last
// local one.
func (l *listener) remove(s *Subscription) {
	l.mu.Lock()
	if p := l.pats[s.pattern]; p != nil {
		if i := slices.Index(p.subs, s); i >= 0 {
			p.subs = slices.Delete(p.subs, i, i+1)
		}
		if len(p.subs) == 0 {
			delete(l.pats, s.pattern)
			if p.on || p.sent {
				l.drop[s.pattern] = true
			}
		}
		l.rebuildLocked()
	}
	l.mu.Unlock()
	l.poke()
}

func (l *listener) rebuildLocked() {
	t := make([]route, 0, len(l.pats))
	for _, p := range l.pats {
		if len(p.subs) > 0 {
			t = append(t, route{pattern: p.pattern, subs: slices.Clone(p.subs), rr: &p.rr})
		}
	}
	l.table.Store(&t)
}

// onPush returns the push handler of connection lc. It runs on lc's reader
// goroutine and never blocks.
func (l *listener) onPush(lc *lconn) func(wire.Push) {
	return func(p wire.Push) {
		if lc.dead.Load() {
			return
		}
		t := l.table.Load()
		if t == nil {
			return
		}
		sig := Signal{Channel: p.Channel, Payload: p.Payload}
		if l.key.group == "" {
			for i := range *t {
				r := &(*t)[i]
				if wire.MatchPattern(r.pattern, p.Channel) {
					for _, s := range r.subs {
						s.deliver(sig)
					}
				}
			}
			return
		}
		// Queue group: the server chose this connection for this copy;
		// exactly one local member takes it, in turn, skipping members
		// whose buffer is full (as the server does). A group listener
		// serves one pattern, so it has at most one route.
		if len(*t) == 0 {
			return
		}
		r := &(*t)[0]
		n := uint64(len(r.subs))
		if n == 0 {
			return
		}
		start := r.rr.Add(1) - 1
		for j := uint64(0); j < n; j++ {
			if r.subs[(start+j)%n].offer(sig) {
				return
			}
		}
		r.subs[start%n].drop()
	}
}

// onBroken returns the break handler of connection lc: every subscription
// that was being served by it gets a gap, and the supervisor reconnects.
func (l *listener) onBroken(lc *lconn) func(error) {
	return func(err error) {
		lc.dead.Store(true)
		l.mu.Lock()
		if l.cur != lc {
			l.mu.Unlock()
			return // retired, closed, or never became current
		}
		l.cur = nil
		var gapped []*Subscription
		for _, p := range l.pats {
			if p.on {
				gapped = append(gapped, p.subs...)
			}
			p.on = false
		}
		clear(l.drop)
		l.mu.Unlock()
		l.c.log.Warn("dflock: signal listener connection lost; reconnecting",
			"server", l.srv.addr, "group", l.key.group, "subscriptions", len(gapped), "err", err)
		g := &GapError{Server: l.srv.addr, Err: err}
		for _, s := range gapped {
			s.gap(g)
		}
		l.poke()
	}
}

// run is the supervisor: it brings the server side in line with the local
// subscriptions whenever poked, retries refused re-listens with backoff,
// and retires the listener (closing its connection) when no subscription
// is left.
func (l *listener) run() {
	defer l.c.signals.wg.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	backoff := listenMinBackoff
	for {
		select {
		case <-l.quit:
			l.shutdown()
			return
		case <-l.wake:
		case <-t.C:
		}
		exit, failed := l.step()
		if exit {
			return
		}
		t.Stop()
		if failed {
			t.Reset(rand.N(backoff))
			backoff = min(2*backoff, listenMaxBackoff)
		} else {
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
// failed asks for a retry after backoff.
func (l *listener) step() (exit, failed bool) {
	h := &l.c.signals
	h.mu.Lock()
	l.mu.Lock()
	if len(l.pats) == 0 {
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
		return true, false
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
				return true, false
			case <-t.C:
			}
		}
		var ok bool
		lc, ok = l.connect()
		l.pace.last = time.Now()
		if !ok {
			l.poke() // paced by l.pace; retires if the waiters leave
			return false, false
		}
	}

	// Unlistens first: a pattern dropped and then subscribed again is
	// re-listened after its unlisten, in the same write.
	l.mu.Lock()
	var reqs []wire.Request
	var ps []*pat // nil for an unlisten
	for pattern := range l.drop {
		if l.pats[pattern] == nil {
			reqs = append(reqs, wire.Request{Cmd: wire.CmdUnlisten, Key: pattern, Arg: l.key.group})
			ps = append(ps, nil)
		}
	}
	clear(l.drop)
	for _, p := range l.pats {
		if !p.on && !p.sent {
			p.sent = true
			reqs = append(reqs, wire.Request{Cmd: wire.CmdListen, Key: p.pattern, Arg: l.key.group})
			ps = append(ps, p)
		}
	}
	l.mu.Unlock()
	if len(reqs) == 0 {
		return false, false
	}
	results := make(chan batchResult, len(reqs))
	lc.conn.SendBatch(reqs, func(i int, r wire.Reply, err error) { results <- batchResult{i, r, err} })
	for range reqs {
		var res batchResult
		select {
		case res = <-results:
		case <-l.quit:
			l.shutdown()
			return true, false
		}
		if p := ps[res.i]; p != nil {
			if l.listened(lc, p, res) {
				failed = true
			}
		} else if res.err == nil && res.r.Status != wire.StatusOK {
			l.c.log.Debug("dflock: unlisten refused", "server", l.srv.addr, "pattern", reqs[res.i].Key, "reply", res.r.Status.String())
		}
	}
	return false, failed
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
			ws = append(ws, p.waiters...)
			p.waiters = nil
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
		p.on, p.sent = false, false
	}
	clear(l.drop)
	l.mu.Unlock()
	return lc, true
}

// listened processes the reply to a listen for p sent on lc. It reports
// whether a retry is needed.
func (l *listener) listened(lc *lconn, p *pat, res batchResult) (retry bool) {
	var ws []chan error
	var werr error
	l.mu.Lock()
	p.sent = false
	current := l.pats[p.pattern] == p
	switch {
	case res.err != nil:
		// The connection broke (onBroken resets the state and pokes);
		// waiters keep waiting for the reconnect, whose dial failure
		// would reach them.
	case res.r.Status == wire.StatusOK:
		if !current {
			// Every subscription went while the listen was in flight.
			l.drop[p.pattern] = true
			l.mu.Unlock()
			l.poke()
			return false
		}
		if l.cur == lc {
			p.on = true
			ws, p.waiters = p.waiters, nil
		}
	default:
		werr = errNotSupported
		if res.r.Status != wire.StatusError {
			word, sentinel := replyError(res.r)
			werr = fmt.Errorf("%w (server replied %s)", sentinel, word)
		}
		ws, p.waiters = p.waiters, nil
		if len(ws) == 0 && current {
			// A re-listen after a reconnect was refused: the
			// subscriptions stay, and it is retried with backoff.
			retry = true
			l.c.log.Warn("dflock: signal re-listen refused; retrying", "server", l.srv.addr,
				"pattern", p.pattern, "group", l.key.group, "reply", res.r.Status.String())
		}
	}
	l.mu.Unlock()
	for _, w := range ws {
		w <- werr
	}
	return retry
}
