package dflock

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/wire"
)

const (
	// DefaultSignalBuffer is the number of signals a Subscription buffers
	// for its consumer (see Buffer).
	DefaultSignalBuffer = 256
	// MaxSignalBuffer bounds Buffer. A buffer takes memory only for the
	// signals actually queued in it, so the bound is about what a consumer
	// that fell behind may pin: a full one holds MaxSignalBuffer signals
	// and their payloads.
	MaxSignalBuffer = 1 << 20
)

// signalChanSlots is the most signals the channel of C holds (it has one
// more slot, for a gap marker). Signals beyond it wait in the
// subscription's overflow queue, which grows on demand up to the buffer
// size, so an idle subscription costs a small channel whatever its Buffer.
const signalChanSlots = 32

// keepOverflow is the largest overflow queue kept once it has emptied, so
// that a consumer lagging in small bursts does not reallocate it each time;
// a larger one is freed.
const keepOverflow = 256

var (
	// ErrSignalGap: signals may have been missed. A Subscription reports it
	// (as a *GapError) when a listener connection it depends on broke: the
	// Client reconnects and listens again by itself, and the subscription
	// goes on, but whatever was emitted in between is lost. It is not
	// terminal.
	ErrSignalGap = errors.New("dflock: signals may have been missed")

	// ErrSubscriptionClosed: the Subscription was closed (by its Close, or
	// by Client.Close, in which case the error matches ErrClosed as well).
	ErrSubscriptionClosed = errors.New("dflock: subscription closed")
)

// errNotSupported is the error of a listen or signal request answered with
// the bare `error`. Arguments are validated before anything is sent, so
// that answer means the server does not know the command.
var errNotSupported = fmt.Errorf("%w (the server answered `error`: signals exist only in dflockd v1.11–v1.16; "+
	"a listen is also refused at the server's --max-subscriptions cap, and before v1.15 a signal line over 256 bytes)", ErrNotSupported)

// GapError reports that a Subscription may have missed signals because its
// listener connection to Server broke (Err says why). It matches
// ErrSignalGap.
//
// A break is reported at once. If the consumer takes that marker before
// the subscription listens on Server again, a second one (Resumed true)
// follows once it does, since the signals emitted in between are lost too:
// a consumer that resynchronises on every gap has then resynchronised after
// the outage as well. A marker the consumer takes only after the re-listen
// gets no second one.
type GapError struct {
	Server string
	Err    error
	// Resumed marks the second marker of a break: the subscription listens
	// on Server again, and signals emitted from now on are delivered.
	Resumed bool
}

func (e *GapError) Error() string {
	s := "dflock: signals may have been missed: listener connection to " + e.Server + " lost"
	if e.Err != nil {
		s += ": " + trimPrefix(e.Err.Error())
	}
	if e.Resumed {
		s += " (listening again)"
	}
	return s
}

// Is reports whether target is ErrSignalGap.
func (e *GapError) Is(target error) bool { return target == ErrSignalGap }

// Unwrap returns Err.
func (e *GapError) Unwrap() error { return e.Err }

// Signal is one message received by a Subscription.
type Signal struct {
	// Channel the signal was emitted on.
	Channel string
	// Payload as emitted.
	Payload string
	// Err is nil for a signal. On the gap markers that C delivers it is a
	// *GapError (matching ErrSignalGap) and Channel and Payload are empty.
	Err error
}

// A ListenOption tunes one Listen.
type ListenOption func(*listenOptions)

type listenOptions struct {
	group    string
	hasGroup bool // Group was given: "" is then an error, not "no group"
	buffer   int
}

// Group makes the subscription a member of the queue group name: each
// signal matching the pattern goes to one member of the group rather than
// to all of them. Groups are keyed by (pattern, name), as on the server.
// The server picks members round-robin by connection; a Client gives each
// member a listener connection of its own up to WithGroupConns, so its
// members count as many as members in other processes. Default: no group
// (every subscription gets every signal). An empty name is an *ArgError
// (a name read from an unset variable would otherwise mean "no group", and
// every member would get every signal).
func Group(name string) ListenOption {
	return func(o *listenOptions) { o.group, o.hasGroup = name, true }
}

