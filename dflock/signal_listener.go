package dflock

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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

// retryTimer schedules the re-listens the server refused (listener.retry):
// exponential backoff with full jitter, doubling while refusals keep
// coming and reset once none is pending. Once armed it is left running
// across the steps that other work causes, so that these cannot postpone
// a retry.
type retryTimer struct {
	t       *time.Timer // nil until first armed
	armed   bool
	backoff time.Duration
}

// c returns the channel the timer fires on; nil (never ready) before the
// first arm.
func (r *retryTimer) c() <-chan time.Time {
	if r.t == nil {
		return nil
	}
	return r.t.C
}

// fired records that the supervisor received from c.
func (r *retryTimer) fired() { r.armed = false }

// update arms the timer if refused listens are pending and it is not
// running already.
func (r *retryTimer) update(pending bool) {
	switch {
	case r.armed:
	case !pending:
		r.backoff = listenMinBackoff
	default:
		r.backoff = max(r.backoff, listenMinBackoff)
		d := rand.N(r.backoff)
		if r.t == nil {
			r.t = time.NewTimer(d)
		} else {
			r.t.Reset(d)
		}
		r.armed = true
		r.backoff = min(2*r.backoff, listenMaxBackoff)
	}
}

func (r *retryTimer) stop() {
	if r.t != nil {
		r.t.Stop()
	}
}

// testHookListenReply, when set, is called by every listener supervisor
// before it processes each reply to its listens and unlistens, so that a
// test can hold a supervisor between the server's answer and its
// processing. It lives here rather than in a struct so that production
// values carry nothing test-only; only tests that do not run in parallel
// set it (see setListenReplyHook).
var testHookListenReply atomic.Pointer[func(*listener)]

type batchResult struct {
	i   int
	r   wire.Reply
	err error
}

// listener is one listener connection (re-dialled as needed) and the local
// subscriptions it serves. Its supervisor goroutine (run) does all the I/O
// other than reading — dial, listen, unlisten, reconnect — and all the
// logging. Reading is done by the connection's reader, which calls onPush:
// it never waits for a consumer and never runs user code (not even a log
// handler); what it has to report it notes for the supervisor.
type listener struct {
	c    *Client
	srv  *server
	key  listenerKey
	wake chan struct{} // cap 1: there is work for the supervisor
	quit chan struct{} // closed by signalHub.close
	pace pacer         // supervisor only
	sent []*pat        // supervisor only: per request of the batch in flight, its listen's pattern (nil: unlisten)

	// mu guards everything below and each pat's fields but rr. The reader
	// holds it for reading while it routes a push, so the routing state
	// (pats, wild, and each pat's subs and idx) changes under the write
	// lock only, and a connection marked dead under it delivers nothing
	// afterwards.
	mu     sync.RWMutex
	cur    *lconn            // the live connection; nil while (re)connecting
	pats   map[string]*pat   // patterns with local subscriptions, or with server-side state to withdraw
	wild   []*pat            // the wildcard patterns of pats (pat.widx), scanned per push
	wanted int               // patterns of pats that have subscriptions
	dirty  map[*pat]struct{} // patterns whose server side the supervisor must bring in line
	retry  map[*pat]struct{} // refused re-listens, due again when the retry timer fires
	slow   []*Subscription   // slow-consumer episodes to log
	breaks []breakNote       // broken connections to log
}

type breakNote struct {
	err  error
	subs int
}

// lconn is one connection of a listener.
type lconn struct {
	conn *sigConn
	dead atomic.Bool // broken or retired: its pushes are ignored
	// pushes counts the pushes read, for withdraw to tell when the
	// connection has gone quiet.
	pushes atomic.Uint64
	// withdrawn: a queue-group connection being withdrawn (see withdraw);
	// what it reads, even once closed, is forwarded.
	withdrawn atomic.Bool
}

// close ends lc; its pushes still in flight are ignored.
func (lc *lconn) close() {
	lc.dead.Store(true)
	lc.conn.destroy()
}

