package soak

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/dflock-sdk/go/testutil"
)

// Histories that violate an invariant the soak claims (docs/reliability.md)
// and that the checker once accepted, or that it rejected although its own
// tolerance excused a worse case. Each failed before the fix it names.

// One lock key held at once by two clients, each on a different server.
// Each belief lies inside a grant of its own server, so (a) holds; the
// checker grouped holders by (server, key) and so never compared them.
// Exclusion is now checked per key across servers, and a lease on any
// server but the key's own is a placement violation even when no one else
// held the key then.
func TestCheckerFlagsOneLockKeyHeldOnTwoServers(t *testing.T) {
	lg0 := fakeLedger(0, ev(testutil.AuditGrant, "k", "a", 0, 1000), ev(testutil.AuditRelease, "k", "a", 500, 1000))
	lg1 := fakeLedger(1, ev(testutil.AuditGrant, "k", "b", 100, 1100), ev(testutil.AuditRelease, "k", "b", 600, 1100))
	a := held("k", "a", 1, 499)
	b := held("k", "b", 101, 599)
	b.client, b.node = 1, 1 // the key's server (home) is 0 for both clients
	v := newVerdict()
	checkServerGrants(v, []*ledger{lg0, lg1}, false)
	checkLeases(v, []*ledger{lg0, lg1}, []*belief{a, b}, noKills, false)
	assert.Equal(t, 1, v.counts["b"], "two holders of \"k\" over [101, 499] ms: %v", v.examples)
	assert.Equal(t, 1, v.counts["placement"], "client 1 held \"k\" on server 1: %v", v.examples)
	assert.Zero(t, v.counts["a"])

	// Held on the wrong server with nobody else holding it: placement only.
	b = held("k", "b", 700, 800)
	b.node = 1
	lg1 = fakeLedger(1, ev(testutil.AuditGrant, "k", "b", 650, 1650), ev(testutil.AuditRelease, "k", "b", 900, 1650))
	v = newVerdict()
	checkLeases(v, []*ledger{lg0, lg1}, []*belief{a, b}, noKills, false)
	assert.Equal(t, 1, v.counts["placement"], "%v", v.examples)
	assert.Equal(t, 1, v.total(), "%v", v.examples)

	// Two Clients whose placements disagree, each holding on the server
	// its own placement names: placement.
	b.home = 1
	v = newVerdict()
	checkLeases(v, []*ledger{lg0, lg1}, []*belief{a, b}, noKills, false)
	assert.Equal(t, 1, v.counts["placement"], "%v", v.examples)
}

// A WithLock whose Client read no grant token of its key during the call
// was matched with "the grant in force when fn began", someone else's (or
// one made long before the call): a function that ran under nobody's lock,
// or under another caller's, passed (a) and (b).
func TestCheckerFlagsWithLockWithoutAGrantOfItsOwn(t *testing.T) {
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "b", 12, 1012), // client 1's, given up; client 0 never read it
		ev(testutil.AuditRelease, "k", "b", 80, 1012),
	)
	v := newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{withLockHeld(0, "k", 11, 30, 38 /* read nothing */)}, noKills, false)
	assert.Equal(t, 1, v.withLockUnmatched)
	assert.Equal(t, 1, v.counts["a"], "fn ran with no grant its Client read, inside another caller's grant: %v", v.examples)

	// A grant made long before the call (someone else's, held throughout),
	// even one the Client read, is not the WithLock's.
	lg = fakeLedger(0, ev(testutil.AuditGrant, "k", "c", 0, 3000))
	v = newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{withLockHeld(0, "k", 1000, 1010, 1100, "c")}, noKills, false)
	assert.Equal(t, 1, v.counts["a"], "WithLock called at 1000 matched with a grant made at 0: %v", v.examples)

	// Two WithLocks of one Client never share a grant. Client 0's first
	// WithLock is granted a at 5, which a fault kills at 10; its second is
	// granted b at 12 and its fn starts at 13; the first one's fn starts
	// only at 100. Both grants lie in the first one's window and its Client
	// read both: the latest, b, is the second one's, so the first gets a
	// (and outlived its killed lease), not b (two holders of b).
	lg = fakeLedger(0,
		ev(testutil.AuditGrant, "k", "a", 5, 1005),
		ev(testutil.AuditDisconnect, "k", "a", 10, 1005),
		ev(testutil.AuditGrant, "k", "b", 12, 1012),
		ev(testutil.AuditRelease, "k", "b", 150, 1012),
	)
	killedAt10 := func(node int, t time.Time) bool { return t.Equal(at(10)) }
	first := withLockHeld(0, "k", 0, 100, 104, "a", "b")
	second := withLockHeld(0, "k", 3, 13, 140, "a", "b")
	v = newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{first, second}, killedAt10, false)
	assert.Zero(t, v.total(), "%v", v.examples)
	assert.Equal(t, "a", first.token)
	assert.Equal(t, "b", second.token)
	assert.Equal(t, 1, v.inherent)
}