// Buffer sets how many signals the subscription buffers for its consumer,
// from 1 to MaxSignalBuffer. When the buffer is full further signals are
// dropped and counted (see Subscription.Dropped). Memory is taken as
// signals queue up and given back as they are consumed, so a large buffer
// costs nothing until the consumer falls behind. Default
// DefaultSignalBuffer.
func Buffer(n int) ListenOption {
	return func(o *listenOptions) { o.buffer = n }
}

// Listen subscribes to the signals whose channel matches pattern, until the
// Subscription is closed. Patterns are NATS-like: tokens separated by '.',
// '*' matches exactly one token, '>' (last) one or more; "orders.*.paid",
// "events.>", and ">" for everything. A literal pattern is served by the
// server that owns that channel (the placement of locks and of Emit); a
// pattern with wildcards listens on every server and merges their signals.
//
// Listen returns once every server involved has confirmed the
// subscription: a signal emitted after that is delivered (at most once; see
// Subscription). It fails fast with ErrServerUnavailable if one of them is
// down, and with ErrNotSupported against servers without signals (dflockd
// v1.10 and v2.x). Invalid patterns and options are rejected before any
// I/O with an *ArgError naming the argument.
//
// All the non-grouped subscriptions of a Client share one listener
// connection per server; the members of a queue group (pattern, name) get
// one each per server, up to WithGroupConns, and then share them. These
// connections are outside the lock pools, kept alive with pings
// (WithKeepAlive), and re-established with backoff if they break.
func (c *Client) Listen(ctx context.Context, pattern string, opts ...ListenOption) (*Subscription, error) {
	if ctx == nil {
		return nil, &ArgError{Arg: "ctx", Reason: "must not be nil"}
	}
	o := listenOptions{buffer: DefaultSignalBuffer}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if err := wire.ValidatePattern(pattern); err != nil {
		return nil, err
	}
	if o.hasGroup && o.group == "" {
		return nil, &ArgError{Arg: "group", Reason: "must not be empty (omit Group for no group)"}
	}
	if err := wire.ValidateGroup(o.group); err != nil {
		return nil, err
	}
	if o.buffer < 1 || o.buffer > MaxSignalBuffer {
		return nil, &ArgError{Arg: "buffer", Value: strconv.Itoa(o.buffer), Reason: "must be between 1 and " + strconv.Itoa(MaxSignalBuffer)}
	}
	if !c.enter() {
		return nil, &Error{Op: "listen", Key: pattern, Err: ErrClosed}
	}
	defer c.leave()

	servers := c.servers
	if !isWildcard(pattern) {
		srv, err := c.route(pattern)
		if err != nil {
			return nil, &Error{Op: "listen", Key: pattern, Err: err}
		}
		servers = []*server{srv}
	}
	for _, srv := range servers {
		if err := srv.pool.Err(); err != nil {
			return nil, &Error{Op: "listen", Key: pattern, Server: srv.addr, Err: err}
		}
	}
	s := &Subscription{
		c:       c,
		pattern: pattern,
		group:   o.group,
		size:    o.buffer,
		// One slot more than the signals it takes: it is reserved for a
		// gap marker, so that a gap is reported even to a consumer that
		// fell behind.
		ch: make(chan Signal, min(o.buffer, signalChanSlots)+1),
	}
	s.gapsAt = make([]uint64, cap(s.ch)+1)
	opCtx, cancel := c.opContext(ctx)
	defer cancel()
	if opCtx.Err() != nil {
		return nil, &Error{Op: "listen", Key: pattern, Err: c.ctxError(ctx, opCtx, nil)}
	}
	waits, err := c.signals.attach(c, s, servers)
	if err != nil {
		return nil, &Error{Op: "listen", Key: pattern, Err: err}
	}
	for _, w := range waits {
		var err error
		select {
		case err = <-w.ch:
			if err != nil {
				err = c.failedError(ctx, opCtx, err)
			}
		case <-opCtx.Done():
			err = c.ctxError(ctx, opCtx, nil)
		}
		if err != nil {
			c.signals.detach(s)
			// What s took meanwhile (a wildcard's server that confirmed
			// first, a forwarded job) the server counted delivered, and
			// nobody will read it.
			c.stats.sigDropped.Add(int64(s.held()))
			s.finish(ErrSubscriptionClosed)
			return nil, &Error{Op: "listen", Key: pattern, Server: w.l.srv.addr, Err: err}
		}
	}
	return s, nil
}