// pat is one pattern of a listener and its local subscriptions. A pattern
// whose last subscription went stays (with no subscription) until the
// supervisor has withdrawn it from the server, so that a subscription of
// the same pattern arriving meanwhile finds it still listening.
type pat struct {
	pattern string
	wild    bool
	widx    int // index in listener.wild

	// Routing state.
	subs []*Subscription
	idx  map[*Subscription]int // position in subs, for O(1) removal

	on      bool   // the server confirmed listen on the current connection
	sentOn  *lconn // a listen is in flight on this connection (cleared by its reply)
	refused bool   // a re-listen was refused, warned, and none accepted since
	waiters map[*Subscription]chan error
	rr      atomic.Uint64 // queue groups: whose turn it is; bumped by the reader
	// live is the connection on which the reader has read the server's
	// `ok` to this pattern's listen: pushes read on it from then on are
	// for this pattern (the server answers a request before it pushes
	// what follows it; a queue group's may come before, see
	// takeTurnLocked). Set and read by the reader.
	live atomic.Pointer[lconn]
}

// takeWaitersLocked appends the channels of the Listen calls waiting for
// p's listen to ws and forgets them: the caller answers them, after l.mu.
func (p *pat) takeWaitersLocked(ws []chan error) []chan error {
	for _, w := range p.waiters {
		ws = append(ws, w)
	}
	clear(p.waiters)
	return ws
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
	last := len(p.subs) - 1
	if i != last {
		moved := p.subs[last]
		p.subs[i] = moved
		p.idx[moved] = i
	}
	p.subs[last] = nil
	p.subs = p.subs[:last]
	delete(p.idx, s)
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
	delete(l.dirty, p)
	delete(l.retry, p)
}

// members returns how many subscriptions a queue-group listener serves.
func (l *listener) members() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if p := l.pats[l.key.pattern]; p != nil {
		return len(p.subs)
	}
	return 0
}

// onPush returns the push handler of connection lc. It runs on lc's reader
// goroutine and never waits for a consumer: a literal pattern is found by
// one map lookup, wildcard patterns are matched one by one.
func (l *listener) onPush(lc *lconn) func(wire.Push) {
	return func(p wire.Push) {
		lc.pushes.Add(1)
		sig := Signal{Channel: p.Channel, Payload: p.Payload}
		var slow []*Subscription
		orphan := false
		l.mu.RLock()
		switch {
		case lc.dead.Load():
			// Nothing for this listener's subscriptions; but a push a
			// withdrawn connection reads as it closes is the group's
			// still, counted delivered by the server.
			orphan = lc.withdrawn.Load() && wire.MatchPattern(l.key.pattern, sig.Channel)
		case l.key.group == "":
			slow = l.broadcastLocked(lc, sig)
		default:
			slow, orphan = l.takeTurnLocked(lc, sig)
		}
		l.mu.RUnlock()
		if slow != nil {
			l.noteSlow(slow)
		}
		if orphan {
			l.c.signals.forward(l.c, l.key, sig)
		}
	}
}

// broadcastLocked hands sig to every subscription whose pattern matches,
// and returns those whose slow-consumer episode it starts. l.mu held.
func (l *listener) broadcastLocked(lc *lconn, sig Signal) (slow []*Subscription) {
	// Only to the patterns the server listens for on lc. The server sends
	// a connection one copy of a signal, for whichever of its patterns
	// matched: a pattern whose listen is not answered yet (or was refused)
	// must not get what another pattern brought in, or signals of its own
	// that the server did not relay would go missing between two it
	// delivered, with no gap reported. (Those it skips came before its
	// listen was taken, or after the gap of a break.)
	if pt := l.pats[sig.Channel]; pt != nil && !pt.wild && pt.live.Load() == lc {
		// The literal pattern equal to the channel. (A server that
		// pushes a wildcard pattern as a channel is broken; the scan
		// below matches it once, not twice.)
		slow = deliverAll(pt.subs, sig, slow)
	}
	for _, pt := range l.wild {
		if pt.live.Load() == lc && wire.MatchPattern(pt.pattern, sig.Channel) {
			slow = deliverAll(pt.subs, sig, slow)
		}
	}
	return slow
}

