package difftest

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dflock-sdk/go/testutil"
)

// The two servers of a session, by index.
const (
	onReal = 0 // the dflockd binary
	onFake = 1 // testutil
)

var sideNames = [2]string{"dflockd", "testutil"}

// Deadlines of the lock-step comparison.
const (
	replyWindow   = 2 * time.Second        // for a reply that should come at once
	blockWindow   = 150 * time.Millisecond // for the reply to a request that may block
	grace         = 1500 * time.Millisecond
	settle        = 15 * time.Millisecond // after a step, before looking for unsolicited events
	barrierWithin = 2 * time.Second
	splitPause    = 20 * time.Millisecond // between the chunks of a split request
)

// sessionConn is one client connection of a session, open to both servers.
type sessionConn struct {
	name    string
	c       [2]*rawClient
	id      [2]uint64 // each server's connection id; 0 if it refused the connection
	pending *pending  // a request still waiting for its reply
	authed  bool      // answered `ok` to auth (auth-token sessions)
	// enqueued are the keys this connection has enqueued (e/se answered
	// queued or acquired) and not yet waited for: the generator's hint.
	enqueued map[string]bool
	closed   bool // closed by the client, or by both servers
	// heldUntil is, for a connection the client closed while a request
	// was blocked on it, when that request times out: v1.10 notices the
	// close only then, so the connection counts until that moment.
	heldUntil time.Time
}

// pending is a blocking request whose reply has not arrived yet.
type pending struct {
	step     int
	deadline time.Time // when its timeout runs out
}

// session is one lock-step run against a dflockd process and a testutil server.
type session struct {
	name     string
	flags    serverFlags
	lookPast map[string]bool // known differences not to report (-difftest.avoid)
	addr     [2]string
	books    [2]*tokenBook

	observer *sessionConn // opened first; used for barriers
	conns    []*sessionConn
	byName   map[string]*sessionConn
	nextID   [2]uint64

	// waitEnds are the moments blocking requests time out, including those
	// of connections closed since (v1.10 keeps their waiters queued until
	// then): the random driver sends nothing close to them.
	waitEnds []time.Time

	transcript []string
	mismatch   bool
	stepNo     int

	shutdown func() // starts a graceful shutdown of both servers

	tokenKeys map[string]string // token name → the key it was granted for (hint for the generator)
}

// startSession starts both servers with flags and opens the observer
// connection. The returned stop function ends everything.
func startSession(ctx context.Context, binary, name string, flags serverFlags) (*session, func(), error) {
	rs, err := startReal(ctx, binary, flags)
	if err != nil {
		return nil, nil, err
	}
	srv, err := testutil.Start(flags.config())
	if err != nil {
		rs.stop()
		return nil, nil, err
	}
	s := &session{
		name:      name,
		flags:     flags,
		addr:      [2]string{rs.addr, srv.Addr()},
		books:     [2]*tokenBook{newTokenBook(), newTokenBook()},
		byName:    map[string]*sessionConn{},
		tokenKeys: map[string]string{},
	}
	var draining sync.WaitGroup
	s.shutdown = func() {
		rs.terminate()
		draining.Add(1)
		go func() {
			defer draining.Done()
			_ = srv.Shutdown(context.Background())
		}()
	}
	stop := func() {
		for _, c := range s.conns {
			for _, rc := range c.c {
				if rc != nil {
					rc.close()
				}
			}
		}
		_ = srv.Close()
		draining.Wait()
		rs.stop()
	}
	s.observer, err = s.dial("obs")
	if err == nil {
		s.nextID = [2]uint64{1, 1}
		s.observer.id = s.nextID
	}
	if err == nil && flags.AuthToken != "" {
		s.logf("  0 obs > auth|_|%s", flags.AuthToken)
		s.observer.c[onReal].send([]byte(request("auth", "_", flags.AuthToken)))
		s.observer.c[onFake].send([]byte(request("auth", "_", flags.AuthToken)))
		evs, got := awaitPair(s.observer.c, replyWindow, grace)
		s.observe("", evs, got)
	}
	if err != nil {
		stop()
		return nil, nil, err
	}
	return s, stop, nil
}