// isWildcard reports whether a (valid) pattern has a '*' or '>' token.
func isWildcard(pattern string) bool { return strings.ContainsAny(pattern, "*>") }

// Emit sends payload to the subscribers of channel and returns how many
// received it (as counted by the channel's server: one per listening
// connection and one per matching queue group, so a Client's several
// matching subscriptions without a group count once, and each of its
// matching groups once more). Signals are fire-and-forget and
// delivered at most once: a subscriber that is disconnected, or too slow,
// misses them. An Emit that fails because its connection broke (or whose
// ctx ended first) may still have reached the server and be delivered —
// later than Emits that returned after it: a caller that retries may
// cause a duplicate, out of order.
//
// channel follows the key rules and must not contain '*' or '>'; payload
// must not be blank or contain CR, LF or NUL, and is at most 65 531 −
// len(channel) bytes (dflockd before v1.15 accepts only 256-byte lines).
// Invalid input is rejected before any I/O with an *ArgError. Emit is routed
// like locks: to the server that owns channel. Against servers without
// signals it returns an error matching ErrNotSupported.
//
// Emit is pipelined on the control lane, except that payloads over 256
// bytes share one connection per server of their own (dialled on first
// use): it owns no lease and is outside the wait pool, so Locks blocked at
// WithMaxConnsPerServer do not delay them.
func (c *Client) Emit(ctx context.Context, channel, payload string) (int, error) {
	if ctx == nil {
		return 0, &ArgError{Arg: "ctx", Reason: "must not be nil"}
	}
	req := wire.Request{Cmd: wire.CmdSignal, Key: channel, Arg: payload}
	if err := req.Validate(); err != nil {
		return 0, err
	}
	srv, opCtx, cancel, err := c.begin(ctx, "emit", channel)
	if err != nil {
		return 0, err
	}
	defer c.leave()
	defer cancel()
	var r wire.Reply
	if req.LineLen() <= wire.MaxLine {
		r, _, err = srv.pool.Do(opCtx, req)
	} else {
		// A long payload could get a lease-owning lane connection closed
		// by a server before v1.15 (line too long): long Emits share a
		// connection of their own, which owns no lease and is outside the
		// wait pool, so that blocked Locks cannot make them wait.
		r, err = c.signals.emitLong(opCtx, srv, req)
	}
	if err != nil {
		return 0, &Error{Op: "emit", Key: channel, Server: srv.addr, Err: c.failedError(ctx, opCtx, err)}
	}
	switch r.Status {
	case wire.StatusOK:
		// Where int is 32 bits, a count past it (a broken server's)
		// reads as the most an int can say, not as a wrapped one.
		return int(min(r.Count, math.MaxInt)), nil
	case wire.StatusError:
		return 0, &Error{Op: "emit", Key: channel, Server: srv.addr, Err: errNotSupported}
	}
	word, sentinel := replyError(r)
	return 0, &Error{Op: "emit", Key: channel, Server: srv.addr, Reply: word, Err: sentinel}
}

