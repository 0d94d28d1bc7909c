package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"time"

	"github.com/dflock-sdk/go/wire"
)

// lingerFor bounds how long a connection the keepalive broke stays open
// for the replies to what it had written (see linger).
const lingerFor = time.Minute

// withdrawLingerFor bounds how long a connection Conn.Withdraw half-closed
// stays open for the answer to its wait. What it waits for is a grant the
// server wrote before it saw the half-close, so within a round trip of it;
// dflockd v1.15+ closes its side as soon as it sees it. v1.14 sees nothing
// until the wait ends, and its waiter stays queued whatever the client
// does (docs/leases.md): the bound caps what that costs here.
const withdrawLingerFor = 2 * time.Second

// halfCloser returns what shuts the write side of nc's socket (under TLS,
// of its transport's), or nil if nc has no such thing. Under TLS no
// close_notify is sent: tls.Conn.CloseWrite may wait for a writer, and
// Conn.Withdraw must not; the server's TLS layer reads the transport's end
// as an error, which ends a blocked wait as an end of stream does.
func halfCloser(nc net.Conn) interface{ CloseWrite() error } {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	hc, _ := nc.(interface{ CloseWrite() error })
	return hc
}

// shutWrite shuts the write side of a connection that lingers to withdraw a
// blocked wait (Conn.Withdraw), or closes it if that fails: the server
// withdraws the waiter of a peer it sees gone, and what it wrote before
// that is still read.
func (c *conn) shutWrite() {
	if err := halfCloser(c.wc.NetConn()).CloseWrite(); err != nil {
		_ = c.wc.Close()
	}
}

// linger keeps reading a connection the keepalive broke, or that
// Conn.Withdraw half-closed (see fail), after its callers got the error,
// until the replies to every request it had written are read or
// lingerUntil passes, and hands a grant among them to
// Config.OnReleaseLost; then it closes the socket. The server was only
// slow, perhaps: paused, it reads those requests when it resumes — a
// dflockd past its read deadline too, most of the time — and a grant it
// made to a closed socket would be held by nobody until its lease ran out
// on a server with auto-release off. Read here, its token is known and the
// grant is released elsewhere. A connection that broke any other way, or
// that did not linger, was closed by fail; linger then returns at once.
// The pool's Close ends it too (lingersLocked arranges it).
func (c *conn) linger() {
	c.mu.Lock()
	until, stop, closed := c.lingerUntil, c.stopLinger, c.lingerClosed
	c.mu.Unlock()
	if until.IsZero() {
		return
	}
	defer c.p.nLingering.Add(-1) // counted by lingersLocked
	defer c.wc.Close()
	defer func() {
		if !stop() {
			// The pool's Close is closing the socket (a WithDialer
			// connection's Close may take its time): this reader,
			// counted in p.io, waits for it, so Pool.Close does too.
			<-closed
		}
	}()
	for c.orphansLeft() {
		line, err := c.wc.ReadLine() // bounded by the deadline fail set
		if err != nil {
			return
		}
		if wire.IsPush(line) {
			continue // lane and wait-pool connections listen to nothing
		}
		if !c.orphanAnswered(line) {
			return
		}
	}
}

// reserveLinger counts one more lingering connection, unless as many
// linger as the pool may have open in its roles (MaxConns + LaneConns):
// the connection is then closed at once. A lingering socket is outside
// every cap, and a server that never closes its side of a withdrawn wait
// (v1.14) would otherwise let sockets pile up with the rate of cancelled
// waits — to the process's file descriptor limit, failing every other
// server's dials too.
func (p *Pool) reserveLinger() bool {
	limit := int64(p.cfg.MaxConns) + int64(p.cfg.LaneConns)
	for {
		n := p.nLingering.Load()
		if n >= limit {
			return false
		}
		if p.nLingering.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// dropUnsentOrphansLocked takes out of the orphans the requests of the
// write fail found under way (orphansWriting of them; the newest orphans
// are their unanswered ones) beyond the first sent, which reached the
// server: fail cut the write short, so the rest never did, and their
// replies will never come. A linger would otherwise wait for them until
// lingerUntil, holding the socket and its place among the lingering
// connections for a minute. With nothing left to read, the socket is
// closed, which ends the linger's read.
func (c *conn) dropUnsentOrphansLocked(sent int) {
	unsent := c.orphansWriting - sent
	c.orphansWriting = 0
	if unsent <= 0 {
		return
	}
	c.orphans = c.orphans[:max(len(c.orphans)-unsent, 0)]
	if len(c.orphans) == 0 {
		if c.inline {
			_ = c.wc.Close()
		} else {
			// The user's Close, not under c.mu (see closesApartLocked).
			// This is the flush goroutine (only a kernel socket is
			// written inline), itself counted in p.io: the count may
			// grow.
			c.p.io.Add(1)
			go c.closeApart()
		}
	}
}

// closesApartLocked reports whether the socket is to be closed on a
// goroutine of its own (closeApart), and if so counts that goroutine in
// p.io. A kernel socket's Close returns at once; a net.Conn that
// WithDialer made is the user's, and its Close may wait (an SSH channel
// writes to its transport, a wrapper flushes or logs). The goroutines that
// close connections — a reader, the janitor, a flusher, the loss notifier
// destroying a lease's connection, and Pool.Close for each connection in
// turn — must not wait for it: one stalled a renewal scheduler's losses
// on every server, and left a lease believed held for as long as the
// Close took after the server had handed it on. Called by fail with c.mu
// held before it publishes the break: the reader, which exits only once it
// sees the break, is still counted in p.io, so the count may grow.
func (c *conn) closesApartLocked() bool {
	if c.inline {
		return false
	}
	c.p.io.Add(1)
	return true
}

// closeApart closes the socket; see closesApartLocked.
func (c *conn) closeApart() {
	defer c.p.io.Done()
	_ = c.wc.Close()
}

// shutWriteApart is shutWrite, counted as closeApart is.
func (c *conn) shutWriteApart() {
	defer c.p.io.Done()
	c.shutWrite()
}

func (c *conn) orphansLeft() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.orphans) > 0
}