// takeTurnLocked hands sig to one member of the queue group: the server
// chose this connection for this copy, and the local members take turns,
// skipping those whose buffer is full (as the server does). If all are
// full, the drop is counted on the member whose turn it was, which is
// returned if that starts its slow-consumer episode. Like broadcastLocked
// it takes only what the group's listen on lc can have brought — answered,
// or still in flight: the server registers a member before it answers, and
// a job it picks that member for in between comes before the `ok` (a group
// connection listens to its one pattern only, so nothing else can have
// brought it) — and a push for a channel the pattern does not match (a
// broken server's) is nobody's. A push the server sent for the group after every member of lc
// left (before it saw the unlisten or the close, see withdraw) is an
// orphan, for the caller to forward, after l.mu, to a member elsewhere.
// l.mu held.
func (l *listener) takeTurnLocked(lc *lconn, sig Signal) (slow []*Subscription, orphan bool) {
	pt := l.pats[l.key.pattern]
	if pt == nil || (pt.live.Load() != lc && pt.sentOn != lc) || !wire.MatchPattern(pt.pattern, sig.Channel) {
		return nil, false
	}
	if pt.live.Load() != lc {
		// The first push of a listen not answered yet: the server has
		// taken it, and the members that a break told of a gap learn that
		// it is over before they get what follows (as the answer's
		// callback would tell them, finding nothing left to do).
		pt.live.Store(lc)
		l.resumedLocked(lc, pt)
	}
	if len(pt.subs) == 0 {
		return nil, true
	}
	return turnLocked(pt.subs, &pt.rr, sig), false
}

// turnLocked hands sig to the member of subs (not empty) whose turn it is
// (rr), or the next with room; if all are full, it counts the drop on the
// first and returns it if that starts its slow-consumer episode. The
// listener's mu is held (for reading will do).
func turnLocked(subs []*Subscription, rr *atomic.Uint64, sig Signal) []*Subscription {
	n := uint64(len(subs))
	start := rr.Add(1) - 1
	for j := uint64(0); j < n; j++ {
		if subs[(start+j)%n].offer(sig) {
			return nil
		}
	}
	if s := subs[start%n]; s.drop() {
		return []*Subscription{s}
	}
	return nil
}

// settledLocked returns the members of pt whose Listen has returned: those
// a forwarded job may go to (see signalHub.forward). Usually all of them.
// The listener's mu is held.
func (pt *pat) settledLocked() []*Subscription {
	if len(pt.waiters) == 0 {
		return pt.subs
	}
	subs := make([]*Subscription, 0, len(pt.subs))
	for _, s := range pt.subs {
		if _, joining := pt.waiters[s]; !joining {
			subs = append(subs, s)
		}
	}
	return subs
}

func deliverAll(subs []*Subscription, sig Signal, slow []*Subscription) []*Subscription {
	for _, s := range subs {
		if !s.offer(sig) && s.drop() {
			slow = append(slow, s)
		}
	}
	return slow
}

// noteSlow has the supervisor log the start of the slow-consumer episodes
// of subs. Called by the reader (without l.mu), once per episode.
func (l *listener) noteSlow(subs []*Subscription) {
	l.mu.Lock()
	l.slow = append(l.slow, subs...)
	l.mu.Unlock()
	l.poke()
}

// logNotes logs what the reader and the break handler noted. Supervisor
// only: a slow log handler delays the supervisor, never the reader.
func (l *listener) logNotes() {
	l.mu.Lock()
	slow, breaks := l.slow, l.breaks
	l.slow, l.breaks = nil, nil
	l.mu.Unlock()
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
		// Under the write lock: a delivery from lc in progress (another
		// goroutine may have broken lc under its reader) ends first, and
		// none starts after, so the gap follows every signal lc delivered.
		l.mu.Lock()
		lc.dead.Store(true)
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
		l.breaks = append(l.breaks, breakNote{err: err, subs: len(gapped)})
		// The gaps are queued before l.mu is let go: the supervisor may
		// be woken meanwhile by something else (a Listen, a retry), and
		// once it has a new connection (adopt takes l.mu) that
		// connection's signals must come after every gap of this break.
		// (Lock order: listener, then subscription; neither gap nor
		// noteSignalGap blocks.)
		g := &GapError{Server: l.srv.addr, Err: err}
		for _, s := range gapped {
			if s.gap(g) {
				l.c.noteSignalGap(s, g)
			}
		}
		l.mu.Unlock()
		l.poke()
	}
}

