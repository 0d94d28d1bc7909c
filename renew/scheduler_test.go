package renew

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// newTestScheduler starts a scheduler closed (and checked) at cleanup.
func newTestScheduler(t *testing.T, cfg Config) *Scheduler {
	t.Helper()
	s := New(cfg)
	t.Cleanup(func() { s.Close() })
	return s
}

// startTestScheduler starts the goroutine of a scheduler built with
// newScheduler(At) (after the test has set it up) and closes it at cleanup.
func startTestScheduler(t *testing.T, s *Scheduler) {
	t.Helper()
	go s.run()
	t.Cleanup(func() { s.Close() })
}

// Generous upper bounds on waits for events that take well under a second on
// a quiet machine: they only turn a hang into a failure, and must hold on a
// loaded one-CPU runner under -race.
const (
	waitLong  = time.Minute
	waitShort = 20 * time.Second
)

// A ManualClock drives a server and a client's renewals alike.
var _ Clock = (*testutil.ManualClock)(nil)

func newManualClock() *testutil.ManualClock {
	return testutil.NewManualClock(time.Unix(1_700_000_000, 0))
}

// manualScheduler builds a scheduler on a ManualClock without its goroutine:
// the test calls tick after each Advance, so every decision is made at a
// clock time the test chose, and is complete when tick returns.
func manualScheduler(t *testing.T, cfg Config) (*Scheduler, *testutil.ManualClock) {
	t.Helper()
	clk := newManualClock()
	cfg.Clock = clk
	s := newScheduler(cfg)
	t.Cleanup(func() {
		close(s.exited) // no goroutine for Close to wait for
		s.Close()
	})
	return s, clk
}

// syncOwner answers every request ok inside SendBatch, so a tick's
// renewals are confirmed when it returns; batches are stamped on clk.
func syncOwner(t *testing.T, clk *testutil.ManualClock) *testOwner {
	o := newOwner(t, func(wire.Request) answer { return answer{kind: answerSync} })
	o.now = clk.Now
	return o
}

// leaseTimes returns l's last confirmed send and its next renewal time.
func leaseTimes(s *Scheduler, l *Lease) (confirmed, renewAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch.Add(time.Duration(l.confirmed)), s.epoch.Add(time.Duration(l.renewAt))
}

// stepUntilBatch advances clk by step and runs a round until o records a
// new batch, and returns it.
func stepUntilBatch(t *testing.T, s *Scheduler, clk *testutil.ManualClock, o *testOwner, step time.Duration) sentBatch {
	t.Helper()
	n := len(o.snapshot())
	for range 100_000 {
		clk.Advance(step)
		s.tick()
		if bs := o.snapshot(); len(bs) > n {
			require.Len(t, bs, n+1, "one batch per round")
			return bs[n]
		}
	}
	t.Fatal("no batch after 100,000 steps")
	return sentBatch{}
}

func waitDone(t *testing.T, l *Lease, timeout time.Duration) time.Time {
	t.Helper()
	select {
	case <-l.Done():
		return time.Now()
	case <-time.After(timeout):
		t.Fatalf("lease %q not done after %v", l.Key(), timeout)
		return time.Time{}
	}
}

func TestRenewalsCarryTheTTLExplicitly(t *testing.T) {
	t.Parallel()
	o := okOwner(t)
	s := newTestScheduler(t, Config{})
	// Due at once (renewal after 10 s, the keepalive); loss deadlines ≥ 28 s away.
	past := time.Now().Add(-30 * time.Second)
	s.Track(Spec{Key: "lock", Token: "t1", TTL: 60 * time.Second, Owner: o, Sent: past})
	s.Track(Spec{Key: "sem", Token: "t2", TTL: 70 * time.Second, Semaphore: true, Owner: o, Sent: past})

	bs := o.waitFor(t, waitShort, "both renewals", func(bs []sentBatch) bool {
		return len(requestsFor(bs, wire.CmdRenew, "lock")) > 0 && len(requestsFor(bs, wire.CmdSemRenew, "sem")) > 0
	})
	for _, b := range bs {
		for _, r := range b.reqs {
			switch r.Key {
			case "lock":
				assert.Equal(t, wire.Request{Cmd: wire.CmdRenew, Key: "lock", Token: "t1", Lease: 60}, r)
			case "sem":
				assert.Equal(t, wire.Request{Cmd: wire.CmdSemRenew, Key: "sem", Token: "t2", Lease: 70}, r)
			}
		}
	}
}