// dial opens a connection named name to both servers.
func (s *session) dial(name string) (*sessionConn, error) {
	sc := &sessionConn{name: name}
	for i := range sc.c {
		c, err := dialClient(s.addr[i])
		if err != nil {
			for _, o := range sc.c {
				if o != nil {
					o.close()
				}
			}
			return nil, fmt.Errorf("dial %s: %w", sideNames[i], err)
		}
		sc.c[i] = c
	}
	s.conns = append(s.conns, sc)
	s.byName[name] = sc
	return sc, nil
}

// connName names a server's connection id after the session's connection.
func (s *session) connNamer(side int) connNamer {
	return func(id uint64) string {
		if id == 0 {
			return "-"
		}
		for _, c := range s.conns {
			if c.id[side] == id {
				return c.name
			}
		}
		return "#" + strconv.FormatUint(id, 10)
	}
}

func (s *session) logf(format string, args ...any) {
	s.transcript = append(s.transcript, fmt.Sprintf(format, args...))
}

// observe normalises and compares one pair of events, records them, and
// reports whether they match.
func (s *session) observe(label string, evs [2]event, got [2]bool) (reply, reply, bool) {
	var r [2]reply
	for i := range r {
		r[i] = normalize(evs[i], got[i], s.books[i], s.connNamer(i))
	}
	ok := r[onReal].equal(r[onFake], s.lookPast["idle"])
	if ok {
		s.logf("    %s%s", label, r[onReal])
	} else {
		s.logf("    %sdflockd:  %s", label, r[onReal])
		s.logf("    %stestutil: %s   <<< MISMATCH", strings.Repeat(" ", len(label)), r[onFake])
		s.mismatch = true
	}
	return r[onReal], r[onFake], ok
}

// run applies one step to both servers and compares what they do. It
// returns false once the session has mismatched.
func (s *session) run(st step) bool {
	s.stepNo++
	s.logf("%3d %s", s.stepNo, st)
	switch st.kind {
	case stepSleep:
		time.Sleep(st.sleep)
	case stepShutdown:
		s.shutdown()
	case stepOpen:
		s.open(st.conn)
	case stepClose, stepHalfClose:
		sc := s.byName[st.conn]
		for _, c := range sc.c {
			if st.kind == stepClose {
				_ = c.nc.Close()
			} else {
				c.closeWrite()
			}
		}
		if st.kind == stepClose {
			sc.closed = true
			if sc.pending != nil {
				sc.heldUntil = sc.pending.deadline
			}
			sc.pending = nil
			s.barrier()
		}
	case stepSend:
		s.send(st)
	}
	if !s.mismatch {
		s.pollAll(settle)
	}
	s.shortLeaseGuard(time.Now())
	return !s.mismatch
}

// open dials a connection to both servers; a server over its connection
// cap accepts and closes at once, which is compared.
func (s *session) open(name string) {
	sc := &sessionConn{name: name}
	refused := false
	var evs [2]event
	for i := range sc.c {
		c, err := dialClient(s.addr[i])
		evs[i] = event{line: "<accepted>"}
		if err != nil {
			evs[i] = event{line: "<refused>"}
			refused = true
		}
		sc.c[i] = c
	}
	if refused {
		for _, c := range sc.c {
			if c != nil {
				c.close()
			}
		}
		sc.c = [2]*rawClient{}
		sc.closed = true
		s.byName[name] = sc
		s.observe("", evs, [2]bool{true, true})
		return
	}
	s.conns = append(s.conns, sc)
	s.byName[name] = sc
	evs, got := awaitPair(sc.c, 50*time.Millisecond, grace)
	if got[onReal] || got[onFake] {
		_, _, ok := s.observe("", evs, got)
		if ok && evs[onReal].closed {
			sc.closed = true // refused by both: no connection id
			return
		}
	}
	for i := range sc.id {
		if !got[i] {
			s.nextID[i]++
			sc.id[i] = s.nextID[i]
		}
	}
}