// Subscription receives the signals of one Listen. Consume them with C or
// Next (not both), and Close it when done.
//
// Delivery is at most once. Each subscription has a bounded buffer
// (Buffer): the Client's reader never waits for a consumer, so while the
// buffer is full new signals are dropped and counted (Dropped), and a
// warning is logged once per such episode, at most once a second. When a listener connection
// breaks, the Client reconnects with backoff and listens again, and the
// subscription reports the gap in order, after the signals received
// before it and before any received after it: Next returns an error
// matching ErrSignalGap once, and C delivers a Signal whose Err is set. A
// gap is queued even when the buffer is full of signals; a gap of a server
// whose previous gap still waits in the overflow queue, with no signal
// behind it, merges into it (one already in C does not). Warnings are logged
// off the connection's reader, so a slow log handler cannot stall it.
//
// All methods are safe for concurrent use.
type Subscription struct {
	c       *Client
	pattern string
	group   string
	size    int         // Buffer: the most signals queued (ch + over)
	ch      chan Signal // cap min(size, signalChanSlots)+1: the last slot is for a gap marker

	attached []*listener // set by attach, then read-only

	dropped atomic.Uint64

	mu       sync.Mutex
	closed   bool
	chClosed bool
	closeErr error
	warned   bool      // this episode was reported (warning, hook)
	warnedAt time.Time // when the last episode was reported

	ov       *overflow      // made when ch first fills up
	drainers sync.WaitGroup // finish waits for the drainer before closing ch

	// What went into ch, to tell how many of the entries in it are gap
	// markers (they do not count against size): ch is FIFO, so the
	// len(ch) entries it holds are the last len(ch) sent. sent counts the
	// sends; gapsAt[i%len(gapsAt)] is the number of markers among the
	// first i, kept for the last cap(ch)+1 values of i. Under mu.
	sent   uint64
	gapsAt []uint64
	// sending: the drainer is sending an entry without mu and records it
	// once it has mu again (sendingGap: that entry is a gap marker).
	sending, sendingGap bool
	// gapSeq: per server, the place (in sent's count) of the marker of its
	// last break, until the subscription listens there again (resumed).
	gapSeq map[string]uint64
}

// overflow queues, oldest first, what arrived for a Subscription while its
// channel was full; a drain goroutine, running only while the queue is
// non-empty, moves it into the channel. While the queue is non-empty only
// the drainer sends on the channel: that keeps the order, and makes every
// send done under Subscription.mu with room in the channel non-blocking.
// Guarded by Subscription.mu.
type overflow struct {
	q        sigQueue
	sigs     int           // signals in q; the rest are gap markers
	draining bool          // the drainer runs
	stop     chan struct{} // closed by finish to stop the drainer
}

// Pattern returns the pattern given to Listen.
func (s *Subscription) Pattern() string { return s.pattern }

// Group returns the queue group, or "" for none.
func (s *Subscription) Group() string { return s.group }

// C returns the channel of received signals. A Signal with a non-nil Err
// is a gap marker (see Subscription). The channel is closed by Close and by
// Client.Close.
func (s *Subscription) C() <-chan Signal { return s.ch }

// Next returns the next signal, waiting until one arrives, ctx ends, or the
// subscription is closed (then the error matches ErrSubscriptionClosed).
// After a gap it returns, once, an error matching ErrSignalGap (a
// *GapError); keep calling Next to receive the signals that follow. A nil
// ctx is an *ArgError, as for every other call.
func (s *Subscription) Next(ctx context.Context) (Signal, error) {
	if ctx == nil {
		return Signal{}, &ArgError{Arg: "ctx", Reason: "must not be nil"}
	}
	if err := s.closedErr(); err != nil {
		return Signal{}, err
	}
	select {
	case sig, ok := <-s.ch:
		return s.received(sig, ok)
	default:
	}
	select {
	case sig, ok := <-s.ch:
		return s.received(sig, ok)
	case <-ctx.Done():
		return Signal{}, ctxCause(ctx)
	}
}

func (s *Subscription) received(sig Signal, ok bool) (Signal, error) {
	if !ok {
		return Signal{}, s.closedErr()
	}
	if sig.Err != nil {
		return Signal{}, sig.Err
	}
	return sig, nil
}