// A lease is renewed TTL × Ratio (the first time less jitter) after the send of its last
// confirmed grant or renewal, never later than that and never more than the
// early window before it, and stays held. The test drives the scheduler's
// rounds itself on a ManualClock in small steps, so the bounds are exact
// whatever the machine's load.
func TestLeaseRenewsAtTTLTimesRatioAndStaysHeld(t *testing.T) {
	t.Parallel()
	s, clk := manualScheduler(t, Config{Ratio: 0.1}) // 10 s × 0.1: every second
	o := syncOwner(t, clk)
	var c Counters
	l := s.Track(Spec{Key: "k", Token: "t", TTL: 10 * time.Second, Owner: o, Sent: clk.Now(), Counters: &c})

	const step = 5 * time.Millisecond
	for i := range 5 {
		confirmed, due := leaseTimes(s, l)
		iv := due.Sub(confirmed)
		if i == 0 {
			// Only the first renewal is jittered, by up to 10%.
			assert.GreaterOrEqual(t, iv, 900*time.Millisecond, "first interval less jitter")
			assert.LessOrEqual(t, iv, time.Second, "first interval")
		} else {
			assert.Equal(t, time.Second, iv, "renewal %d: interval", i)
		}
		b := stepUntilBatch(t, s, clk, o, step)
		assert.False(t, b.at.Before(due.Add(-defaultWindow)), "renewal %d sent %v before it was due", i, due.Sub(b.at))
		assert.False(t, b.at.After(due), "renewal %d sent %v late", i, b.at.Sub(due))
		require.Len(t, b.reqs, 1)
		assert.Equal(t, int64(10), b.reqs[0].Lease)
	}
	assert.NoError(t, l.Err())
	assert.NoError(t, l.Context().Err())
	assert.Equal(t, 1, s.Stats().Leases)
	assert.Equal(t, int64(5), c.Renewed.Load())
	assert.Zero(t, c.Lost.Load())
}

// With a one-hour lease, TTL × Ratio would renew after 27–30 min; the
// keepalive renews every 10 min instead, each time with the full TTL. The
// scheduler's own goroutine and timer run on the ManualClock: on the real
// clock nothing would be sent for ten minutes.
func TestKeepAliveCapsTheInterval(t *testing.T) {
	t.Parallel()
	clk := newManualClock()
	o := okOwner(t)
	o.now = clk.Now
	s := newTestScheduler(t, Config{KeepAlive: 10 * time.Minute, Clock: clk})
	start := clk.Now()
	s.Track(Spec{Key: "k", Token: "t", TTL: time.Hour, Owner: o, Sent: start})

	for i := range 3 {
		clk.Advance(10 * time.Minute)
		bs := o.waitBatches(t, i+1, waitShort)
		o.waitAnswered(t, i+1, waitShort)
		b := bs[i]
		// Each interval: 10 min less up to 10% jitter, up to Window early.
		minAt := time.Duration(i+1) * (9*time.Minute - defaultWindow)
		assert.GreaterOrEqual(t, b.at.Sub(start), minAt, "renewal %d was sent early", i)
		assert.Equal(t, int64(3600), b.reqs[0].Lease)
	}
}

