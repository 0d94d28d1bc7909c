package testutil

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Clock is the server's source of time (Config.Clock). Everything the server
// times by its own clock goes through it: lease expiry and the sweeper, idle
// key GC and the idle times of `stats`, the timeout of a blocking wait, the
// per-line read timeout, the pause after a failed auth, ShutdownTimeout,
// Stall durations and AuditEvent times. What the operating system times
// stays on the real clock: WriteTimeout (a socket that does not drain), the
// proxy's latency, accept and Restart retries, and the v2.1 fence seed.
//
// The zero Config uses the real clock. A test that wants the server's time
// to pass only when it says so uses a ManualClock.
type Clock interface {
	// Now is the server's current time.
	Now() time.Time
	// AfterFunc calls f once d has passed on this clock, as time.AfterFunc
	// does; Stop reports whether it prevented the call. f must not block.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc call of a Clock (*time.Timer is one). It is
// an alias of an unnamed interface so that a type implementing Clock also
// implements renew.Clock, which is declared the same way: one ManualClock
// can drive a server and a client's renewals together.
type Timer = interface{ Stop() bool }

// realClock is the default Clock: the process's clock.
type realClock struct{}

func (realClock) Now() time.Time                            { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

func isRealClock(c Clock) bool {
	_, ok := c.(realClock)
	return ok
}

// ManualClock is a Clock whose time moves only when Advance is called, so
// that a test can let a lease expire, a wait time out or a read timeout pass
// at the moment of its choosing, without waiting for it. Timers that fall
// due are fired by Advance, on its goroutine, in the order of their due
// times. The server's callbacks only signal its own goroutines, so what a
// timer sets off (a sweep, a `timeout` reply, a closed idle connection)
// happens shortly after Advance returns: await its effect, not Advance.
//
// A ManualClock may be shared by several servers. Its methods are safe for
// concurrent use.
type ManualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*manualTimer // pending, in no particular order
	armed  chan struct{}  // closed and replaced whenever a timer is added
}

type manualTimer struct {
	c   *ManualClock
	due time.Time
	f   func()
}

// NewManualClock returns a ManualClock that reads start until advanced.
// Times keep no monotonic reading, so start should be a plain wall time
// (time.Unix(…), or time.Now().Round(0)).
func NewManualClock(start time.Time) *ManualClock {
	return &ManualClock{now: start.Round(0), armed: make(chan struct{})}
}

// Now returns the clock's current time.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc arms a timer that Advance fires once d has passed. A timer that
// is due already (d <= 0) fires at once on a goroutine of its own, as with
// time.AfterFunc: a deadline the test has already advanced past must not
// wait for another Advance.
func (c *ManualClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &manualTimer{c: c, due: c.now.Add(d), f: f}
	if d <= 0 {
		go f()
		return t // not pending: Stop reports false
	}
	c.timers = append(c.timers, t)
	close(c.armed)
	c.armed = make(chan struct{})
	return t
}

// Stop disarms the timer; false if it already fired or was stopped.
func (t *manualTimer) Stop() bool {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.timers, t)
	if i < 0 {
		return false
	}
	c.timers = slices.Delete(c.timers, i, i+1)
	return true
}

// Advance moves the clock forward by d (negative d is treated as zero) and
// fires, in due order, every timer that is due at the new time.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(max(d, 0))
	var due []*manualTimer
	c.timers = slices.DeleteFunc(c.timers, func(t *manualTimer) bool {
		if t.due.After(c.now) {
			return false
		}
		due = append(due, t)
		return true
	})
	c.mu.Unlock()
	slices.SortStableFunc(due, func(a, b *manualTimer) int { return a.due.Compare(b.due) })
	for _, t := range due {
		t.f()
	}
}

// Pending is the number of armed timers. Together with AwaitPending it lets
// a test advance the clock only once the server has armed the timer it is
// about to fire (a blocking wait's timeout, say).
func (c *ManualClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// AwaitPending waits until at least n timers are armed, or ctx ends.
func (c *ManualClock) AwaitPending(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		got, armed := len(c.timers), c.armed
		c.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-armed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// clockTimer is a channel-style timer on clk: the returned channel is closed
// once d has passed; stop disarms it.
func clockTimer(clk Clock, d time.Duration) (fired <-chan struct{}, stop func()) {
	ch := make(chan struct{})
	t := clk.AfterFunc(d, func() { close(ch) })
	return ch, func() { t.Stop() }
}

// clockTimerAt is clockTimer for an absolute time on clk. A duration worked
// out from a time read earlier would make the timer late by however far a
// ManualClock was advanced in between, and no later Advance might come; so
// once armed, a timer whose time the clock has reached is fired here
// unless the clock fired it already.
func clockTimerAt(clk Clock, at time.Time) (fired <-chan struct{}, stop func()) {
	ch := make(chan struct{})
	t := clk.AfterFunc(at.Sub(clk.Now()), func() { close(ch) })
	if !clk.Now().Before(at) && t.Stop() {
		close(ch)
	}
	return ch, func() { t.Stop() }
}