// Dropped returns how many signals were dropped because the buffer was full.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription: the server-side subscription is withdrawn
// (in the background; the listener connection is closed when no
// subscription uses it any more), C is closed, and Next returns an error
// matching ErrSubscriptionClosed. Signals still buffered can be read from
// C, as many as its channel holds (a few dozen). The rest are not lost
// silently: a queue-group member's jobs go to another member of its group
// in this Client, as jobs that reach its connection after it left do, and
// are counted in Snapshot.SignalsDropped only if none is left; a plain
// subscription's are counted there. Close is idempotent and never blocks
// on the network; it returns nil.
func (s *Subscription) Close() error {
	s.c.signals.detach(s)
	if rest := s.finish(ErrSubscriptionClosed); len(rest) > 0 {
		s.c.signals.handOn(s, rest)
	}
	return nil
}

func (s *Subscription) closedErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		return nil
	}
	return s.closeErr
}

// held is the number of signals s holds, in its channel and its overflow.
func (s *Subscription) held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.signalsInChLocked()
	if s.ov != nil {
		n += s.ov.sigs
	}
	return n
}

// finish marks the subscription closed, stops the drainer and closes the
// channel. Every call returns once the channel is closed; the one that
// closes it returns the signals that did not fit in it (the overflow's,
// gap markers aside), which nobody will read.
func (s *Subscription) finish(err error) (rest []Signal) {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.closeErr = err
		if s.ov != nil {
			close(s.ov.stop)
		}
	}
	s.mu.Unlock()
	// No drainer starts once closed is set, so this waits for at most the
	// one running now, which stops at once (it never waits for the
	// consumer once stop is closed).
	s.drainers.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.chClosed {
		return nil
	}
	s.chClosed = true
	if ov := s.ov; ov != nil {
		for ov.q.n > 0 && len(s.ch) < cap(s.ch) {
			s.sendLocked(s.popLocked())
		}
		for ov.q.n > 0 {
			if sig := ov.q.pop(); sig.Err == nil {
				rest = append(rest, sig)
			}
		}
		ov.q, ov.sigs = sigQueue{}, 0
	}
	close(s.ch)
	return rest
}

// offer queues sig if there is room and reports whether it did (a closed
// subscription swallows it). Called by listener readers; never blocks.
func (s *Subscription) offer(sig Signal) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return true
	}
	queued := s.signalsInChLocked()
	if s.ov != nil {
		queued += s.ov.sigs
	}
	if queued >= s.size {
		return false
	}
	s.warned = false // the episode ended: the next drop starts another
	if !s.overflowingLocked() && len(s.ch) < cap(s.ch)-1 {
		s.sendLocked(sig)
		return true
	}
	s.queueLocked(sig)
	s.ov.sigs++
	return true
}

// slowWarnEvery spaces a subscription's slow-consumer reports: a consumer
// just below the push rate ends an episode at nearly every signal that
// fits, and one warning and hook call per drop would crowd the Client's
// callback queue, which the other hooks and log records share.
const slowWarnEvery = time.Second

// drop counts one dropped signal and reports whether the slow-consumer
// episode it belongs to (which ends when a signal is delivered again) is to
// be reported now: at its first drop, or at its first drop after
// slowWarnEvery since the last report. The caller then has warnSlow called
// off the reader goroutine.
func (s *Subscription) drop() (report bool) {
	s.dropped.Add(1)
	s.mu.Lock()
	if !s.warned && !s.closed {
		now := time.Now()
		if s.warnedAt.IsZero() || now.Sub(s.warnedAt) >= slowWarnEvery {
			s.warned, s.warnedAt, report = true, now, true
		}
	}
	s.mu.Unlock()
	s.c.noteSignalDrop(s, report)
	return report
}

// warnSlow logs a slow-consumer episode that drop reported. Listener
// supervisors call it, never a reader: a log handler is user code.
func (s *Subscription) warnSlow() {
	if s.closedErr() != nil {
		return
	}
	s.c.log.Warn("dflock: slow signal consumer: buffer full, dropping signals",
		"pattern", s.pattern, "group", s.group, "buffer", s.size, "dropped", s.dropped.Load())
}