// The renewal time and the loss deadline, computed from a confirmed send,
// for every way the interval is chosen (no clock involved).
func TestRenewalTimeAndDeadline(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		cfg      Config
		ttl      time.Duration
		iv       time.Duration
		deadline time.Duration
	}{
		{"default ratio: TTL/2", Config{}, 2 * time.Second, time.Second, 1800 * time.Millisecond},
		{"ratio", Config{Ratio: 0.1}, 10 * time.Second, time.Second, 9 * time.Second},
		{"keepalive cap", Config{KeepAlive: 200 * time.Millisecond}, time.Minute, 200 * time.Millisecond, 58 * time.Second},
		{"default keepalive cap", Config{}, time.Hour, 10 * time.Second, time.Hour - 2*time.Second},
		{"ratio near 1: 90% of TTL−margin", Config{Ratio: 0.99}, 10 * time.Second, 8100 * time.Millisecond, 9 * time.Second},
		// 90% of 40 years must not be computed as ×9 first (it wraps negative).
		{"decades", Config{}, 40 * 365 * 24 * time.Hour, 10 * time.Second, 40*365*24*time.Hour - 2*time.Second},
		// sent + TTL − margin is past the int64 range: saturated.
		{"protocol maximum", Config{}, foreverTTL, 10 * time.Second, math.MaxInt64 - 5*time.Second},
		// The server closes a connection silent for its read timeout: a
		// longer TTL lives no longer than that after a confirmed send.
		{"read timeout caps a long TTL", Config{ReadTimeout: 23 * time.Second}, time.Minute, 10 * time.Second, 21 * time.Second},
		{"read timeout caps the protocol maximum", Config{ReadTimeout: 23 * time.Second}, foreverTTL, 10 * time.Second, 21 * time.Second},
		{"read timeout with a short keepalive", Config{ReadTimeout: 4 * time.Second, KeepAlive: 2 * time.Second}, 33 * time.Second, 2 * time.Second, 3600 * time.Millisecond},
		{"read timeout longer than the TTL", Config{ReadTimeout: 23 * time.Second}, 2 * time.Second, time.Second, 1800 * time.Millisecond},
	}
	for _, tc := range cases {
		s := newScheduler(tc.cfg)
		const sent = int64(5 * time.Second)
		l := &Lease{ttl: tc.ttl}
		iv := s.confirmLocked(l, sent, l.ttl)
		assert.Equal(t, tc.iv, iv, tc.name)
		assert.Equal(t, sent, l.confirmed, tc.name)
		assert.Equal(t, sent+int64(tc.deadline), l.deadline.Load(), tc.name)
		assert.Equal(t, sent+int64(tc.iv), l.renewAt, tc.name)
		assert.Equal(t, int64(tc.iv/4), l.early(), tc.name)
	}
}

// Only a lease's first renewal is jittered, by up to a tenth of its
// interval: enough to spread clients that acquired together.
func TestFirstRenewalIsJittered(t *testing.T) {
	t.Parallel()
	s, clk := manualScheduler(t, Config{})
	o := okOwner(t)
	seen := map[time.Time]bool{}
	for i := range 100 {
		l := s.Track(Spec{Key: fmt.Sprint("k", i), Token: "t", TTL: 10 * time.Second, Owner: o, Sent: clk.Now()})
		confirmed, due := leaseTimes(s, l)
		iv := due.Sub(confirmed)
		require.GreaterOrEqual(t, iv, 4500*time.Millisecond)
		require.LessOrEqual(t, iv, 5*time.Second)
		seen[due] = true
	}
	assert.Greater(t, len(seen), 1, "100 grants at one moment share one first renewal time")
}

func TestLeasesDueTogetherGoInOneBatchPerOwner(t *testing.T) {
	t.Parallel()
	owners := []*testOwner{okOwner(t), okOwner(t), okOwner(t)}
	// All 1,000 leases are tracked before the goroutine starts, already due
	// (renewal after 30 min, sent an hour ago; the loss deadline is an hour
	// away), so the first round takes them all however slowly Track runs;
	// the next round is half an hour later.
	s := newScheduler(Config{KeepAlive: time.Hour})
	sent := time.Now().Add(-time.Hour)
	want := make([]int, len(owners))
	var c Counters
	for i := range 1000 {
		s.Track(Spec{Key: fmt.Sprintf("k%d", i), Token: "t", TTL: 2 * time.Hour, Owner: owners[i%3], Sent: sent, Counters: &c})
		want[i%3]++
	}
	startTestScheduler(t, s)
	for i, o := range owners {
		bs := o.waitBatches(t, 1, waitShort)
		require.Len(t, bs, 1, "owner %d", i)
		assert.Len(t, bs[0].reqs, want[i], "owner %d", i)
	}
	st := s.Stats()
	assert.Equal(t, int64(3), st.Batches)
	assert.Equal(t, int64(1), st.Rounds)
	assert.Equal(t, int64(1000), c.Sent.Load())
	assert.Equal(t, 1000, st.Leases)
}

