package soak

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// The soak is only as good as its checker: these tests feed it made-up
// server logs and beliefs and check that it flags exactly the violations.

var t0 = time.Now()

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// fakeLedger builds a ledger from (kind, key, token, time, expires) events.
func fakeLedger(node int, evs ...testutil.AuditEvent) *ledger {
	l := newLedger(node)
	for _, ev := range evs {
		l.record(ev)
	}
	return l
}

func ev(kind testutil.AuditKind, key, token string, ms, expiresMS int) testutil.AuditEvent {
	return testutil.AuditEvent{Time: at(ms), Kind: kind, Key: key, Token: token, Expires: at(expiresMS)}
}

func semEv(kind testutil.AuditKind, key, token string, limit, ms, expiresMS int) testutil.AuditEvent {
	e := ev(kind, key, token, ms, expiresMS)
	e.Semaphore, e.Limit = true, limit
	return e
}

func held(key, token string, fromMS, toMS int) *belief {
	return &belief{op: "Lock", key: key, token: token, start: at(fromMS), last: at(toMS)}
}

func noKills(int, time.Time) bool { return false }

func noFaults(int, time.Time, time.Time) bool { return false }

func TestCheckerAcceptsBeliefsInsideTheirGrants(t *testing.T) {
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "a", 0, 1000),
		ev(testutil.AuditRenew, "k", "a", 500, 1500),
		ev(testutil.AuditRelease, "k", "a", 1200, 1500),
		ev(testutil.AuditGrant, "k", "b", 1200, 2200),
		ev(testutil.AuditExpire, "k", "b", 2400, 2200),
	)
	v := newVerdict()
	checkServerGrants(v, []*ledger{lg}, false)
	checkLeases(v, []*ledger{lg}, []*belief{held("k", "a", 1, 1199), held("k", "b", 1201, 2199)}, noKills, false)
	assert.Zero(t, v.total(), "%v", v.examples)
	assert.Equal(t, 2, v.believed)
}

func TestCheckerFlagsABeliefPastTheLeaseExpiry(t *testing.T) {
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "a", 0, 1000),
		// The sweeper removes the lease late; it ended at its expiry.
		ev(testutil.AuditExpire, "k", "a", 1300, 1000),
	)
	v := newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{held("k", "a", 1, 1001)}, noKills, false)
	assert.Equal(t, 1, v.counts["a"], "%v", v.examples)
}

func TestCheckerFlagsABeliefWithoutAGrant(t *testing.T) {
	lg := fakeLedger(0, ev(testutil.AuditGrant, "k", "a", 100, 1000))
	v := newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{held("k", "zz", 1, 2), held("k", "a", 50, 60)}, noKills, false)
	assert.Equal(t, 2, v.counts["a"], "%v", v.examples)
}

func TestCheckerTellsKilledLeasesFromLateReports(t *testing.T) {
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "a", 0, 3000),
		ev(testutil.AuditDisconnect, "k", "a", 500, 3000),
		ev(testutil.AuditGrant, "j", "b", 0, 3000),
		ev(testutil.AuditDisconnect, "j", "b", 500, 3000),
		ev(testutil.AuditGrant, "h", "d", 0, 1000),
		ev(testutil.AuditDisconnect, "h", "d", 500, 1000),
		ev(testutil.AuditGrant, "g", "e", 2000, 3000),
		ev(testutil.AuditDisconnect, "g", "e", 2200, 3000),
		ev(testutil.AuditGrant, "i", "c", 0, 3000),
		ev(testutil.AuditStop, "i", "c", 2000, 3000),
	)
	killed := func(node int, t time.Time) bool { return t.Equal(at(500)) || t.Equal(at(2200)) }
	v := newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{
		held("k", "a", 1, 600),     // a fault killed it at 500: inherent, noticed before its expiry
		held("j", "b", 1, 2900),    // inherent, and believed until just before the expiry in force
		held("h", "d", 1, 1100),    // inherent, but believed past the expiry in force (1000)
		held("g", "e", 2001, 3300), // inherent, but past 3000, the expiry in force
		held("i", "c", 1, 2100),    // the server stopped at 2000 with no fault: the client's doing
	}, killed, false)
	assert.Equal(t, 3, v.counts["a"], "%v", v.examples)
	assert.Equal(t, 4, v.inherent)
}