// run is the supervisor. Whenever poked (or when refused re-listens are
// due again) it logs what was noted for it and takes one step; it exits
// when the listener retires or the Client closes, closing the connection.
func (l *listener) run() {
	defer l.c.signals.wg.Done()
	defer l.shutdown()
	var rt retryTimer
	defer rt.stop()
	for {
		select {
		case <-l.quit:
			return
		case <-l.wake:
		case <-rt.c():
			rt.fired()
			l.retryDue()
		}
		l.logNotes()
		if !l.step() {
			return
		}
		rt.update(l.retrying())
	}
}

// step brings the server side in line with the local subscriptions: it
// retires the listener if no subscription is left, or else connects if
// there is no connection and syncs. It reports false when the supervisor
// must exit (retired, or the Client is closing).
func (l *listener) step() bool {
	if l.retire() {
		return false
	}
	lc := l.current()
	if lc == nil {
		if !l.pause() {
			return false
		}
		if l.retire() { // the last subscription left during the pause
			return false
		}
		if lc = l.connect(); lc == nil {
			l.poke() // paced by l.pace; retires if the waiters leave
			return true
		}
	}
	return l.sync(lc)
}

// retire ends the listener if no subscription is left: it leaves the hub,
// so that the next Listen of its key creates a new listener, and its
// connection is closed. Both locks are held for the check, so that no
// subscription can slip in. It reports whether it retired.
func (l *listener) retire() bool {
	h := &l.c.signals
	h.mu.Lock()
	l.mu.Lock()
	idle := l.wanted == 0
	var lc *lconn
	member := false
	if idle {
		if h.listeners[l.key] == l {
			delete(h.listeners, l.key)
		}
		lc, l.cur = l.cur, nil
		if p := l.pats[l.key.pattern]; l.key.group != "" && lc != nil && p != nil {
			member = p.on || p.sentOn == lc
		}
	}
	l.mu.Unlock()
	h.mu.Unlock()
	switch {
	case member:
		l.withdraw(lc)
	case lc != nil:
		lc.close()
	}
	return idle
}

// Bounds of withdraw: the whole withdrawal, and the quiet it waits for
// after the unlisten's answer (twice the unlisten's round trip, within
// these). The floor is for the server's push writer, which writes what it
// had queued on its own schedule after the answer: a floor of 20 ms lost a
// job in a CI run, whose in-process server's writer was held up that long
// under -race and a loaded machine; holding a withdrawn connection for a
// tenth of a second costs little.
const (
	withdrawFor      = time.Second
	withdrawQuietMin = 100 * time.Millisecond
	withdrawQuietMax = 250 * time.Millisecond
)