func TestRefusedRenewalLosesTheLease(t *testing.T) {
	t.Parallel()
	o := newOwner(t, func(wire.Request) answer { return answer{kind: answerRefuse} })
	s := newTestScheduler(t, Config{})
	// Due at once; the loss deadline (by the clock) is 28 s away.
	var c Counters
	l := s.Track(Spec{Key: "k", Token: "t", TTL: time.Minute, Owner: o, Sent: time.Now().Add(-30 * time.Second), Counters: &c})
	ctx := l.Context() // created before the loss

	waitDone(t, l, waitShort)
	err := l.Err()
	require.ErrorIs(t, err, ErrLost)
	assert.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), `"k"`)
	var le *LostError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, "k", le.Key)
	assert.ErrorIs(t, ctx.Err(), context.Canceled)
	assert.Equal(t, err, context.Cause(ctx))
	assert.Equal(t, err, context.Cause(l.Context()))
	assert.False(t, l.Untrack())
	assert.Equal(t, int64(1), c.Lost.Load())
	assert.Zero(t, s.Stats().Leases)
	// A refused renewal sends no release: the server already said it is gone.
	assert.Empty(t, requestsFor(o.snapshot(), wire.CmdRelease, "k"))
}

func TestTransportErrorLosesTheLease(t *testing.T) {
	t.Parallel()
	o := newOwner(t, func(wire.Request) answer { return answer{kind: answerTransport} })
	s := newTestScheduler(t, Config{})
	l := s.Track(Spec{Key: "k", Token: "t", TTL: time.Minute, Owner: o, Sent: time.Now().Add(-30 * time.Second)})
	waitDone(t, l, waitShort)
	assert.ErrorIs(t, l.Err(), ErrLost)
	assert.ErrorIs(t, l.Err(), ErrOwnerFailed)
	assert.ErrorIs(t, l.Err(), errTransport)
}

func TestUnansweredRenewalLosesTheLeaseBeforeTheTTLAndReleases(t *testing.T) {
	t.Parallel()
	s, clk := manualScheduler(t, Config{})
	o := newOwner(t, func(wire.Request) answer { return answer{kind: answerNever} })
	o.now = clk.Now
	var hooked atomic.Pointer[error]
	hookDone := make(chan struct{})
	onLost := func(_ *Lease, err error) {
		hooked.Store(&err)
		close(hookDone)
	}
	// Renewal due (after 1.8–2 s), loss deadline 1.6 s away: sent + TTL −
	// 400ms margin, before the server-side expiry.
	const ttl = 4 * time.Second
	sent := clk.Now().Add(-2 * time.Second)
	l := s.Track(Spec{Key: "k", Token: "tok", TTL: ttl, Owner: o, Sent: sent, OnLost: lossFunc(onLost)})
	s.tick()
	require.Len(t, requestsFor(o.snapshot(), wire.CmdRenew, "k"), 1)
	s.mu.Lock()
	deadline := s.epoch.Add(time.Duration(l.deadline.Load()))
	s.mu.Unlock()
	assert.Equal(t, ttl-defaultSafetyMargin(ttl), deadline.Sub(sent))

	// Held up to the deadline, lost at it.
	clk.Advance(deadline.Sub(clk.Now()) - 1)
	s.tick()
	require.NoError(t, l.Err(), "lost before the deadline")
	clk.Advance(1)
	s.tick()
	waitDone(t, l, waitShort)
	require.ErrorIs(t, l.Err(), ErrLost)
	assert.ErrorIs(t, l.Err(), errExpired)
	assert.ErrorIs(t, context.Cause(l.Context()), errExpired)

	bs := o.snapshot()
	assert.Len(t, requestsFor(bs, wire.CmdRelease, "k"), 1, "best-effort release")
	assert.Len(t, requestsFor(bs, wire.CmdRenew, "k"), 1)
	for _, b := range bs {
		for _, r := range b.reqs {
			if r.Cmd == wire.CmdRelease {
				assert.Equal(t, wire.Request{Cmd: wire.CmdRelease, Key: "k", Token: "tok"}, r)
			}
		}
	}
	<-hookDone
	assert.ErrorIs(t, *hooked.Load(), errExpired)
}