func TestCheckerFlagsTwoHoldersOfALock(t *testing.T) {
	// A server that grants one lock twice: both the server check and the
	// belief check must object.
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "a", 0, 1000),
		ev(testutil.AuditGrant, "k", "b", 500, 1500),
	)
	v := newVerdict()
	checkServerGrants(v, []*ledger{lg}, false)
	assert.Equal(t, 1, v.counts["server-b"], "%v", v.examples)
	v = newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{held("k", "a", 1, 600), held("k", "b", 550, 700)}, noKills, false)
	assert.Equal(t, 1, v.counts["b"], "%v", v.examples)
	assert.Zero(t, v.counts["a"])
}

func TestCheckerCountsSemaphoreHoldersAgainstTheLimit(t *testing.T) {
	lg := fakeLedger(0,
		semEv(testutil.AuditGrant, "s", "a", 2, 0, 1000),
		semEv(testutil.AuditGrant, "s", "b", 2, 0, 1000),
		semEv(testutil.AuditRelease, "s", "a", 2, 300, 1000),
		semEv(testutil.AuditGrant, "s", "c", 2, 300, 1300),
	)
	sem := func(token string, from, to int) *belief {
		b := held("s", token, from, to)
		b.sem, b.limit = true, 2
		return b
	}
	v := newVerdict()
	checkServerGrants(v, []*ledger{lg}, false)
	checkLeases(v, []*ledger{lg}, []*belief{sem("a", 1, 299), sem("b", 1, 900), sem("c", 301, 900)}, noKills, false)
	assert.Zero(t, v.total(), "%v", v.examples)

	// Holder a still believes after its release was applied: a is flagged
	// (a), and three holders at once (b).
	v = newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{sem("a", 1, 350), sem("b", 1, 900), sem("c", 301, 900)}, noKills, false)
	assert.Equal(t, 1, v.counts["a"], "%v", v.examples)
	assert.Zero(t, v.counts["b"], "trimmed to the grants, the holders never exceed the limit")
	assert.Equal(t, 1, v.overlapsKill, "untrimmed, they do")
}

func fenceToken(f uint64) string { return fmt.Sprintf("%016x%016x", f, 0xabcdef) }

func TestCheckerChecksFences(t *testing.T) {
	a, b := fenceToken(7), fenceToken(9)
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "k", a, 0, 1000),
		ev(testutil.AuditRelease, "k", a, 100, 1000),
		ev(testutil.AuditGrant, "k", b, 200, 1200),
		ev(testutil.AuditRelease, "k", b, 300, 1200),
	)
	fenced := func(token string, fence uint64, from, to int) *belief {
		bl := held("k", token, from, to)
		bl.fence, bl.hasFence = fence, true
		return bl
	}
	v := newVerdict()
	checkServerGrants(v, []*ledger{lg}, true)
	checkLeases(v, []*ledger{lg}, []*belief{fenced(a, 7, 1, 99), fenced(b, 9, 201, 299)}, noKills, true)
	assert.Zero(t, v.total(), "%v", v.examples)

	// A Fence() that disagrees with its token, and one missing.
	v = newVerdict()
	noFence := held("k", b, 201, 299)
	checkLeases(v, []*ledger{lg}, []*belief{fenced(a, 8, 1, 99), noFence}, noKills, true)
	assert.Equal(t, 2, v.counts["c"], "%v", v.examples)

	// A server whose fences go backwards.
	back := fakeLedger(0,
		ev(testutil.AuditGrant, "k", b, 0, 1000),
		ev(testutil.AuditRelease, "k", b, 100, 1000),
		ev(testutil.AuditGrant, "k", a, 200, 1200),
	)
	v = newVerdict()
	checkServerGrants(v, []*ledger{back}, true)
	assert.Equal(t, 1, v.counts["c"], "%v", v.examples)
	v = newVerdict()
	checkLeases(v, []*ledger{back}, []*belief{fenced(b, 9, 1, 99), fenced(a, 7, 201, 299)}, noKills, true)
	assert.Equal(t, 1, v.counts["c"], "%v", v.examples)
}