// gap reports a gap, in order after everything queued, whether or not the
// buffer is full (gap markers do not count against it). A gap of a server
// whose previous gap is still queued with no signal behind it merges into
// it: the consumer could not tell the two apart. Once a signal is queued
// behind a marker, a new gap gets a marker of its own, or the loss between
// that signal and the next would go unreported. So between two queued
// signals there is at most one marker per server, which bounds them.
// reported is false if g merged or the subscription is closed: then it is
// not a gap of its own for Snapshot and Hooks.OnSignalGap either.
func (s *Subscription) gap(g *GapError) (reported bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if i, ok := s.gapPendingLocked(g.Server); ok {
		// Merged. The marker's place goes (back) into gapSeq: resumed
		// may have dropped it when the previous re-listen came before
		// the consumer took the marker, and the consumer may take it
		// during this outage.
		if s.gapSeq == nil {
			s.gapSeq = make(map[string]uint64)
		}
		s.gapSeq[g.Server] = s.sent + uint64(i)
		return false
	}
	// The marker's place in the order of entries sent into ch: after
	// those sent, and after those queued (the one the drainer may be
	// sending included: it stays queued until noted).
	seq := s.sent
	if s.ov != nil {
		seq += uint64(s.ov.q.n)
	}
	if s.gapSeq == nil {
		s.gapSeq = make(map[string]uint64)
	}
	s.gapSeq[g.Server] = seq
	s.issueGapLocked(g)
	return true
}

// resumed queues g (GapError.Resumed), the second marker of server's last
// break, once the subscription listens on g.Server again — unless the
// consumer is sure not to have taken the first marker yet: then it takes
// it after the re-listen, and missed nothing it was not told of.
func (s *Subscription) resumed(g *GapError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq, ok := s.gapSeq[g.Server]
	if !ok || s.closed {
		return
	}
	delete(s.gapSeq, g.Server)
	// Entries the consumer has received: those sent but still in ch are
	// not; the one the drainer is sending without mu may have landed
	// (counted in len(ch), not yet in sent), so count it as received,
	// erring towards a second marker.
	received := int64(s.sent) - int64(len(s.ch))
	if s.sending {
		received++
	}
	if int64(seq) >= received {
		return // still to be received
	}
	s.issueGapLocked(g)
}

// issueGapLocked sends gap marker g into ch, or queues it behind what waits
// for room. s.mu held, s open.
func (s *Subscription) issueGapLocked(g *GapError) {
	if !s.overflowingLocked() && len(s.ch) < cap(s.ch) {
		s.sendLocked(Signal{Err: g})
		return
	}
	s.queueLocked(Signal{Err: g})
}

// gapPendingLocked reports whether server's break marker is queued with
// only gap markers behind it, and where in the queue. A Resumed marker of
// server behind it ends the search: a new break after "listening again"
// needs a marker of its own. s.mu held.
func (s *Subscription) gapPendingLocked(server string) (int, bool) {
	if s.ov == nil {
		return 0, false
	}
	q := &s.ov.q
	for i := q.n - 1; i >= 0; i-- {
		g, ok := q.at(i).Err.(*GapError)
		if !ok {
			return 0, false // a signal came after it
		}
		if g.Server == server {
			return i, !g.Resumed
		}
	}
	return 0, false
}

// overflowingLocked reports whether the overflow queue is non-empty.
// s.mu held.
func (s *Subscription) overflowingLocked() bool { return s.ov != nil && s.ov.q.n > 0 }

// queueLocked appends sig to the overflow queue and starts the drainer
// unless it runs. s.mu held, s open.
func (s *Subscription) queueLocked(sig Signal) {
	if s.ov == nil {
		s.ov = &overflow{stop: make(chan struct{})}
	}
	s.ov.q.push(sig, s.size)
	if !s.ov.draining {
		s.ov.draining = true
		s.drainers.Add(1)
		go s.drain()
	}
}