// An overdue grant is lost at once and released best-effort; a release the
// server refuses (it already expired the lease) is counted, not logged.
func TestOverdueGrantIsLostAtOnce(t *testing.T) {
	t.Parallel()
	o := newOwner(t, func(wire.Request) answer { return answer{kind: answerRefuse} })
	s := newTestScheduler(t, Config{})
	var c Counters
	l := s.Track(Spec{Key: "k", Token: "t", TTL: time.Second, Semaphore: true, Owner: o, Sent: time.Now().Add(-time.Second), Counters: &c})
	waitDone(t, l, waitShort)
	assert.ErrorIs(t, l.Err(), errExpired)
	o.waitFor(t, waitShort, "release", func(bs []sentBatch) bool {
		return len(requestsFor(bs, wire.CmdSemRelease, "k")) == 1
	})
	assert.Empty(t, requestsFor(o.snapshot(), wire.CmdSemRenew, "k"))
	o.waitAnswered(t, 1, waitShort)
	st := s.Stats()
	assert.Equal(t, int64(1), st.ReleaseFailed)
	assert.Equal(t, int64(1), c.Lost.Load())
}

// A grant read just before its connection broke: OwnerFailed ran first and
// found no lease of the owner, so Track must notice the failure itself
// instead of tracking the lease on a dead connection until its next renewal.
func TestTrackOnAnAlreadyFailedOwnerIsLostAtOnce(t *testing.T) {
	t.Parallel()
	o := okOwner(t)
	s := newTestScheduler(t, Config{})
	boom := errors.New("connection reset")
	o.fail(boom)
	s.OwnerFailed(o, boom) // before Track: nothing to lose yet
	l := s.Track(Spec{Key: "k", Token: "t", TTL: 30 * time.Second, Owner: o})
	waitDone(t, l, waitShort)
	assert.ErrorIs(t, l.Err(), ErrLost)
	assert.ErrorIs(t, l.Err(), ErrOwnerFailed)
	assert.ErrorIs(t, l.Err(), boom)
	assert.Equal(t, 0, s.Stats().Leases)
	assert.Empty(t, o.snapshot(), "nothing is sent on a failed owner")
}

func TestOwnerFailedLosesExactlyThatOwnersLeases(t *testing.T) {
	t.Parallel()
	a, b := okOwner(t), okOwner(t)
	s := newTestScheduler(t, Config{})
	var la, lb []*Lease
	var ca, cb Counters
	for i := range 5 {
		la = append(la, s.Track(Spec{Key: fmt.Sprintf("a%d", i), Token: "t", TTL: 30 * time.Second, Owner: a, Counters: &ca}))
		lb = append(lb, s.Track(Spec{Key: fmt.Sprintf("b%d", i), Token: "t", TTL: 30 * time.Second, Owner: b, Counters: &cb}))
	}
	boom := errors.New("boom")
	s.OwnerFailed(a, boom)
	for _, l := range la {
		waitDone(t, l, waitShort)
		assert.ErrorIs(t, l.Err(), ErrLost)
		assert.ErrorIs(t, l.Err(), ErrOwnerFailed)
		assert.ErrorIs(t, l.Err(), boom)
		assert.ErrorIs(t, context.Cause(l.Context()), boom)
	}
	for _, l := range lb {
		assert.NoError(t, l.Err())
	}
	assert.Equal(t, 5, s.Stats().Leases)
	assert.Equal(t, int64(5), ca.Lost.Load())
	assert.Zero(t, cb.Lost.Load())
	s.OwnerFailed(a, boom) // idempotent
	s.OwnerFailed(okOwner(t), boom)
	assert.Equal(t, 5, s.Stats().Leases)
	// No release is sent on a failed owner.
	assert.Empty(t, a.snapshot())
}