// send writes a request step to both servers and compares the replies.
func (s *session) send(st step) {
	sc := s.byName[st.conn]
	for i, chunk := range st.chunks {
		if i > 0 {
			time.Sleep(cmp.Or(st.pause, splitPause))
		}
		for side, c := range sc.c {
			c.send([]byte(s.books[side].render(chunk)))
		}
	}
	sent := time.Now()
	for k := 0; k < st.replies; k++ {
		window := replyWindow
		if st.blockFor > 0 {
			window = blockWindow
		}
		evs, got := awaitPair(sc.c, window, grace)
		if !got[onReal] && !got[onFake] && st.blockFor > 0 {
			sc.pending = &pending{step: s.stepNo, deadline: sent.Add(st.blockFor)}
			s.waitEnds = append(s.waitEnds, sc.pending.deadline)
			s.shortLeaseGuard(sc.pending.deadline)
			s.logf("    (no reply yet on either server)")
			return
		}
		r, _, ok := s.observe("", evs, got)
		if !ok {
			return
		}
		if st.replies == 1 {
			s.note(sc, strings.Join(st.chunks, ""), r.text)
		}
		if evs[onReal].closed {
			sc.closed = true
			s.barrier()
			return
		}
		if r.text == "error_auth" {
			// Both servers close the connection ~100 ms after error_auth
			// (the auth-failure delay), each on its own timer: wait for
			// both closes, so that no later step (a stats count) lands
			// between them.
			evs, got := awaitPair(sc.c, replyWindow, grace)
			if _, _, ok := s.observe("", evs, got); !ok {
				return
			}
			sc.closed = true
			s.barrier()
			return
		}
	}
}

// note keeps the generator's hints up to date after a single request was
// answered the same by both servers.
func (s *session) note(sc *sessionConn, req, answer string) {
	lines := strings.SplitN(req, "\n", 4)
	if len(lines) < 3 {
		return
	}
	cmd, key := strings.TrimRight(lines[0], "\r"), strings.TrimRight(lines[1], "\r")
	if f := strings.Fields(answer); len(f) == 3 && (f[0] == "ok" || f[0] == "acquired") {
		s.tokenKeys[f[1]] = key
	}
	switch {
	case cmd == "auth" && answer == "ok":
		sc.authed = true
	case (cmd == "e" || cmd == "se") && (answer == "queued" || strings.HasPrefix(answer, "acquired ")):
		if sc.enqueued == nil {
			sc.enqueued = map[string]bool{}
		}
		sc.enqueued[key] = true
	case cmd == "w" || cmd == "sw":
		delete(sc.enqueued, key)
	}
}

// pollAll waits d, then takes every event that arrived unasked or for a
// pending request on any connection, and compares it with the other
// server's (waiting up to grace for it). A connection that ended on both
// servers triggers a barrier.
func (s *session) pollAll(d time.Duration) {
	time.Sleep(d)
	ended := false
	for _, sc := range s.conns {
		for !sc.closed && s.ready(sc) {
			evs, got := awaitPair(sc.c, grace, grace)
			label := sc.name + " unasked: "
			if p := sc.pending; p != nil {
				label = fmt.Sprintf("%s reply to step %d: ", sc.name, p.step)
				sc.pending = nil
				// Answered: its timeout no longer changes anything.
				if i := slices.Index(s.waitEnds, p.deadline); i >= 0 {
					s.waitEnds = slices.Delete(s.waitEnds, i, i+1)
				}
			}
			if _, _, ok := s.observe(label, evs, got); !ok {
				return
			}
			if evs[onReal].closed {
				sc.closed = true
				ended = true
			}
		}
	}
	if ended {
		s.barrier()
	}
}

// ready reports whether either server has delivered an event on sc that
// nobody has taken yet.
func (s *session) ready(sc *sessionConn) bool {
	if sc.c[onReal].ended() && sc.c[onFake].ended() {
		return false
	}
	for _, c := range sc.c {
		if c.ended() || len(c.events) > 0 {
			return true
		}
	}
	return false
}

