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
func checkReleases(v *verdict, ledgers []*ledger, beliefs []*belief) {
	for _, b := range beliefs {
		if b.relRet.IsZero() || b.relErr != nil || b.token == "" || b.node < 0 || b.node >= len(ledgers) {
			continue
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
// cause. One reported lost while no fault touched its server from a little
// before its grant to the report, and the process was not measurably
// starved meanwhile, means the client failed to keep it (renewals not
// sent, or not in time).
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
		if v.paused != nil {
			if total, _ := v.paused(from, *lost); total > 0 {
				continue
			}
		}
		why := ""
		if e := b.lostErr.Load(); e != nil {
			why = *e
		}
		v.violate("h", "%s %q token %s (client %d, server %d): lost at %s with no fault on its server since %s and no scheduling delay: %s",
			b.op, b.key, short(b.token), b.client, b.node, stamp(*lost), stamp(from), why)
	}
}

// faultedDuring is a faultedFunc over the faults injected so far.
func (f *faulter) faultedDuring(node int, from, to time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.windows {
		end := w.end
		if w.kind == faultRestart {
			end = w.start.Add(w.dur) // the whole outage
		}
		if w.node == node && !end.Before(from) && !w.start.After(to) {
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
	})
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
// waits for queued callbacks.
func checkLossHooks(v *verdict, rec *recorder, clients []*dflock.Client) {
	rec.mu.Lock()
	beliefs := rec.beliefs
	rec.mu.Unlock()
	missing := make([]int, len(clients))
	examples := make([][]string, len(clients))
	for _, b := range beliefs {
		if b.lost.Load() == nil || b.token == "" {
			continue // WithLock tokens are known only once matched (checkLeases)
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
