package pool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// Pacing of wait-pool dials (see Pool.Acquire).
const (
	// maxDialsInFlight bounds concurrent wait-pool dials while dials
	// succeed. A burst of callers that all need a new connection then
	// opens them a few at a time instead of all at once, so that a server
	// at its connection cap refuses a handful, not the whole burst. Each
	// dial is a TCP (and TLS) handshake plus one round trip, so growing the
	// pool by 128 connections costs about 32 such round trips.
	maxDialsInFlight = 4
	// After a failed wait-pool dial, dials go one at a time, each after a
	// wait drawn uniformly from [0, backoff) (full jitter), the backoff
	// doubling from dialMinBackoff to dialMaxBackoff with every further
	// failure, until one succeeds.
	dialMinBackoff = 50 * time.Millisecond
	dialMaxBackoff = 2 * time.Second
)

// errDialDeferred is the constructor's answer when the gate does not admit a
// dial now; Acquire waits and tries again. It never reaches a caller.
var errDialDeferred = errors.New("wait-pool dial deferred")

// dialGate paces the wait pool's dials: at most maxDialsInFlight at once
// while they succeed; after a failure one at a time with exponential backoff
// and full jitter, until a dial succeeds. Lane and probe dials do not pass
// through it (a failed lane dial marks the server down, and the probe has
// its own backoff), nor do DialListener and Query.
type dialGate struct {
	mu       sync.Mutex
	inflight int
	failures int           // consecutive failed dials; 0 = healthy
	backoff  time.Duration // while failing: the current backoff
	next     time.Time     // while failing: no dial before this
	failGen  uint64        // incremented by every failed dial
	lastErr  error         // the latest failed dial's error
	waiting  int           // callers in wait
	// queue holds a channel per caller in wait, in arrival order: signal
	// closes the first (one caller may proceed: a dial slot or a
	// connection came free), broadcast all (every caller must look: a
	// dial failed, the server's state changed). Waking every caller for
	// every finished dial cost ~11 deferred retries per connection in a
	// burst (BenchmarkAcquireBurst).
	queue    []chan struct{}
	deferred uint64 // dials deferred so far (BenchmarkAcquireBurst)
	// changes counts broadcasts and signals, waiters or not: a caller
	// compares it with the count it read before its dial was deferred, so
	// a dial that ended (or a connection that came back) in between is
	// not missed. broadcasts counts broadcasts alone.
	changes    uint64
	broadcasts uint64
	// timed: a waiter times the backoff (while failing, with no dial in
	// flight); the others wait for it without a timer of their own, so
	// that the backoff's end wakes one caller, not every one (see
	// waitForDial).
	timed bool
}

// enter admits a dial (ok) or defers it. gen is the failure generation at
// admission, for leave.
func (g *dialGate) enter() (gen uint64, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failures == 0 {
		if g.inflight >= maxDialsInFlight {
			g.deferred++
			return 0, false
		}
	} else if g.inflight > 0 || time.Now().Before(g.next) {
		g.deferred++
		return 0, false
	}
	g.inflight++
	return g.failGen, true
}

// leave records the outcome of a dial admitted at generation gen and wakes
// the waiters. Only network failures (ErrUnavailable) start or extend the
// backoff: an auth refusal means the server is up, and a dial cut short by
// Close says nothing about the server. A success ends the backoff unless a
// dial failed while it ran: a server that accepts one of several concurrent
// dials and refuses the others is at its connection cap, not recovered.
func (g *dialGate) leave(gen uint64, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inflight--
	switch {
	case err == nil:
		if g.failGen == gen && g.failures > 0 {
			g.failures, g.backoff = 0, 0
			g.broadcastLocked() // the backoff ended: every caller may dial
			return
		}
		g.signalLocked() // its slot is free for one caller
		return
	case isUnavailable(err):
		g.failures++
		g.backoff = min(max(2*g.backoff, dialMinBackoff), dialMaxBackoff)
		g.next = time.Now().Add(rand.N(g.backoff))
		g.failGen++
		g.lastErr = err
	}
	g.broadcastLocked()
}

// reset ends the backoff (the server was reached by another dial).
func (g *dialGate) reset() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failures, g.backoff = 0, 0
	g.broadcastLocked()
}

// broadcast wakes every waiter to try again: the server's state changed.
func (g *dialGate) broadcast() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.broadcastLocked()
}

// signal wakes the longest waiter, if any, to try again: a connection
// went back to the pool.
func (g *dialGate) signal() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.signalLocked()
}