func TestCheckerFlagsAuditAnomalies(t *testing.T) {
	lg := fakeLedger(0,
		ev(testutil.AuditRenew, "k", "ghost", 0, 1000),
		ev(testutil.AuditGrant, "k", "a", 0, 1000),
		ev(testutil.AuditRelease, "k", "a", 10, 1000),
		ev(testutil.AuditRelease, "k", "a", 20, 1000),
	)
	v := newVerdict()
	checkServerGrants(v, []*ledger{lg}, false)
	assert.Equal(t, 2, v.counts["audit"], "%v", v.examples)
}

// Signals: emissions e1..e6 on server 0, channel ev.1; a subscription of
// "ev.>" listening from t=0.
func signalFixture() map[string]*emission {
	emits := make(map[string]*emission)
	for i := 1; i <= 6; i++ {
		p := fmt.Sprintf("e%d", i)
		emits[p] = &emission{payload: p, channel: "ev.1", node: 0, start: at(i * 100), end: at(i*100 + 10), ok: true}
	}
	return emits
}

func subOf(entries ...entry) *subRecord {
	return &subRecord{pattern: "ev.>", nodes: []int{0}, listened: at(0), entries: entries}
}

func sig(p string) entry { return entry{payload: p, gapNode: -1} }
func gap(node int) entry { return entry{gapNode: node} }

func TestCheckerAcceptsSignalsMissedUnderAGap(t *testing.T) {
	v := newVerdict()
	f := checkSignals(v, []*subRecord{subOf(sig("e1"), sig("e2"), gap(0), sig("e5"), sig("e6"))}, signalFixture())
	assert.Zero(t, v.total(), "%v", v.examples)
	assert.Equal(t, 2, f.missedGap) // e3, e4
	// e6 bounds what was expected: e1..e5.
	assert.Equal(t, 5, f.expected)
}

func TestCheckerFlagsSignalsMissedWithoutAGap(t *testing.T) {
	v := newVerdict()
	checkSignals(v, []*subRecord{subOf(sig("e1"), sig("e2"), sig("e5"), gap(0), sig("e6"))}, signalFixture())
	require.Equal(t, 1, v.counts["e"], "%v", v.examples) // e3, e4 went missing before the gap's window

	// A gap of another server does not cover them either.
	v = newVerdict()
	s := subOf(sig("e1"), sig("e2"), gap(1), sig("e5"), sig("e6"))
	s.nodes = []int{0, 1}
	checkSignals(v, []*subRecord{s}, signalFixture())
	assert.Equal(t, 1, v.counts["e"], "%v", v.examples)

	// Counted drops do.
	v = newVerdict()
	s = subOf(sig("e1"), sig("e2"), sig("e5"), sig("e6"))
	s.dropped = 2
	f := checkSignals(v, []*subRecord{s}, signalFixture())
	assert.Zero(t, v.total(), "%v", v.examples)
	assert.Equal(t, 2, f.missedDrop)
}

func TestCheckerFlagsPhantomAndDuplicateSignals(t *testing.T) {
	v := newVerdict()
	s := subOf(sig("e1"), sig("e1"), sig("nobody"))
	g1 := subOf(sig("e2"))
	g1.group = "g"
	g2 := subOf(sig("e2"))
	g2.group = "g"
	checkSignals(v, []*subRecord{s, g1, g2}, signalFixture())
	assert.Equal(t, 3, v.counts["e"], "%v", v.examples) // twice, unknown, twice in one group
}

func TestPatternMatches(t *testing.T) {
	for _, c := range []struct {
		pattern, ch string
		want        bool
	}{
		{"ev.>", "ev.1", true}, {"ev.>", "ev.a.b", true}, {"ev.>", "ev", false}, {"ev.>", "evx.1", false},
		{"ev.*", "ev.1", true}, {"ev.*", "ev.a.b", false}, {"ev.*", "ev.", false},
		{"ev.3", "ev.3", true}, {"ev.3", "ev.31", false}, {">", "x", true},
	} {
		assert.Equal(t, c.want, patternMatches(c.pattern, c.ch), "%q ~ %q", c.pattern, c.ch)
	}
}

