package pool

import (
	"sync"
	"time"
)

// quietWatch resumes the readers that stand aside (readerTurn) once their
// connection has been quiet for watchDelay, so that a server closing a
// quiet connection is noticed within that delay. One goroutine per pool
// (Pool.watchQuiet) does it for every connection, and it sleeps on a
// quietClock, a kernel timer of its own, not on a runtime timer. The
// reason is the cost of a runtime timer due within a few milliseconds:
// while one is pending, every blocking wait of Go's network poller carries
// its short timeout, and the kernel arms and cancels a high-resolution
// timer for each wait; on a virtual machine each of those reprograms the
// local APIC timer and traps to the hypervisor. With the runtime timer this
// replaced, one goroutine's Lock+Release ran at 0.73× a hand-written
// persistent-connection loop, with the quietClock at 0.88×, within a few
// per cent of no watch at all (interleaved, docs/performance.md). The
// goroutine parks while no reader stands aside.
type quietWatch struct {
	mu    sync.Mutex
	conns []*conn       // readers standing aside (conn.aside)
	kick  chan struct{} // cap 1: conns became non-empty
	// clock is the watch goroutine's (nil before it first runs and after
	// it exits); wakeAt is the p.now() it is set for, 0 while the
	// goroutine is not about to sleep on it.
	clock  *quietClock
	wakeAt int64
	passes int64 // for tests: how often the watch has looked
}

// add has the watch resume c's reader once c is quiet; c.mu is held and
// c.aside was false. A connection due before the watch's next pass moves
// that pass forward.
func (w *quietWatch) add(c *conn) {
	c.aside = true
	due := satAdd(c.lastActive, int64(watchDelay))
	w.mu.Lock()
	w.conns = append(w.conns, c)
	first := len(w.conns) == 1
	if w.wakeAt != 0 && due < w.wakeAt {
		w.wakeAt = due
		w.clock.set(time.Duration(due - c.p.now()))
	}
	w.mu.Unlock()
	if first {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// watchQuiet is the pool's quietWatch goroutine. Close stops it within
// its current sleep (at most watchDelay).
func (p *Pool) watchQuiet() {
	defer p.bg.Done()
	w := &p.quiet
	defer func() {
		w.mu.Lock()
		if w.clock != nil {
			w.clock.close()
			w.clock, w.wakeAt = nil, 0
		}
		w.mu.Unlock()
	}()
	var batch []*conn
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-w.kick:
		}
		w.mu.Lock()
		if w.clock == nil {
			// Made when first needed: a pool whose readers never stand
			// aside (TLS) holds no timer descriptor.
			w.clock = newQuietClock()
		}
		clock := w.clock
		w.mu.Unlock()
		for {
			var more bool
			if batch, more = w.pass(p, batch); !more {
				break // nobody stands aside: park until someone does
			}
			clock.wait()
			if p.ctx.Err() != nil {
				return
			}
		}
	}
}

// pass resumes the readers whose connection is quiet now and keeps the
// others; if any are kept (more), it sets the clock for the next pass.
// batch is scratch space, returned for reuse.
func (w *quietWatch) pass(p *Pool, batch []*conn) (_ []*conn, more bool) {
	w.mu.Lock()
	w.wakeAt = 0
	w.passes++
	batch = append(batch[:0], w.conns...)
	w.conns = w.conns[:0]
	w.mu.Unlock()
	sleep := watchDelay
	kept := batch[:0]
	for _, c := range batch {
		if wait, ok := c.resumeIfQuiet(); !ok {
			kept = append(kept, c)
			sleep = min(sleep, wait)
		}
	}
	w.mu.Lock()
	w.conns = append(w.conns, kept...)
	more = len(w.conns) > 0
	if more {
		// Set under mu, so that an add that wants an earlier pass (and
		// sets the clock itself) comes after.
		sleep = max(sleep, minQuietSleep)
		w.wakeAt = satAdd(p.now(), int64(sleep))
		w.clock.set(sleep)
	} else {
		// A kick left by the add of a connection this pass took is stale.
		select {
		case <-w.kick:
		default:
		}
	}
	w.mu.Unlock()
	clear(batch)
	return batch, more
}

// minQuietSleep bounds how often the watch passes: a connection whose
// quiet is about to complete is checked again this much later at the
// soonest.
const minQuietSleep = 100 * time.Microsecond

// resumeIfQuiet wakes c's parked reader if c has been quiet for watchDelay
// with nobody reading. ok reports that c leaves the watch (resumed, or
// not standing aside any more); otherwise wait is when to look again.
func (c *conn) resumeIfQuiet() (wait time.Duration, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.aside || c.err != nil || c.turn == turnReader {
		c.aside = false
		return 0, true
	}
	if c.turn == turnCaller {
		if c.blocking > 0 {
			// A blocking wait its caller reads, and sees a close itself,
			// however long it waits (hours): the connection leaves the
			// watch rather than being looked at every watchDelay.
			// finishOwn puts it back when the turn becomes nobody's;
			// handOff gives it to the reader.
			c.aside = false
			return 0, true
		}
		// A reply due within a round trip: the next pass (within
		// watchDelay) finds the turn nobody's and waits for the rest.
		// Leaving and re-joining the watch on every request would wake
		// its goroutine once per request on a busy connection.
		return watchDelay, false
	}
	if wait := satAdd(c.lastActive, int64(watchDelay)) - c.p.now(); wait > 0 {
		return time.Duration(wait), false
	}
	c.aside = false
	c.wakeReader()
	return 0, true
}