func TestUntrackReleasesAndStopsRenewing(t *testing.T) {
	t.Parallel()
	o := okOwner(t)
	s := newTestScheduler(t, Config{KeepAlive: 100 * time.Millisecond})
	var c Counters
	l1 := s.Track(Spec{Key: "one", Token: "t", TTL: 60 * time.Second, Owner: o, Counters: &c})
	o.waitFor(t, waitShort, "a renewal of one", func(bs []sentBatch) bool {
		return len(requestsFor(bs, wire.CmdRenew, "one")) >= 1
	})
	ctx := l1.Context()
	require.True(t, l1.Untrack())
	assert.False(t, l1.Untrack())
	select {
	case <-l1.Done():
	default:
		t.Fatal("Done not closed by Untrack")
	}
	assert.Equal(t, ErrReleased, l1.Err())
	assert.Equal(t, ErrReleased, context.Cause(ctx))
	assert.Equal(t, ErrReleased, l1.Renew(context.Background()))
	n := len(requestsFor(o.snapshot(), wire.CmdRenew, "one"))

	// A second lease on the same schedule renews twice more; "one" never again.
	s.Track(Spec{Key: "two", Token: "t", TTL: 60 * time.Second, Owner: o, Counters: &c})
	bs := o.waitFor(t, waitShort, "renewals of two", func(bs []sentBatch) bool {
		return len(requestsFor(bs, wire.CmdRenew, "two")) >= 2
	})
	assert.Len(t, requestsFor(bs, wire.CmdRenew, "one"), n)
	assert.Empty(t, requestsFor(bs, wire.CmdRelease, "one"), "Untrack must not release on the wire")
	assert.Zero(t, c.Lost.Load())
}

func TestExplicitRenew(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var mode atomic.Int32 // 0 ok, 1 gated ok, 2 refuse
	o := newOwner(t, func(wire.Request) answer {
		switch mode.Load() {
		case 1:
			return answer{gate: gate}
		case 2:
			return answer{kind: answerRefuse}
		}
		return answer{}
	})
	// No scheduled renewal for half an hour: every request is explicit.
	s := newTestScheduler(t, Config{KeepAlive: time.Hour})
	var c Counters
	l := s.Track(Spec{Key: "k", Token: "t", TTL: time.Hour, Owner: o, Counters: &c})

	require.NoError(t, l.Renew(context.Background()))
	bs := o.snapshot()
	require.Len(t, bs, 1)
	assert.Equal(t, wire.Request{Cmd: wire.CmdRenew, Key: "k", Token: "t", Lease: 3600}, bs[0].reqs[0])
	assert.Equal(t, int64(1), c.Renewed.Load())
	assert.Equal(t, int64(1), c.Sent.Load())

	// ctx ends first: ctx.Err(); the renewal is still applied when it completes.
	mode.Store(1)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- l.Renew(ctx) }()
	o.waitBatches(t, 2, waitShort)
	cancel()
	assert.ErrorIs(t, <-errc, context.Canceled)
	close(gate)
	o.waitAnswered(t, 2, waitShort)
	assert.Equal(t, int64(2), c.Renewed.Load())
	assert.NoError(t, l.Err())

	// Already-cancelled ctx: nothing is sent.
	assert.ErrorIs(t, l.Renew(ctx), context.Canceled)
	assert.Len(t, o.snapshot(), 2)

	// Refusal: the lease is lost and Renew returns the loss error.
	mode.Store(2)
	err := l.Renew(context.Background())
	require.ErrorIs(t, err, ErrLost)
	assert.ErrorIs(t, err, ErrRefused)
	assert.Equal(t, err, l.Err())
	assert.Equal(t, err, l.Renew(context.Background()))
}