// barrier waits until both servers count the connections the harness
// expects to be open, so that the cleanup after a close has happened on
// both before the next step. It asks over the observer connection and
// records nothing: a difference shows in the next stats step.
func (s *session) barrier() {
	if s.observer.c[onReal].ended() || s.observer.c[onFake].ended() {
		return
	}
	deadline := time.Now().Add(barrierWithin)
	for time.Now().Before(deadline) {
		want := s.expectedConns()
		if cur := s.connCounts(); cur[onReal] == want && cur[onFake] == want {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond)
}

// expectedConns is how many connections the servers should count: the
// open ones, plus those the client closed while a request was blocked on
// them and whose timeout has not run out yet. (If such a request is
// granted first, the server drops the connection early and the barrier
// merely waits its full time.)
func (s *session) expectedConns() int {
	n := 0
	now := time.Now()
	for _, sc := range s.conns {
		if !sc.closed || now.Before(sc.heldUntil) {
			n++
		}
	}
	return n
}

// connCounts asks both servers for their connection count over the observer.
func (s *session) connCounts() [2]int {
	out := [2]int{-1, -2}
	for _, c := range s.observer.c {
		c.send([]byte(request("stats", "_", "")))
	}
	evs, got := awaitPair(s.observer.c, replyWindow, grace)
	for i := range out {
		if !got[i] || evs[i].closed {
			continue
		}
		r := normalize(evs[i], true, newTokenBook(), s.connNamer(i))
		if r.stats != nil {
			out[i] = r.stats.Connections
		}
	}
	return out
}

// Around the moment a wait times out, which of a timeout and a grant wins
// is a race; the random driver keeps its steps this far from it.
const (
	guardBefore = 300 * time.Millisecond
	guardAfter  = 400 * time.Millisecond
)

// guard waits out any wait that is about to time out, then collects what
// that produced.
func (s *session) guard() {
	now := time.Now()
	var until time.Time
	for _, t := range s.waitEnds {
		if now.After(t.Add(-guardBefore)) && now.Before(t.Add(guardAfter)) && t.Add(guardAfter).After(until) {
			until = t.Add(guardAfter)
		}
	}
	if until.IsZero() {
		return
	}
	time.Sleep(time.Until(until))
	s.pollAll(0)
	s.barrier()
}

// waitForPending sleeps until the earliest pending wait has timed out and
// collects what came of it.
func (s *session) waitForPending() {
	var first time.Time
	for _, sc := range s.conns {
		if sc.pending != nil && !sc.closed && (first.IsZero() || sc.pending.deadline.Before(first)) {
			first = sc.pending.deadline
		}
	}
	if first.IsZero() {
		return
	}
	time.Sleep(time.Until(first) + guardAfter)
	s.pollAll(0)
	s.barrier()
}

// finish collects every pending reply (waiting for the waits to time out),
// compares a last stats snapshot, and looks for late closes.
func (s *session) finish() {
	if s.mismatch {
		return
	}
	var last time.Time
	for _, t := range s.waitEnds {
		if t.After(last) {
			last = t
		}
	}
	if wait := time.Until(last); wait > -guardAfter {
		s.logf("    (waiting for pending requests to end)")
		time.Sleep(wait + guardAfter)
		s.pollAll(0)
		if s.mismatch {
			return
		}
		s.barrier()
	}
	for _, sc := range s.conns[1:] {
		if sc.pending != nil && !sc.closed {
			s.logf("    %s: pending reply never came", sc.name)
		}
	}
	s.stepNo++
	s.logf("%3d obs > stats (end of session)", s.stepNo)
	for _, c := range s.observer.c {
		c.send([]byte(request("stats", "_", "")))
	}
	evs, got := awaitPair(s.observer.c, replyWindow, grace)
	if _, _, ok := s.observe("", evs, got); ok {
		s.pollAll(50 * time.Millisecond)
	}
}

// report is the transcript of a mismatched session.
func (s *session) report() string {
	var b strings.Builder
	verdict := "dflockd and testutil agreed"
	if s.mismatch {
		verdict = "testutil differs from dflockd"
	}
	fmt.Fprintf(&b, "session %s: %s\nflags: %s\n", s.name, verdict, s.flags)
	for _, l := range s.transcript {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}
