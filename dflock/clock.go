package dflock

import (
	"time"

	"github.com/dflock-sdk/go/renew"
)

// withClock times the renewal scheduler's decisions (when to renew, when a
// lease is lost) by clk instead of the real clock. Unexported: it exists so
// that tests can drive a lease through its renewals and its loss deadline
// with a *testutil.ManualClock, shared with the server when they want both
// sides' time to move together, instead of sleeping through real intervals.
//
// Everything else stays on the real clock: contexts, connection I/O and
// deadlines, the pool's keepalive and idle janitor, and the send times of
// acquire requests. A send time later than the clock's reading counts as
// the clock's now (renew.Spec.Sent), so a test must not advance clk while
// an acquire it depends on is in flight.
func withClock(clk renew.Clock) Option {
	return func(o *options) { o.clock = clk }
}

// withCallbackWait sets how long Close waits for the callbacks (log records
// and hooks) still queued, DefaultReleaseTimeout unless set. Unexported: a
// test whose handler is stuck on purpose proves that Close returns anyway,
// and need not spend the full default bound to prove it.
func withCallbackWait(d time.Duration) Option {
	return func(o *options) { o.callbackWait = d }
}