// withdraw ends lc, a retired queue-group connection the server still
// counts as a member of the group, without losing the jobs on their way to
// it: it sends unlisten, so that the server chooses other members from
// then on, and closes lc only once the server has answered and lc has
// been quiet for a while, since pushes the server had queued for lc before
// the unlisten may follow the answer. What lc reads meanwhile is forwarded
// (takeTurnLocked, signalHub.forward). The quiet is a judgement: nothing
// on the wire says the server has written all it had queued, and what it
// writes later is lost with lc, as on a break. A server that does not
// answer within withdrawFor, or the Client's Close, cuts it short too.
func (l *listener) withdraw(lc *lconn) {
	lc.withdrawn.Store(true)
	defer lc.close()
	answered := make(chan struct{}, 1)
	start := time.Now()
	lc.conn.pc.SendBatch([]wire.Request{{Cmd: wire.CmdUnlisten, Key: l.key.pattern, Arg: l.key.group}},
		func(int, wire.Reply, error) { answered <- struct{}{} })
	deadline := time.NewTimer(withdrawFor)
	defer deadline.Stop()
	select {
	case <-answered:
	case <-deadline.C:
		return
	case <-l.c.ctx.Done(): // Close: l is out of the hub, which ends only the listeners in it
		return
	}
	quiet := min(max(2*time.Since(start), withdrawQuietMin), withdrawQuietMax)
	t := time.NewTimer(quiet)
	defer t.Stop()
	for lc.conn.err() == nil {
		n := lc.pushes.Load()
		select {
		case <-t.C:
		case <-deadline.C:
			return
		case <-l.c.ctx.Done():
			return
		}
		if lc.pushes.Load() == n && !lc.conn.pc.Unread() {
			return
		}
		t.Reset(quiet)
	}
}

func (l *listener) current() *lconn {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.cur
}

// pause waits as long as the dial pacer says, or until the last
// subscription leaves (a pause can last listenMaxBackoff, and a listener
// nobody wants must neither dial again nor outlive its subscriptions
// that long). It reports false if the Client closed meanwhile. A poke
// taken here for other work (a Listen joining) is not lost: the dial that
// follows syncs every pattern.
func (l *listener) pause() bool {
	d := l.pace.next()
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-l.quit:
			return false
		case <-t.C:
			return true
		case <-l.wake:
			if l.unwanted() {
				return true
			}
		}
	}
}

// unwanted reports whether no subscription is left.
func (l *listener) unwanted() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.wanted == 0
}

// connect dials a new connection and makes it current, with every pattern
// due for a listen on it. On failure it returns nil, and every Listen
// waiting on this listener gets the error.
func (l *listener) connect() *lconn {
	lc := &lconn{}
	conn, err := dialSigConn(l.c.ctx, l.srv, l.onPush(lc), l.onBroken(lc))
	l.pace.last = time.Now()
	if err == nil {
		lc.conn = conn
		if err = l.adopt(lc); err == nil {
			return lc
		}
		lc.close()
	}
	l.failWaiters(err)
	l.c.log.Debug("dflock: signal listener dial failed", "server", l.srv.addr, "err", err)
	return nil
}

// adopt makes lc current unless it broke already (its onBroken then ran
// while it was not current, and reported nothing).
func (l *listener) adopt(lc *lconn) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := lc.conn.err(); err != nil {
		return err
	}
	l.cur = lc
	for _, p := range l.pats {
		p.on, p.sentOn = false, nil
		l.dirty[p] = struct{}{}
	}
	clear(l.retry)
	return nil
}

// failWaiters hands err to every Listen waiting on this listener.
func (l *listener) failWaiters(err error) {
	var ws []chan error
	l.mu.Lock()
	for _, p := range l.pats {
		ws = p.takeWaitersLocked(ws)
	}
	l.mu.Unlock()
	for _, w := range ws {
		w <- err
	}
}

// retryDue makes the refused re-listens due again.
func (l *listener) retryDue() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p := range l.retry {
		l.dirty[p] = struct{}{}
	}
	clear(l.retry)
}

// retrying reports whether refused re-listens wait for the retry timer.
func (l *listener) retrying() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.retry) > 0
}

// sync sends, in one write on lc, the listens and unlistens that the
// patterns marked dirty need, and processes the replies. It reports false
// if the Client closed meanwhile.
func (l *listener) sync(lc *lconn) bool {
	reqs := l.due(lc)
	if len(reqs) == 0 {
		return true
	}
	defer clear(l.sent) // reused across batches; pins no pattern
	// Room for every result: the reader never waits.
	results := make(chan batchResult, len(reqs))
	// The reader's copy: l.sent is cleared on return, maybe before the replies.
	sent := slices.Clone(l.sent)
	lc.conn.pc.SendBatch(reqs, func(i int, r wire.Reply, err error) {
		if p := sent[i]; p != nil && err == nil && r.Status == wire.StatusOK {
			p.live.Store(lc) // on the reader, before any push that follows the answer
			l.resumed(lc, p)
		}
		results <- batchResult{i, r, err}
	})
	for range reqs {
		var res batchResult
		select {
		case res = <-results:
		case <-l.quit:
			return false
		}
		if hook := testHookListenReply.Load(); hook != nil {
			(*hook)(l)
		}
		if p := l.sent[res.i]; p != nil {
			l.listened(lc, p, res)
		} else {
			l.unlistened(reqs[res.i], res)
		}
	}
	return true
}