// withLockHeld is a WithLock belief of client, called at callMS, whose
// Client read the grant tokens read.
func withLockHeld(client int, key string, callMS, fromMS, toMS int, read ...string) *belief {
	b := held(key, "", fromMS, toMS)
	b.op, b.client, b.call = "WithLock", client, at(callMS)
	b.seen = func(token string) bool { return slices.Contains(read, token) }
	return b
}

func TestCheckerMatchesWithLockWithTheGrantItsClientRead(t *testing.T) {
	// Client 0's WithLock is granted a; a fault kills a on the server at 10
	// and the server grants b to client 2's WithLock at 12. Client 0's
	// function only starts at 30 (its goroutine was slow) and believes
	// until 38, when it notices. Its belief belongs to the killed a, not to
	// b, the grant in force at 30: one stale belief, not two holders.
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "a", 0, 1000),
		ev(testutil.AuditDisconnect, "k", "a", 10, 1000),
		ev(testutil.AuditGrant, "k", "b", 12, 1012),
		ev(testutil.AuditRelease, "k", "b", 80, 1012),
	)
	killedAt10 := func(node int, t time.Time) bool { return t.Equal(at(10)) }
	v := newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{
		withLockHeld(0, "k", 0, 30, 38, "a"),
		withLockHeld(2, "k", 11, 14, 76, "b"),
	}, killedAt10, false)
	assert.Zero(t, v.total(), "%v", v.examples)
	assert.Equal(t, 1, v.inherent, "client 0 outlived its killed lease")
	assert.Equal(t, 2, v.withLockMatched)

	// A WithLock that believes past the end of the grant its Client read
	// is flagged, even though another grant is in force then.
	lg = fakeLedger(0,
		ev(testutil.AuditGrant, "k", "a", 0, 1000),
		ev(testutil.AuditRelease, "k", "a", 10, 1000),
		ev(testutil.AuditGrant, "k", "b", 12, 1012),
	)
	v = newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{withLockHeld(0, "k", 0, 30, 38, "a")}, noKills, false)
	assert.Equal(t, 1, v.counts["a"], "%v", v.examples)

	// An earlier grant the same Client read in the window (a Lock of
	// another goroutine that gave it up at once) is not the WithLock's: it
	// was released before fn began, so not even a candidate.
	lg2 := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "x", 2, 1002),
		ev(testutil.AuditRelease, "k", "x", 4, 1002),
		ev(testutil.AuditGrant, "k", "a", 5, 1005),
	)
	v = newVerdict()
	checkLeases(v, []*ledger{lg2}, []*belief{withLockHeld(0, "k", 0, 30, 38, "x", "a")}, noKills, false)
	assert.Zero(t, v.total(), "%v", v.examples)
	assert.Zero(t, v.withLockSeveral)

	// Of two grants still held when fn began (an earlier one of the same
	// Client, killed later), the latest.
	lg3 := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "x", 2, 1002),
		ev(testutil.AuditGrant, "k", "a", 5, 1005),
		ev(testutil.AuditDisconnect, "k", "x", 40, 1002),
	)
	v = newVerdict()
	bl := withLockHeld(0, "k", 0, 30, 38, "x", "a")
	checkLeases(v, []*ledger{lg3}, []*belief{bl}, noKills, false)
	assert.Equal(t, "a", bl.token)
	assert.Equal(t, 1, v.withLockSeveral)

	// A grant another belief shows is not the WithLock's; with no
	// candidate left, its fn ran under no grant of its own: a violation
	// (not a match with the grant in force, which is the other belief's).
	v = newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{held("k", "b", 13, 20), withLockHeld(0, "k", 11, 30, 38, "b")}, noKills, false)
	assert.Equal(t, 0, v.withLockMatched)
	assert.Equal(t, 1, v.withLockUnmatched)
	assert.Equal(t, 1, v.counts["a"], "%v", v.examples)
}

// pausesAt is a pausedFunc for made-up delays, given in ms as [from, to] pairs.
func pausesAt(ms ...int) pausedFunc {
	return func(from, to time.Time) (total time.Duration, lastEnd time.Time) {
		for i := 0; i+1 < len(ms); i += 2 {
			lo, hi := at(ms[i]), at(ms[i+1])
			if hi.Before(from) || lo.After(to) {
				continue
			}
			if lo.Before(from) {
				lo = from
			}
			end := hi
			if end.After(to) {
				end = to
			}
			total += end.Sub(lo)
			lastEnd = hi
		}
		return total, lastEnd
	}
}

