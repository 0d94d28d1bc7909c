package soak

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// Checks that make the soak fail for an SDK whose Release never sends `r`
// (g), whose scheduler never renews (h), that never gives a wait-pool
// connection back (busyLeftovers), that never calls OnLeaseLost (j), or
// whose WithLock runs fn after a failed acquire (k, in runPhase): each of
// those mutations passed with "VIOLATIONS: 0" before these existed.

// checkReleases is invariant (g): a Release that returned nil released the
// lease on the server — the server answers `ok` to r/sr only after it has
// applied it, so the grant ended by AuditRelease before Release returned.
// (Release also returns nil after Close released the lease; the workload
// releases before Close.)
//
// WithLock releases after fn and returns nil even when that release failed
// for a reason other than a loss (its error is fn's, joined only with a
// loss): its nil promises the release only when the release had time to
// finish (it returned before DefaultReleaseTimeout after fn) and nothing
// could make it fail, no fault of any kind on its server from fn's return
// to WithLock's (faulted). Every other WithLock that returned nil is held
// to (g) like a Release.
func checkReleases(v *verdict, ledgers []*ledger, beliefs []*belief, faulted faultedFunc) {
	for _, b := range beliefs {
		if b.relRet.IsZero() || b.relErr != nil || b.token == "" || b.node < 0 || b.node >= len(ledgers) {
			continue
		}
		if !b.relFrom.IsZero() {
			if b.relRet.Sub(b.relFrom) >= dflock.DefaultReleaseTimeout || faulted(b.node, b.relFrom, b.relRet) {
				v.withLockReleaseUnchecked++
				continue
			}
			v.withLockReleaseChecked++
		}
		g := ledgers[b.node].find(b.token)
		if g == nil {
			continue // invariant (a) reports it
		}
		switch {
		case !g.ended():
			v.violate("g", "%s %q token %s (client %d, server %d): Release returned nil at %s, the server still holds the lease (expires %s)",
				b.op, b.key, short(b.token), b.client, b.node, stamp(b.relRet), stamp(g.expires))
		case g.endKind != testutil.AuditRelease || g.end.After(b.relRet):
			v.violate("g", "%s %q token %s (client %d, server %d): Release returned nil at %s, the server ended the lease by %s at %s",
				b.op, b.key, short(b.token), b.client, b.node, stamp(b.relRet), g.endKind, stamp(g.end))
		}
	}
}

// faultedFunc reports whether a fault was active on node at some moment of
// [from, to].
type faultedFunc func(node int, from, to time.Time) bool

// lossSlack widens the window in which a fault explains a loss: a grant
// made just after a fault ended may still ride a connection the fault
// left backlogged.
const lossSlack = time.Second

// checkUnexplainedLosses is invariant (h): a lease is lost only for a
// cause. One reported lost while no fault that can end a held lease touched
// its server from a little before its grant to the report (faulted), and
// the process was not measurably starved when it had to renew, means the
// client failed to keep it (renewals not sent, or not in time).
//
// Starvation explains a loss only with evidence near it: a correct client
// loses a lease it was renewing only if
// it could not run when the renewal was due, and then it reports the loss
// when it runs again, so the process must have been measurably unscheduled,
// for at least the lease's safety margin less what the detector cannot
// see (starveSlack), in the half lease before the report (the renewal is
// due half a lease before the deadline). A few short delays long before
// the loss explain nothing.
func checkUnexplainedLosses(v *verdict, ledgers []*ledger, beliefs []*belief, faulted faultedFunc) {
	for _, b := range beliefs {
		lost := b.lost.Load()
		if lost == nil || b.node < 0 || b.node >= len(ledgers) {
			continue
		}
		from := b.call
		if from.IsZero() || b.start.Before(from) {
			from = b.start
		}
		from = from.Add(-lossSlack)
		if faulted(b.node, from, *lost) {
			continue
		}
		ttl := time.Second // the soak's shortest lease, if the grant is unknown ((a) reports that)
		if b.token != "" {
			if g := ledgers[b.node].find(b.token); g != nil && g.ttl > 0 {
				ttl = g.ttl
			}
		}
		m := safetyMargin(ttl)
		near := lost.Add(-ttl / 2)
		var total time.Duration
		if v.paused != nil {
			if total, _ = v.paused(near, *lost); total >= m-starveSlack {
				v.starve("h", "%s %q token %s (client %d, server %d): lost at %s with no fault on its server since %s; unscheduled %s of [%s, %s] (margin %s)",
					b.op, b.key, short(b.token), b.client, b.node, stamp(*lost), stamp(from), total, stamp(near), stamp(*lost), m)
				continue
			}
		}
		why := ""
		if e := b.lostErr.Load(); e != nil {
			why = *e
		}
		v.violate("h", "%s %q token %s (client %d, server %d): lost at %s with no fault on its server since %s, unscheduled only %s of the half lease before (margin %s): %s",
			b.op, b.key, short(b.token), b.client, b.node, stamp(*lost), stamp(from), total, m, why)
	}
}

// endsLeases reports whether a fault of kind can end a lease held on an
// established connection: those that act on established connections
// (needsConns); a lease's renewals, sent on the connection that owns it,
// never meet a refusal or a cap on new ones.
func (k faultKind) endsLeases() bool { return k.needsConns() }

// faultedDuring is a faultedFunc over the faults injected so far that can
// end a held lease (endsLeases).
func (f *faulter) faultedDuring(node int, from, to time.Time) bool {
	return f.activeDuring(node, from, to, faultKind.endsLeases)
}