func (g *dialGate) broadcastLocked() {
	g.changes++
	g.broadcasts++
	for _, ch := range g.queue {
		close(ch)
	}
	clear(g.queue)
	g.queue = g.queue[:0]
}

func (g *dialGate) signalLocked() {
	g.changes++
	if len(g.queue) > 0 {
		close(g.queue[0])
		g.queue[0] = nil
		g.queue = g.queue[1:]
	}
}

// leaveQueueLocked takes a waiter's channel out of the queue; woken reports
// that a signal or broadcast had already taken it (and closed it).
func (g *dialGate) leaveQueueLocked(ch chan struct{}) (woken bool) {
	for i, c := range g.queue {
		if c == ch {
			g.queue = slices.Delete(g.queue, i, i+1)
			return false
		}
	}
	return true
}

// generation is the count of failed dials so far; a caller that sees it
// change while it waits has its Acquire fail with the latest dial error.
func (g *dialGate) generation() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.failGen
}

// paced reports whether dials are held back after a failure: one at a
// time, each after a backoff.
func (g *dialGate) paced() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.failures > 0
}

// changeCount is the count of broadcasts so far (see waitForDial).
func (g *dialGate) changeCount() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changes
}

// waitForDial blocks a caller whose dial was deferred until it should try again
// (nil): a dial ended, a connection went back to the pool, or the backoff
// elapsed — since seen, the gate's changeCount read before the caller's
// attempt, so that one that happened between the deferral and this wait
// (with nobody waiting yet to be woken) counts too. Of the callers waiting
// for a backoff to end, one times it and, when it stops waiting for any
// reason but a broadcast, wakes the longest other waiter, which looks again
// and times what is left of the backoff if it must wait on. It returns the
// latest dial error if a dial failed since the caller's Acquire began
// (gen), and an error matching ctx.Err() or ErrClosed if ctx ends or the
// pool closes first.
func (p *Pool) waitForDial(ctx context.Context, gen, seen uint64) error {
	g := &p.gate
	g.mu.Lock()
	if g.failGen != gen {
		err := g.lastErr
		g.mu.Unlock()
		return err
	}
	if g.changes != seen {
		g.mu.Unlock()
		return nil // something changed since the attempt: try again
	}
	var timer <-chan time.Time
	timing := false
	if g.failures > 0 && g.inflight == 0 {
		// Nothing will wake the waiters before the backoff ends: one of
		// them times it.
		d := time.Until(g.next)
		if d <= 0 {
			g.mu.Unlock()
			return nil
		}
		if !g.timed {
			g.timed, timing = true, true
			t := time.NewTimer(d)
			defer t.Stop()
			timer = t.C
		}
	}
	changed := make(chan struct{})
	g.queue = append(g.queue, changed)
	g.waiting++
	broadcasts := g.broadcasts
	g.mu.Unlock()

	var err error
	woke := false
	select {
	case <-changed:
		woke = true
	case <-timer:
	case <-p.ctx.Done():
		err = serverErr(p.cfg.Addr, ErrClosed, nil)
	case <-ctx.Done():
		err = serverErr(p.cfg.Addr, ctx.Err(), nil)
	}
	g.mu.Lock()
	g.waiting--
	if !woke && g.leaveQueueLocked(changed) && err != nil {
		// Woken as this caller gave up: the chance it was given goes to
		// the next caller.
		g.signalLocked()
	}
	if timing {
		g.timed = false
		if g.broadcasts == broadcasts {
			// The others, unless a broadcast woke them all, wait without a
			// timer: the longest waiter looks again and, if the backoff
			// still holds dials back, times it. Whatever this caller does
			// next (dial, take an idle connection, give up), nobody is
			// left waiting for a wake-up that will not come.
			g.signalLocked()
		}
	}
	switch {
	case err != nil:
		if g.failures > 0 && !p.closed.Load() {
			// Say why the caller had to wait, in words only: wrapping
			// the dial error would make a caller that gave up match
			// ErrUnavailable and wire.ErrConnBroken.
			err = serverErr(p.cfg.Addr, ctx.Err(), fmt.Errorf("waiting to dial again after a failed dial: %v", causeOf(g.lastErr)))
		}
	case g.failGen != gen:
		err = g.lastErr
	}
	g.mu.Unlock()
	return err
}

// causeOf is the Cause of a *ServerError, else err itself.
func causeOf(err error) error {
	var se *ServerError
	if errors.As(err, &se) && se.Cause != nil {
		return se.Cause
	}
	return err
}