func TestCheckerExcusesOnlyWellEvidencedStarvation(t *testing.T) {
	// Leases of 1 s (margin 100 ms) that expired at 1000; each holder
	// believed on until 1040.
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "a", "a", 0, 1000), ev(testutil.AuditExpire, "a", "a", 1200, 1000),
	)
	check := func(p pausedFunc, last int) *verdict {
		v := newVerdict()
		v.paused = p
		checkLeases(v, []*ledger{lg}, []*belief{held("a", "a", 1, last)}, noKills, false)
		return v
	}
	// Unscheduled through the whole margin [900, 1000]: starved.
	v := check(pausesAt(600, 1010), 1040)
	assert.Zero(t, v.total(), "%v", v.examples)
	assert.Equal(t, 1, v.starved["a"])
	// Two delays that leave less than starveSlack of the margin: starved.
	v = check(pausesAt(880, 940, 950, 1005), 1040)
	assert.Equal(t, 1, v.starved["a"], "%v", v.examples)
	// A delay that ended before the margin began: the client had all of
	// its margin to act.
	v = check(pausesAt(100, 880), 1040)
	assert.Equal(t, 1, v.counts["a"])
	assert.Zero(t, v.starved["a"])
	// Half the margin unscheduled and believed until 1060: it was
	// scheduled for 110 ms after its deadline (900) and still believed,
	// more than the margin it is given to catch up.
	v = check(pausesAt(850, 950), 1060)
	assert.Equal(t, 1, v.counts["a"])
	// The same delay, believed until 1040: scheduled for 90 ms since 900,
	// within a margin: starved.
	v = check(pausesAt(850, 950), 1040)
	assert.Equal(t, 1, v.starved["a"], "%v", v.examples)
	// A delay after the expiry: the client could run through all of the
	// window in which it had to act.
	v = check(pausesAt(1000, 1050), 1040)
	assert.Equal(t, 1, v.counts["a"])
	// Starved through the margin, but believed on long after the delay
	// ended (more than a margin): the client was late on its own.
	v = check(pausesAt(600, 1010), 1200)
	assert.Equal(t, 1, v.counts["a"])
	// Without the detector nothing is excused.
	v = check(nil, 1040)
	assert.Equal(t, 1, v.counts["a"])
}

func TestCheckerExcusesOverrunsOnlyByTheTimeUnscheduled(t *testing.T) {
	slow := []overrun{
		{op: "Lock", ended: at(0), ret: at(1500)}, // 1.5 s, 600 ms unscheduled: 900 ms of its own
		{op: "Lock", ended: at(0), ret: at(1700)}, // 1.7 s, 600 ms unscheduled: 1.1 s of its own
	}
	v := newVerdict()
	v.paused = pausesAt(200, 800)
	checkOverruns(v, slow)
	assert.Equal(t, 1, v.starved["d"])
	assert.Equal(t, 1, v.counts["d"], "%v", v.examples)

	// More excused than a small fraction of the calls: the run fails.
	checkStarvation(v, 1000)
	assert.Zero(t, v.counts["starved"])
	checkStarvation(v, 50)
	assert.Equal(t, 1, v.counts["starved"], "%v", v.examples)
}

func TestCheckerGapWindowIgnoresTheEndOfAFailedEmit(t *testing.T) {
	// A stall: the listener connection breaks (gap); e2's Emit fails at
	// 210 when its own connection breaks, but the server had read it and
	// relays it after the re-listen; e3, answered at 350, was
	// relayed before the re-listen and lost. e2's end does not bound the
	// relay: the gap covers e3.
	emits := signalFixture()
	emits["e2"].end, emits["e2"].ok = at(210), false
	emits["e3"].start, emits["e3"].end = at(300), at(350)
	v := newVerdict()
	f := checkSignals(v, []*subRecord{subOf(sig("e1"), gap(0), sig("e2"), sig("e4"), sig("e5"), sig("e6"))}, emits)
	assert.Zero(t, v.total(), "%v", v.examples)
	assert.Equal(t, 1, f.missedGap)
}
