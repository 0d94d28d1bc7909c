package soak

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/dflock-sdk/go/testutil"
)

// The starvation rule of (a) (checkLeases, starvedLease) for a lease that
// ran out, whatever event removed it. A lease
// of 1 s (margin 100 ms) granted at 0 runs out on the server at 1000. The
// process is unscheduled from 850 to 1060: the client's deadline (900)
// passes unseen, and when it runs again it declares the loss, writes the
// scheduler's best-effort release and destroys the lease's pinned
// wait-pool connection (held.LeaseLost → returnConn(true)); its holder
// last saw the lease held at 1070, 10 ms of scheduled time after the
// pause. The server removes the lapsed lease when it sees the first of
// the three: its sweeper (every 250 ms, also late after the pause) or the
// release (both AuditExpire), or the connection's close — AuditDisconnect
// at 1080 with Expires 1000, which the ledger folds into an end at 1000,
// the expiry.
//
// With AuditExpire the belief is excused as starved; with AuditDisconnect
// (or AuditStop) of a lease that had already run out, the same belief is a
// violation, because checkLeases applies the starvation excuse only when
// g.endKind == AuditExpire. The server ended the lease by running out in
// both; which event removed it afterwards says nothing about the client.
// Excusing by "the lease had run out before its end event" (the ledger
// can record ev.Expires ≤ ev.Time) treats both alike.
func TestCheckerStarvedBeliefExcusedWhateverEventRemovedTheLapsedLease(t *testing.T) {
	for _, end := range []testutil.AuditKind{testutil.AuditExpire, testutil.AuditDisconnect} {
		lg := fakeLedger(0, ev(testutil.AuditGrant, "k", "a", 0, 1000), ev(end, "k", "a", 1080, 1000))
		v := newVerdict()
		v.paused = pausesAt(850, 1060)
		checkLeases(v, []*ledger{lg}, []*belief{held("k", "a", 1, 1070)}, noKills, false)
		assert.Zero(t, v.total(), "lease that ran out at 1000, removed by %s at 1080: %v", end, v.examples)
		assert.Equal(t, 1, v.starved["a"], "removed by %s", end)
	}
}