// resumed queues the second gap marker (GapError.Resumed) of p's
// subscriptions that a break reported a gap to and that took it already,
// now that the server answered p's listen on lc: on lc's reader, so that it
// comes before every signal lc delivers for them afterwards. Not for those
// whose Listen waits for this answer: they missed nothing. Nor if lc broke
// meanwhile: they cannot hear yet (its pushes are ignored).
func (l *listener) resumed(lc *lconn, p *pat) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	l.resumedLocked(lc, p)
}

// resumedLocked is resumed with l.mu held (for reading will do). A second
// call for the same answer queues nothing (Subscription.resumed forgets
// the gap it resolves).
func (l *listener) resumedLocked(lc *lconn, p *pat) {
	if lc.dead.Load() {
		return
	}
	var g *GapError
	for _, s := range p.subs {
		if _, joining := p.waiters[s]; !joining {
			if g == nil {
				g = &GapError{Server: l.srv.addr, Resumed: true}
			}
			s.resumed(g)
		}
	}
}

// due takes the dirty patterns and returns the requests they need on lc,
// with l.sent[i] the pattern of a listen, nil for an unlisten. It returns
// nothing (and leaves them dirty) if lc is no longer current: it broke,
// onBroken poked for the reconnect, and connect will mark every pattern
// dirty.
func (l *listener) due(lc *lconn) (reqs []wire.Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur != lc {
		return nil
	}
	l.sent = l.sent[:0]
	var listens, fresh []*pat
	poke := false
	for p := range l.dirty {
		switch {
		case len(p.subs) > 0:
			if !p.on && p.sentOn == nil {
				p.sentOn = lc
				// Sent after every unlisten: at --max-subscriptions the
				// server must have made room before it takes the listen.
				// And the re-listens of established subscriptions before
				// the listens only new Listen calls wait for: a newcomer
				// during a reconnect must not take an established
				// subscription's place at the cap.
				if len(p.subs) > len(p.waiters) {
					listens = append(listens, p)
				} else {
					fresh = append(fresh, p)
				}
			}
		case p.on && l.key.group != "":
			// A queue group's last member went since retire looked:
			// the next step's retire withdraws the connection, and the
			// jobs the server queued for it are forwarded.
			poke = true
		case p.on:
			// The last subscription went. A subscription of the same
			// pattern that comes after the unlisten gets a new pat, whose
			// listen follows the unlisten on this connection.
			p.on = false
			reqs = append(reqs, wire.Request{Cmd: wire.CmdUnlisten, Key: p.pattern, Arg: l.key.group})
			l.sent = append(l.sent, nil)
			l.forgetLocked(p)
		case p.sentOn == nil:
			l.forgetLocked(p) // nothing on the server
		default:
			// A listen is in flight: listened withdraws it if still
			// unwanted.
		}
	}
	clear(l.dirty)
	if poke {
		l.poke() // (it never blocks)
	}
	for _, p := range append(listens, fresh...) {
		reqs = append(reqs, wire.Request{Cmd: wire.CmdListen, Key: p.pattern, Arg: l.key.group})
		l.sent = append(l.sent, p)
	}
	return reqs
}

// unlistened processes the reply to an unlisten. A refusal leaves nothing
// to do (the pattern is forgotten; closing the connection would withdraw
// it anyway), so it is only logged.
func (l *listener) unlistened(req wire.Request, res batchResult) {
	if res.err == nil && res.r.Status != wire.StatusOK {
		l.c.log.Debug("dflock: unlisten refused", "server", l.srv.addr, "pattern", req.Key, "reply", res.r.Status.String())
	}
}