// Invariant (h), "no loss without a cause", excused a loss by any measured
// scheduling delay (> 20 ms) from a second before the grant to the report:
// a scheduler that skips a renewal now and then passed on any machine
// loaded enough to show one such delay per lease life. Now the delays in
// the half lease before the report must add up to the lease's safety
// margin, less what the detector cannot see (starveSlack).
func TestCheckerExcusesALossOnlyByDelaysNearIt(t *testing.T) {
	lg := fakeLedger(0, ev(testutil.AuditGrant, "k", "a", 0, 1000), ev(testutil.AuditExpire, "k", "a", 3100, 3000))
	check := func(p pausedFunc) *verdict {
		b := held("k", "a", 1, 2800)
		lost := at(2900)
		b.lost.Store(&lost)
		v := newVerdict()
		v.paused = p
		checkUnexplainedLosses(v, []*ledger{lg}, []*belief{b}, noFaults)
		return v
	}
	// One 21 ms delay 2.4 s before the loss (TTL 1 s, margin 100 ms).
	v := check(pausesAt(500, 521))
	assert.Equal(t, 1, v.counts["h"], "a loss 2.4 s after a 21 ms delay, with no fault: %v", v.examples)
	// 60 ms unscheduled in the half lease before it: less than 75 ms.
	v = check(pausesAt(2600, 2630, 2700, 2730))
	assert.Equal(t, 1, v.counts["h"], "%v", v.examples)
	// 80 ms: starved, counted apart.
	v = check(pausesAt(2600, 2640, 2700, 2740))
	assert.Zero(t, v.counts["h"], "%v", v.examples)
	assert.Equal(t, 1, v.starved["h"])
}

// Fault windows excused a loss whatever their kind, including the kinds
// that only turn away new connections ("refuse new conns" and "conn cap":
// Proxy.RefuseNew, Proxy.CloseNew, "Established connections are not
// affected"), which a lease's renewals, sent on its own connection, never
// meet.
func TestCheckerLossNotExcusedByFaultsOnNewConnectionsOnly(t *testing.T) {
	lg := fakeLedger(0, ev(testutil.AuditGrant, "k", "a", 0, 1000), ev(testutil.AuditGrant, "j", "b", 0, 1000),
		ev(testutil.AuditGrant, "i", "c", 0, 1000))
	f := &faulter{windows: []faultWindow{
		{node: 0, kind: faultRefuse, start: at(2000), end: at(2500)},
		{node: 0, kind: faultConnCap, start: at(5000), end: at(5500)},
		{node: 0, kind: faultLatency, start: at(8000), end: at(8500)},
	}}
	lost := func(b *belief, ms int) *belief { tm := at(ms); b.lost.Store(&tm); return b }
	v := newVerdict()
	checkUnexplainedLosses(v, []*ledger{lg}, []*belief{
		lost(held("k", "a", 1500, 2600), 2700),
		lost(held("j", "b", 4500, 5600), 5700),
		lost(held("i", "c", 7500, 8600), 8700), // a latency spike can delay renewals: explained
	}, f.faultedDuring)
	assert.Equal(t, 2, v.counts["h"], "%v", v.examples)
}

