package dflock

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/dflock-sdk/go/pool"
	"github.com/dflock-sdk/go/wire"
)

// sigConn is a pool listener connection as the signal code uses it: the one
// place that names the pool's listener API.
type sigConn struct{ pc *pool.ListenerConn }

// dialSigConn dials a listener connection to srv. onPush runs on the
// connection's reader and onBroken on whichever goroutine notices the
// break (possibly before dialSigConn returns); neither may block.
func dialSigConn(ctx context.Context, srv *server, onPush func(wire.Push), onBroken func(error)) (*sigConn, error) {
	pc, err := srv.pool.DialListener(ctx, onPush, onBroken)
	if err != nil {
		return nil, err
	}
	return &sigConn{pc: pc}, nil
}

// err is nil while the connection is usable.
func (c *sigConn) err() error { return c.pc.Err() }

// destroy closes the connection; onBroken runs on the calling goroutine
// if the connection was still up, so no lock it takes may be held.
func (c *sigConn) destroy() { c.pc.Destroy() }

// signalHub owns the Client's listener connections and subscriptions, and
// the connections of long Emits.
//
// Connections are keyed by server and queue group: one per server for every
// non-grouped subscription (the reader matches each push against the local
// patterns and hands a copy to every matching subscription — the server
// sends a connection one copy however many of its patterns match), and up
// to WithGroupConns per (server, pattern, group) for queue groups: the
// server keys a group by (pattern, name) and picks one member connection
// per signal, and a push line does not say which subscription it is for, so
// a group connection serves one group only. A group's members are spread
// over several connections so that the server sees (and buffers for) as
// many members as it would if they lived in separate processes; members
// sharing one connection take turns. Server-side subscriptions are
// reference-counted: `listen` when the first local subscription of a
// pattern appears on a connection, `unlisten` (or closing the connection)
// when the last one goes.
//
// Lock order: signalHub.mu, then listener.mu, then Subscription.mu. None
// is held across I/O, user code or a connection's destroy.
type signalHub struct {
	mu        sync.Mutex
	closed    bool
	listeners map[listenerKey]*listener
	subs      map[*Subscription]struct{}
	emitters  map[*server]*emitConn
	wg        sync.WaitGroup // listener supervisors
}

type listenerKey struct {
	srv     *server
	group   string
	pattern string // queue-group connections only
	slot    int    // queue-group connections only: which of the group's connections to srv
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
		var l *listener
		if s.group == "" {
			l = h.listenerLocked(c, listenerKey{srv: srv})
		} else {
			l = h.memberListenerLocked(c, srv, s)
		}
		s.attached = append(s.attached, l)
		waits = append(waits, attachment{l: l, ch: l.add(s)})
	}
	h.subs[s] = struct{}{}
	return waits, nil
}

// listenerLocked returns the listener of key, starting it if there is
// none. h.mu held.
func (h *signalHub) listenerLocked(c *Client, key listenerKey) *listener {
	l := h.listeners[key]
	if l == nil {
		l = newListener(c, key)
		h.listeners[key] = l
		h.wg.Add(1)
		go l.run()
	}
	return l
}