func TestCloseReturnsHeldLeasesAndStops(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	o := newOwner(t, func(r wire.Request) answer {
		if r.Key == "lost" {
			return answer{kind: answerRefuse}
		}
		return answer{gate: gate} // in flight across Close
	})
	s := New(Config{})
	lost := s.Track(Spec{Key: "lost", Token: "t", TTL: 30 * time.Second, Owner: o})
	require.ErrorIs(t, lost.Renew(context.Background()), ErrLost)
	// h1 is due at once and its renewal stays in flight across Close (its
	// loss deadline is 28 s away); h2 is not due.
	h1 := s.Track(Spec{Key: "h1", Token: "t", TTL: time.Minute, Owner: o, Sent: time.Now().Add(-30 * time.Second)})
	h2 := s.Track(Spec{Key: "h2", Token: "t", TTL: 30 * time.Second, Owner: o})
	o.waitFor(t, waitShort, "h1 renewal in flight", func(bs []sentBatch) bool {
		return len(requestsFor(bs, wire.CmdRenew, "h1")) == 1
	})

	held := s.Close()
	assert.ElementsMatch(t, []*Lease{h1, h2}, held)
	for _, l := range held {
		assert.Equal(t, ErrReleased, l.Err())
	}
	assert.ErrorIs(t, lost.Err(), ErrLost)
	assert.Nil(t, s.Close())
	assert.Zero(t, s.Stats().Leases)

	close(gate) // the late answer is ignored
	o.waitAnswered(t, 2, waitShort)
	assert.Equal(t, ErrReleased, h1.Err())

	late := s.Track(Spec{Key: "late", Token: "t", TTL: 30 * time.Second, Owner: o})
	waitDone(t, late, waitShort)
	assert.ErrorIs(t, late.Err(), ErrLost)
	assert.ErrorIs(t, late.Err(), errClosed)
	assert.ErrorIs(t, context.Cause(late.Context()), errClosed)
}

func TestUnrenewableSpecsAreLostAtOnce(t *testing.T) {
	t.Parallel()
	s := newTestScheduler(t, Config{})
	l := s.Track(Spec{Key: "k", Token: "t", TTL: 500 * time.Millisecond, Owner: okOwner(t)})
	assert.ErrorIs(t, l.Err(), ErrLost)
	assert.Contains(t, l.Err().Error(), "below one second")
	l = s.Track(Spec{Key: "k", Token: "t", TTL: time.Minute})
	assert.ErrorIs(t, l.Err(), ErrLost)
	assert.Zero(t, s.Stats().Leases)
}

func TestShorterAppliedLeaseIsBelieved(t *testing.T) {
	t.Parallel()
	s := newScheduler(Config{}) // no goroutine: drive complete directly
	o := okOwner(t)
	s.mu.Lock()
	l := &Lease{s: s, key: "k", owner: o, ttl: 30 * time.Second, idx: -1, done: make(chan struct{})}
	s.confirmLocked(l, 0, l.ttl)
	s.mu.Unlock()
	_, err := s.complete(l, int64(time.Second), wire.Reply{Status: wire.StatusOK, Lease: 3}, nil)
	require.NoError(t, err)
	assert.Equal(t, int64(time.Second+3*time.Second-defaultSafetyMargin(3*time.Second)), l.deadline.Load())
}

// A renewal answered ok for 0 seconds (no dflockd sends one: the request
// asks for at least one) says the lease has no time left: it ends lost,
// refused, rather than believed for the TTL asked for.
func TestRenewalAnsweredForNoSecondsLosesTheLease(t *testing.T) {
	t.Parallel()
	s := newScheduler(Config{}) // no goroutine: drive complete directly
	var c Counters
	s.mu.Lock()
	l := &Lease{s: s, key: "k", owner: okOwner(t), ttl: 30 * time.Second, idx: -1, done: make(chan struct{}), counters: &c}
	s.confirmLocked(l, 0, l.ttl)
	s.mu.Unlock()
	out, err := s.complete(l, int64(time.Second), wire.Reply{Status: wire.StatusOK, Lease: 0}, nil)
	assert.Equal(t, outRefused, out)
	require.ErrorIs(t, err, ErrLost)
	require.ErrorIs(t, err, ErrRefused)
	assert.NotErrorIs(t, err, ErrMaybeUnapplied, "the server applied it: there is nothing to release aside")
	assert.Contains(t, err.Error(), "server answered ok 0: the lease has no time left")
	assert.ErrorIs(t, l.Err(), ErrRefused)
	v := c.Load()
	assert.Equal(t, CountersValue{Refused: 1, Lost: 1}, v)
}