// The starvation excuse of (a) was not monotonic in the client's lateness:
// a belief 99 ms behind a pause that ended 20 ms before the expiry was
// excused, one 32 ms behind a pause that ended 31 ms before it was not.
// A lease of 1 s (margin 100 ms) expires at 1000; the process is
// unscheduled from 250.
func TestCheckerStarvationExcuseIsMonotonic(t *testing.T) {
	lg := fakeLedger(0, ev(testutil.AuditGrant, "a", "a", 0, 1000), ev(testutil.AuditExpire, "a", "a", 1200, 1000))
	check := func(p pausedFunc, last int) *verdict {
		v := newVerdict()
		v.paused = p
		checkLeases(v, []*ledger{lg}, []*belief{held("a", "a", 1, last)}, noKills, false)
		return v
	}
	worse := check(pausesAt(250, 980), 1079)
	assert.Zero(t, worse.total(), "%v", worse.examples)
	assert.Equal(t, 1, worse.starved["a"])
	better := check(pausesAt(250, 969), 1001)
	assert.Zero(t, better.total(), "32 ms behind a 719 ms pause that swallowed the deadline: %v", better.examples)
	assert.Equal(t, 1, better.starved["a"])

	// For any pause, the beliefs excused are those that ended early
	// enough: once one is a violation, every later one is too.
	for _, pauseEnd := range []int{905, 940, 969, 980, 1000, 1050} {
		violated := false
		for last := 1001; last <= 1300; last++ {
			v := check(pausesAt(250, pauseEnd), last)
			if v.total() > 0 {
				violated = true
				continue
			}
			assert.False(t, violated, "pause [250, %d]: belief until %d excused after an earlier one was not", pauseEnd, last)
		}
		assert.True(t, violated, "pause [250, %d]: no bound on the lateness excused", pauseEnd)
	}
}

// (g) for WithLock: its nil promises its release where the release had
// time to finish and no fault could make it fail silently (WithLock
// returns a failed release's error only if it is a loss).
func TestCheckerChecksWithLockReleases(t *testing.T) {
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "a", 0, 1000),
		ev(testutil.AuditRelease, "k", "a", 100, 1000), // released: fine
		ev(testutil.AuditGrant, "k", "b", 200, 1200),
		ev(testutil.AuditExpire, "k", "b", 1300, 1200), // returned nil at 301, never released
		ev(testutil.AuditGrant, "k", "c", 1300, 2300),
		ev(testutil.AuditExpire, "k", "c", 2400, 2300), // the same, with a fault meanwhile
		ev(testutil.AuditGrant, "k", "d", 2400, 3400),
		ev(testutil.AuditExpire, "k", "d", 3500, 3400), // the same, after the release bound
	)
	wl := func(token string, from, fnRet, ret int) *belief {
		b := withLockHeld(0, "k", from-1, from, fnRet-1, token)
		b.relFrom, b.relRet = at(fnRet), at(ret)
		return b
	}
	faultAt := func(node int, from, to time.Time) bool { return !at(1405).Before(from) && !at(1405).After(to) }
	beliefs := []*belief{wl("a", 1, 99, 101), wl("b", 201, 299, 301), wl("c", 1301, 1400, 1410), wl("d", 2401, 2500, 4600)}
	v := newVerdict()
	checkLeases(v, []*ledger{lg}, beliefs, noKills, false)
	checkReleases(v, []*ledger{lg}, beliefs, faultAt)
	assert.Equal(t, 1, v.counts["g"], "%v", v.examples)
	assert.Equal(t, 2, v.withLockReleaseChecked)
	assert.Equal(t, 2, v.withLockReleaseUnchecked)
}