// memberListenerLocked picks the connection of srv that queue-group member
// s joins on: one of its own while the group has fewer than
// WithGroupConns connections there, else the one with the fewest members
// (a connection whose members all left, and that has not retired yet,
// first of all). Members are not moved afterwards: a connection keeps the
// members it has until they leave. h.mu held.
func (h *signalHub) memberListenerLocked(c *Client, srv *server, s *Subscription) *listener {
	key := listenerKey{srv: srv, group: s.group, pattern: s.pattern}
	var least *listener
	leastN, free := 0, -1
	for slot := range c.opts.groupConnLimit() {
		key.slot = slot
		l := h.listeners[key]
		if l == nil {
			if free < 0 {
				free = slot
			}
			continue
		}
		if n := l.members(); least == nil || n < leastN {
			least, leastN = l, n
		}
	}
	if least != nil && (leastN == 0 || free < 0) {
		return least
	}
	key.slot = free
	return h.listenerLocked(c, key)
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

// handOn takes the signals a closed subscription s held and nobody will
// read (Subscription.Close): a queue group's jobs, which the server counted
// delivered, go to another member of the group here, as forward does for
// jobs that reach a connection after its members left; a plain
// subscription's are counted dropped. s is detached already, so it is not
// a candidate.
func (h *signalHub) handOn(s *Subscription, sigs []Signal) {
	if s.group == "" || len(s.attached) == 0 {
		s.c.stats.sigDropped.Add(int64(len(sigs)))
		return
	}
	// Every member of the group is attached on the servers of its pattern,
	// so one of s's listeners' keys finds them all.
	key := s.attached[0].key
	for _, sig := range sigs {
		h.forward(s.c, key, sig)
	}
}

// close ends every listener (closing its connection) and subscription, and
// the long-Emit connections, and waits for the supervisors. Client.Close
// calls it, once no operation is in progress, before closing the pools.
func (h *signalHub) close() {
	h.mu.Lock()
	h.closed = true
	ls, subs := h.listeners, h.subs
	var ems []*sigConn
	for _, e := range h.emitters {
		if e.conn != nil {
			ems = append(ems, e.conn)
		}
	}
	h.listeners, h.subs, h.emitters = nil, nil, nil
	h.mu.Unlock()
	for _, l := range ls {
		close(l.quit)
	}
	for _, conn := range ems {
		conn.destroy()
	}
	h.wg.Wait()
	closedErr := &bothError{domain: ErrSubscriptionClosed, cause: ErrClosed}
	for s := range subs {
		s.finish(closedErr)
	}
}

// emitConn is the connection that the Emits of one server with a payload
// over 256 bytes share (see Client.Emit): a listener connection that
// listens to nothing, so it owns no lease, is outside the wait pool (a full
// wait pool cannot delay it), and a server before v1.15 that closes it for
// a long line closes nothing else. Emits are pipelined on it. It is dialled
// on first use, re-dialled after it broke, and closed by Client.Close.
// Guarded by signalHub.mu.
type emitConn struct {
	conn    *sigConn
	dialing chan struct{} // non-nil while a dial is in progress; closed when it ends

	// Until the server has accepted a long signal on the current
	// connection (acceptedOn), long Emits go one at a time (see
	// emitLong). Neither is guarded by signalHub.mu.
	alone      chan struct{} // cap 1: held by the one long Emit in flight, until its answer
	acceptedOn atomic.Pointer[sigConn]
}

// emitLong sends req, a signal over 256 bytes, on srv's long-Emit
// connection. Until the server has accepted one on that connection, long
// Emits go one at a time: a server that refuses long lines (before v1.15,
// and v2.x) answers the first with error and closes the connection, and
// the requests pipelined behind it would meet a reset
// (ErrServerUnavailable) instead of that answer (ErrNotSupported). The
// gate is held until the answer, even by an Emit whose ctx ended. A new
// connection may reach another server (a restart into an older version):
// acceptance is per connection.
func (h *signalHub) emitLong(ctx context.Context, srv *server, req wire.Request) (wire.Reply, error) {
	h.mu.Lock()
	e := h.emitters[srv]
	if e == nil && !h.closed {
		if h.emitters == nil {
			h.emitters = make(map[*server]*emitConn)
		}
		e = &emitConn{alone: make(chan struct{}, 1)}
		h.emitters[srv] = e
	}
	h.mu.Unlock()
	if e == nil {
		return wire.Reply{}, ErrClosed
	}
	conn, err := h.emitConn(ctx, srv)
	if err != nil {
		return wire.Reply{}, err
	}
	if e.acceptedOn.Load() == conn {
		return h.emitOn(ctx, srv, e, conn, req, nil)
	}
	select {
	case e.alone <- struct{}{}:
	case <-ctx.Done():
		return wire.Reply{}, ctx.Err()
	}
	// The gate passes to emitOn, which opens it at the answer; it is
	// opened here if the dial fails, or unwinds (ctx's methods are the
	// caller's code: a panic, runtime.Goexit).
	passed := false
	defer func() {
		if !passed {
			<-e.alone
		}
	}()
	if conn, err = h.emitConn(ctx, srv); err != nil {
		return wire.Reply{}, err
	}
	passed = true
	return h.emitOn(ctx, srv, e, conn, req, func() { <-e.alone })
}

// emitOn sends req on conn and waits for the answer or ctx; the answer is
// settled (and then, if set, ungate runs) when it comes, whether or not
// the caller still waits.
func (h *signalHub) emitOn(ctx context.Context, srv *server, e *emitConn, conn *sigConn, req wire.Request, ungate func()) (wire.Reply, error) {
	type result struct {
		r   wire.Reply
		err error
	}
	ch := make(chan result, 1)
	conn.pc.SendBatch([]wire.Request{req}, func(_ int, r wire.Reply, err error) {
		switch {
		case err != nil:
		case r.Status == wire.StatusOK:
			e.acceptedOn.Store(conn)
		case r.Status == wire.StatusError:
			// The server closes the connection after refusing a long
			// line: not for the next Emit.
			e.acceptedOn.CompareAndSwap(conn, nil)
			h.discardEmitConn(srv, conn)
		}
		if ungate != nil {
			ungate()
		}
		ch <- result{r, err}
	})
	select {
	case res := <-ch:
		return res.r, res.err
	case <-ctx.Done():
		return wire.Reply{}, ctx.Err()
	}
}

// emitConn returns the live long-Emit connection of srv, dialling it
// (under ctx) if needed. Concurrent callers share one dial.
func (h *signalHub) emitConn(ctx context.Context, srv *server) (*sigConn, error) {
	for {
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			return nil, ErrClosed
		}
		e := h.emitters[srv]
		if e == nil { // emitLong made it, and Close has since dropped it
			h.mu.Unlock()
			return nil, ErrClosed
		}
		if e.conn != nil && e.conn.err() == nil {
			conn := e.conn
			h.mu.Unlock()
			return conn, nil
		}
		if ch := e.dialing; ch != nil {
			h.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return h.dialEmit(ctx, srv, e)
	}
}

// dialEmit replaces e's broken (or missing) connection. h.mu held; it
// returns with it released.
func (h *signalHub) dialEmit(ctx context.Context, srv *server, e *emitConn) (*sigConn, error) {
	old := e.conn
	e.conn = nil
	ch := make(chan struct{})
	e.dialing = ch
	h.mu.Unlock()
	if old != nil {
		old.destroy() // broken already; this only settles the bookkeeping
	}
	// A dial that unwinds through ctx's methods (the caller's code: a
	// panic, runtime.Goexit) must not leave the Emits waiting for it
	// waiting forever.
	dialed := false
	defer func() {
		if !dialed {
			h.mu.Lock()
			e.dialing = nil
			close(ch)
			h.mu.Unlock()
		}
	}()
	conn, err := dialSigConn(ctx, srv, func(wire.Push) {}, nil)
	dialed = true
	h.mu.Lock()
	e.dialing = nil
	close(ch)
	if err == nil && h.closed {
		err = ErrClosed
	} else if err == nil {
		e.conn = conn
	}
	h.mu.Unlock()
	if err != nil {
		if conn != nil {
			conn.destroy()
		}
		return nil, err
	}
	return conn, nil
}

// discardEmitConn destroys conn, and forgets it if it is still srv's
// long-Emit connection.
func (h *signalHub) discardEmitConn(srv *server, conn *sigConn) {
	h.mu.Lock()
	if e := h.emitters[srv]; e != nil && e.conn == conn {
		e.conn = nil
	}
	h.mu.Unlock()
	conn.destroy()
}

// forward hands sig, a push the server sent queue group key on a
// connection none of whose members is left (see takeTurnLocked), to a
// member of the group on another of the Client's connections to the same
// server: the server counted it delivered (Emit's count), and a member's
// leaving must not lose a job another member here can take. With no member
// left in the Client it is dropped and counted (Snapshot.SignalsDropped).
// It runs on a reader, holding no lock (lock order: hub, then listener);
// it is off the hot path, taken only while a group connection is withdrawn.
func (h *signalHub) forward(c *Client, key listenerKey, sig Signal) {
	var ls []*listener
	h.mu.Lock()
	for slot := range c.opts.groupConnLimit() {
		key.slot = slot
		if l := h.listeners[key]; l != nil {
			ls = append(ls, l)
		}
	}
	h.mu.Unlock()
	for _, l := range ls {
		var slow []*Subscription
		taken := false
		l.mu.RLock()
		// Only to members whose Listen has returned: one still joining
		// may yet fail it, and what it holds then is nobody's (Listen
		// counts it dropped, but a member here could take it). A member
		// whose connection is reconnecting takes it, after its gap.
		if pt := l.pats[key.pattern]; pt != nil {
			if subs := pt.settledLocked(); len(subs) > 0 {
				slow, taken = turnLocked(subs, &pt.rr, sig), true
			}
		}
		l.mu.RUnlock()
		if slow != nil {
			l.noteSlow(slow)
		}
		if taken {
			return
		}
	}
	c.stats.sigDropped.Add(1)
}