// listened processes the reply to a listen for p sent on lc: the Listen
// calls waiting for it succeed or fail, a refused re-listen of established
// subscriptions is retried, and a pattern whose subscriptions all went
// meanwhile is withdrawn. It logs after releasing l.mu, which the reader
// takes (the logger only queues the record; holding l.mu there for it
// would be needless).
func (l *listener) listened(lc *lconn, p *pat, res batchResult) {
	l.mu.Lock()
	if p.sentOn == lc && res.err != nil {
		// lc broke with this listen unanswered (the server closed it, or
		// answered what the client could not parse). The Listen calls
		// waiting for it fail with the cause, as a failed dial fails them,
		// rather than wait for reconnects that may break the same way,
		// until their ctx ends. Established subscriptions reconnect:
		// onBroken reports their gap (sentOn tells it that p may have been
		// served), and connect starts afresh.
		ws := p.takeWaitersLocked(nil)
		l.mu.Unlock()
		for _, w := range ws {
			w <- res.err
		}
		return
	}
	if p.sentOn != lc || res.err != nil {
		// A reconnect superseded it: connect starts afresh.
		l.mu.Unlock()
		return
	}
	p.sentOn = nil
	var werr error
	switch {
	case res.r.Status != wire.StatusOK:
		werr = listenRefused(res.r)
	case l.cur != lc:
		// lc broke (or was retired) after the server answered. As with a
		// break before the answer, the Listen calls waiting fail with
		// the cause rather than wait for reconnects that may break the
		// same way (a server that breaks every connection right after
		// its answer); established subscriptions reconnect. A listener
		// shutting down leaves them to their ctx, which the Client's
		// Close ends with ErrClosed.
		var ws []chan error
		cause := lc.conn.err()
		select {
		case <-l.quit:
		default:
			if cause != nil {
				ws = p.takeWaitersLocked(nil)
			}
		}
		l.mu.Unlock()
		for _, w := range ws {
			w <- cause
		}
		return
	default:
		p.on = true
		p.refused = false
	}
	ws := p.takeWaitersLocked(nil)
	// A refusal fails the Listen calls waiting for it (they detach);
	// subscriptions already established stay, and the listen is retried
	// for them with backoff while there are any.
	retried, warned := 0, p.refused
	if werr != nil && len(p.subs) > len(ws) {
		retried = len(p.subs) - len(ws)
		l.retry[p] = struct{}{}
		p.refused = true
	}
	idle := len(p.subs) == 0 // every subscription went while the listen was in flight
	if idle {
		l.dirty[p] = struct{}{}
	}
	l.mu.Unlock()
	if idle {
		l.poke()
	}
	if retried > 0 {
		// Warned once per refusal streak: a server without signals (one
		// moved to v2.x) refuses every retry, about one a second per
		// pattern, for as long as the subscriptions last.
		level := slog.LevelWarn
		if warned {
			level = slog.LevelDebug
		}
		l.c.log.Log(context.Background(), level, "dflock: signal re-listen refused; retrying", "server", l.srv.addr,
			"pattern", p.pattern, "group", l.key.group, "subscriptions", retried, "reply", res.r.Status.String())
	}
	for _, w := range ws {
		w <- werr
	}
}

// listenRefused is the error of a Listen whose listen the server refused
// with r.
func listenRefused(r wire.Reply) error {
	if r.Status == wire.StatusError {
		return errNotSupported
	}
	word, sentinel := replyError(r)
	return fmt.Errorf("%w (server replied %s)", sentinel, word)
}

// shutdown closes the current connection, if any. The supervisor calls it
// on its way out; after retire there is none left.
func (l *listener) shutdown() {
	l.mu.Lock()
	lc := l.cur
	l.cur = nil
	l.mu.Unlock()
	if lc != nil {
		lc.close()
	}
}