// drain moves the overflow queue into the channel, waiting for the
// consumer as needed, and exits when the queue is empty or the
// subscription closes.
func (s *Subscription) drain() {
	defer s.drainers.Done()
	s.mu.Lock()
	ov := s.ov
	for {
		for ov.q.n > 0 && len(s.ch) < cap(s.ch) {
			s.sendLocked(s.popLocked())
		}
		if s.closed || ov.q.n == 0 {
			break
		}
		// Wait for room without holding mu, so that readers can go on
		// queueing (behind this signal) or dropping.
		sig := ov.q.front()
		s.sending, s.sendingGap = true, sig.Err != nil
		s.mu.Unlock()
		select {
		case s.ch <- sig:
		case <-ov.stop:
			s.mu.Lock()
			s.sending = false
			s.mu.Unlock()
			return // finish takes over what is left
		}
		s.mu.Lock()
		s.sending = false
		s.noteSentLocked(s.popLocked())
	}
	ov.draining = false
	if ov.q.n == 0 && len(ov.q.buf) > keepOverflow {
		ov.q = sigQueue{}
	}
	s.mu.Unlock()
}

// sendLocked puts sig into ch, which has room. s.mu held.
func (s *Subscription) sendLocked(sig Signal) {
	s.ch <- sig
	s.noteSentLocked(sig)
}

// noteSentLocked records that sig went into ch. s.mu held.
func (s *Subscription) noteSentLocked(sig Signal) {
	n := uint64(len(s.gapsAt))
	gaps := s.gapsAt[s.sent%n]
	if sig.Err != nil {
		gaps++
	}
	s.sent++
	s.gapsAt[s.sent%n] = gaps
}

// signalsInChLocked is the number of signals, gap markers aside, in ch.
// While the drainer sends without s.mu, its entry may or may not be in ch
// already: the count is then the smaller of the two readings, so that a
// marker never takes a signal's place (at worst one signal more is let in
// for the moment). s.mu held.
func (s *Subscription) signalsInChLocked() int {
	k := uint64(len(s.ch))
	n := s.recordedSignals(k)
	if s.sending && k > 0 {
		landed := s.recordedSignals(k - 1)
		if !s.sendingGap {
			landed++
		}
		n = min(n, landed)
	}
	return n
}

// recordedSignals is the number of signals among the last k entries
// recorded as sent. s.mu held.
func (s *Subscription) recordedSignals(k uint64) int {
	k = min(k, s.sent)
	n := uint64(len(s.gapsAt))
	return int(k - (s.gapsAt[s.sent%n] - s.gapsAt[(s.sent-k)%n]))
}

// popLocked removes the oldest entry of the overflow queue. s.mu held.
func (s *Subscription) popLocked() Signal {
	ov := s.ov
	sig := ov.q.pop()
	if sig.Err == nil {
		ov.sigs--
	}
	return sig
}

// sigQueue is a FIFO ring of signals that grows on demand.
type sigQueue struct {
	buf  []Signal
	head int
	n    int
}

// push appends sig, growing the ring by doubling (from 16 slots), to no
// more than limit slots unless more are needed.
func (q *sigQueue) push(sig Signal, limit int) {
	if q.n == len(q.buf) {
		nb := make([]Signal, max(min(max(2*len(q.buf), 16), limit), q.n+1))
		k := copy(nb, q.buf[q.head:])
		copy(nb[k:], q.buf[:q.head])
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.n)%len(q.buf)] = sig
	q.n++
}

func (q *sigQueue) front() Signal { return q.buf[q.head] }

// at returns the i-th signal from the front (0 <= i < q.n).
func (q *sigQueue) at(i int) Signal { return q.buf[(q.head+i)%len(q.buf)] }

func (q *sigQueue) pop() Signal {
	sig := q.buf[q.head]
	q.buf[q.head] = Signal{} // drop the payload's reference
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	return sig
}