// orphanAnswered takes line, read after the connection broke, as the reply
// to the oldest orphan, and hands a grant to Config.OnReleaseLost. It
// returns false if there was no orphan, or if the line could not be parsed
// as that reply: the replies after it cannot be trusted, so it drops the
// orphans left, which ends a linger.
func (c *conn) orphanAnswered(line []byte) bool {
	c.mu.Lock()
	if len(c.orphans) == 0 {
		c.mu.Unlock()
		return false
	}
	o := c.orphans[0]
	c.orphans = c.orphans[1:]
	c.mu.Unlock()
	r, err := c.wc.ParseReply(line, o.cmd)
	if err != nil {
		c.mu.Lock()
		c.orphans = c.orphans[:0]
		c.mu.Unlock()
		return false
	}
	c.grantLost(o.cmd, o.key, r)
	return true
}

// orphan is a request whose reply nobody waits for (conn.orphans): its
// command, to parse the reply, and the key of a grant it may carry (call.
// grantKey), or "".
type orphan struct {
	cmd wire.Command
	key string
}

// lingersLocked decides, in fail, whether the connection lingers (see
// linger) and records the orphans, written being the calls fail took out of
// the queue that had been written. It lingers when the keepalive broke it,
// Conn.Abandon, or Conn.Withdraw (see there for when), no caller found it
// broken or desynchronised first (failWith), and one of those could be
// answered with a grant that an owner could release elsewhere; the socket
// then stays open, bounded by lingerFor (withdrawLingerFor), and nothing
// more is written on it.
func (c *conn) lingersLocked(cause error, written []*call) bool {
	c.orphans = c.orphans[:0]
	withdraw := errors.Is(cause, errWithdrawn) && c.supportsPing() && halfCloser(c.wc.NetConn()) != nil
	lingers := (withdraw || errors.Is(cause, errNoReply) || errors.Is(cause, errAbandoned)) && c.failWith == nil && c.p.cfg.OnReleaseLost != nil && !c.p.closed.Load() &&
		!c.noDeadlines && // a linger ends at its read deadline
		slices.ContainsFunc(written, func(cl *call) bool { return cl.grantKey != "" }) &&
		c.p.reserveLinger() // last: it counts the connection as lingering
	if !lingers {
		if len(written) > 0 && written[0].grantKey != "" {
			c.orphans = append(c.orphans, orphan{written[0].cmd, written[0].grantKey})
		}
		return false
	}
	for _, cl := range written {
		c.orphans = append(c.orphans, orphan{cl.cmd, cl.grantKey})
	}
	c.orphansWriting = c.writing
	d := lingerFor
	if withdraw {
		d = withdrawLingerFor
	}
	c.lingerUntil = time.Now().Add(d)
	// Nothing more is written; a write under way (the flush goroutine's,
	// blocked on the stalled server) that fails later must not end the
	// reading as a broken connection would. That write is cut short now
	// rather than at its own deadline: its callers, failed by this break,
	// wait for its verdict (see conn.writing), and what it has not sent
	// yet is better never sent. (A write starting after this fails at
	// once: EndWrites is checked after its deadline is set.)
	c.wc.EndWrites()
	_ = c.wc.SetWriteDeadline(pastDeadline)
	// The pool's Close ends the linger by closing the socket, from now:
	// the reader may still be in a read it began before the cut, not yet
	// in linger, and that read's deadline is now lingerUntil.
	c.lingerClosed = make(chan struct{})
	c.stopLinger = context.AfterFunc(c.p.ctx, func() {
		_ = c.wc.Close()
		close(c.lingerClosed)
	})
	// The count reserveLinger took lasts until linger returns: the reader
	// has not exited (it exits only once c.err is set), and its readLoop
	// ends in linger.
	if c.own != nil {
		// A caller reads its own reply: stopped (its call has the error),
		// it clears this deadline to lingerUntil and hands the socket to
		// the reader (readOwn).
		c.forced = true
		_ = c.wc.SetReadDeadline(pastDeadline)
	} else {
		c.forced = false // a late interrupt of a caller that never read
		_ = c.wc.SetReadDeadline(c.lingerUntil)
	}
	return true
}