// anyFaultDuring is a faultedFunc over every fault injected so far.
func (f *faulter) anyFaultDuring(node int, from, to time.Time) bool {
	return f.activeDuring(node, from, to, func(faultKind) bool { return true })
}

func (f *faulter) activeDuring(node int, from, to time.Time, kinds func(faultKind) bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.windows {
		end := w.end
		if w.kind == faultRestart {
			end = w.start.Add(w.dur) // the whole outage
		}
		if w.node == node && kinds(w.kind) && !end.Before(from) && !w.start.After(to) {
			return true
		}
	}
	return false
}

func TestCheckerFlagsAReleaseTheServerNeverApplied(t *testing.T) {
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "a", 0, 1000),
		ev(testutil.AuditRelease, "k", "a", 100, 1000), // released: fine
		ev(testutil.AuditGrant, "k", "b", 200, 1200),
		ev(testutil.AuditExpire, "k", "b", 1300, 1200), // Release said ok, the lease ran out
		ev(testutil.AuditGrant, "k", "c", 1300, 2300),  // Release said ok, still held
	)
	rel := func(b *belief, ms int, err error) *belief { b.relRet, b.relErr = at(ms), err; return b }
	v := newVerdict()
	checkReleases(v, []*ledger{lg}, []*belief{
		rel(held("k", "a", 1, 99), 101, nil),
		rel(held("k", "b", 201, 300), 301, nil),
		rel(held("k", "c", 1301, 1400), 1401, nil),
		rel(held("k", "c", 1301, 1400), 1401, errors.New("timeout")), // a failed Release promises nothing
	}, noFaults)
	assert.Equal(t, 2, v.counts["g"], "%v", v.examples)
}

func TestCheckerFlagsALossWithoutACause(t *testing.T) {
	lg := fakeLedger(0, ev(testutil.AuditGrant, "k", "a", 0, 1000), ev(testutil.AuditGrant, "j", "b", 0, 1000))
	lost := func(b *belief, ms int) *belief { tm := at(ms); b.lost.Store(&tm); return b }
	faultAt := func(node int, from, to time.Time) bool { return !at(500).Before(from) && !at(500).After(to) }
	v := newVerdict()
	checkUnexplainedLosses(v, []*ledger{lg}, []*belief{
		lost(held("k", "a", 1, 900), 950),      // a fault at 500: explained
		lost(held("j", "b", 2000, 2100), 2200), // nothing happened on the server
		held("j", "b", 1, 100),                 // not lost
	}, faultAt)
	assert.Equal(t, 1, v.counts["h"], "%v", v.examples)
}

// busyLeftovers is invariant (f) on the client side, before Close: once
// the workload has stopped (every goroutine released what it held), no
// Client holds a lease, waits, or keeps a wait-pool connection out of its
// pool. A connection never given back (a leak while the Client runs) shows
// here; Close, which closes every connection, would hide it.
func busyLeftovers(clients []*dflock.Client) []string {
	var out []string
	deadline := time.Now().Add(settle)
	for ci, c := range clients {
		for {
			var busy []string
			for _, s := range c.Snapshot().Servers {
				if s.Conns.InUse != 0 || s.Conns.Pinned != 0 || s.LeasesHeld != 0 || s.WaitsInFlight != 0 {
					busy = append(busy, fmt.Sprintf("%s: %d in use, %d pinned, %d lease(s) held, %d wait(s)",
						s.Addr, s.Conns.InUse, s.Conns.Pinned, s.LeasesHeld, s.WaitsInFlight))
				}
			}
			if len(busy) == 0 {
				break
			}
			if time.Now().After(deadline) {
				out = append(out, fmt.Sprintf("client %d after the workload stopped: %s", ci, strings.Join(busy, "; ")))
				break
			}
			time.Sleep(20 * time.Millisecond) // releases answered in the background
		}
	}
	return out
}

// checkLossHooks is invariant (j): every lease a goroutine saw lost was
// told to Hooks.OnLeaseLost (docs: "called once for every lease lost"),
// but for callbacks the Client counted as dropped. Run after Close, which
// waits for queued callbacks, and after checkLeases, which gives WithLock
// beliefs their tokens (one of several candidates is not sure enough to
// hold against the hook's).
func checkLossHooks(v *verdict, rec *recorder, clients []*dflock.Client) {
	rec.mu.Lock()
	beliefs := rec.beliefs
	rec.mu.Unlock()
	missing := make([]int, len(clients))
	examples := make([][]string, len(clients))
	for _, b := range beliefs {
		// Lost while held, or found lost by Release (whose hook call is
		// lostAtRelease's).
		lost := b.lost.Load() != nil || errors.Is(b.relErr, dflock.ErrLockLost)
		if !lost || b.token == "" || b.ambiguous {
			continue
		}
		if _, ok := rec.hooked.Load(b.token); !ok {
			missing[b.client]++
			if len(examples[b.client]) < 3 {
				examples[b.client] = append(examples[b.client], fmt.Sprintf("%s %q token %s", b.op, b.key, short(b.token)))
			}
		}
	}
	for ci, c := range clients {
		if dropped := c.Snapshot().CallbacksDropped; int64(missing[ci]) > dropped {
			v.violate("j", "client %d: %d lost lease(s) never told to OnLeaseLost (%d callback(s) dropped), e.g. %s",
				ci, missing[ci], dropped, strings.Join(examples[ci], "; "))
		}
	}
}