func TestConfigDefaultsAndClamping(t *testing.T) {
	t.Parallel()
	c := Config{Ratio: 1.5, jitter: -1, KeepAlive: -time.Second, window: -1}.withDefaults()
	assert.Equal(t, defaultRatio, c.Ratio)
	assert.Equal(t, defaultJitter, c.jitter)
	assert.Equal(t, defaultKeepAlive, c.KeepAlive)
	assert.Equal(t, defaultWindow, c.window)
	assert.NotNil(t, c.safetyMargin)

	assert.Equal(t, 100*time.Millisecond, defaultSafetyMargin(time.Second))
	assert.Equal(t, time.Second, defaultSafetyMargin(10*time.Second))
	assert.Equal(t, 2*time.Second, defaultSafetyMargin(time.Minute))

	s := newScheduler(Config{safetyMargin: func(ttl time.Duration) time.Duration { return 2 * ttl }})
	assert.Equal(t, time.Second, s.margin(2*time.Second))
	s = newScheduler(Config{safetyMargin: func(time.Duration) time.Duration { return -time.Second }})
	assert.Zero(t, s.margin(2*time.Second))

	// Ratio close to 1: the interval still ends well before the loss deadline.
	s = newScheduler(Config{Ratio: 0.99})
	l := &Lease{ttl: 10 * time.Second}
	s.confirmLocked(l, 0, l.ttl)
	assert.Less(t, l.renewAt, l.deadline.Load())
	assert.LessOrEqual(t, l.renewAt, int64(8100*time.Millisecond))
}

// A Lease tracked in place, inside a struct of the caller's (TrackInto), is
// renewed and untracked like one Track allocated, and the allocation is the
// caller's: TrackInto itself allocates nothing.
func TestTrackIntoTracksInPlace(t *testing.T) { // not parallel: AllocsPerRun counts the process's allocations
	o := okOwner(t)
	s := newTestScheduler(t, Config{KeepAlive: 100 * time.Millisecond})
	var holder struct {
		before int
		l      Lease
	}
	s.TrackInto(&holder.l, Spec{Key: "in-place", Token: "t", TTL: 60 * time.Second, Owner: o})
	require.NoError(t, holder.l.Err())
	assert.Equal(t, "in-place", holder.l.Key())
	o.waitFor(t, waitShort, "a renewal of the lease tracked in place", func(bs []sentBatch) bool {
		return len(requestsFor(bs, wire.CmdRenew, "in-place")) >= 1
	})
	require.True(t, holder.l.Untrack())
	assert.Equal(t, ErrReleased, holder.l.Err())

	if raceEnabled {
		return // the race detector's bookkeeping allocates
	}
	// A scheduler with nothing due for seconds: AllocsPerRun counts the
	// whole process, so no renewal round may run meanwhile.
	quiet := newTestScheduler(t, Config{})
	var ls [101]Lease
	i := 0
	inPlace := testing.AllocsPerRun(100, func() {
		quiet.TrackInto(&ls[i], Spec{Key: "k", Token: "t", TTL: 60 * time.Second, Owner: o})
		ls[i].Untrack()
		i++
	})
	allocated := testing.AllocsPerRun(100, func() {
		quiet.Track(Spec{Key: "k", Token: "t", TTL: 60 * time.Second, Owner: o}).Untrack()
	})
	assert.Zero(t, inPlace, "TrackInto+Untrack of an owner already known allocates nothing")
	assert.Equal(t, 1.0, allocated, "Track allocates the Lease, and nothing else")
}

// Config.Ratio: "renewed ... never sooner than MinInterval after the last
// renewal"; docs/leases.md: "at least 10 ms (MinKeepAlive, whatever the
// ratio)". That holds for a KeepAlive below MinInterval too (dflock's option
// check keeps such values out, Config itself must bound them).
func TestKeepAliveBelowMinIntervalIsBounded(t *testing.T) {
	t.Parallel()
	s := newScheduler(Config{KeepAlive: time.Millisecond})
	s.mu.Lock()
	iv := s.interval(s.life(10 * time.Second))
	s.mu.Unlock()
	assert.GreaterOrEqual(t, iv, MinInterval, "renewal interval of a 10 s lease")
}
