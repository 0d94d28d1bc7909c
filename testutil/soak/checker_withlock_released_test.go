package soak

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/dflock-sdk/go/testutil"
)

// matchWithLocks must not give a WithLock a grant released before its
// function began. Client 0's WithLock is granted a at
// 5; a drop kills a on the server at 10, before the WithLock's function
// has seen it held (its goroutine is slow to be scheduled). Another
// goroutine of client 0, whose Lock on "k" was waiting, is granted x at 12
// on a fresh connection, but its context ended as the grant arrived: the
// SDK gives x back at once (tryLane / waitAcquire, "the caller gave up
// while the grant was in flight"), released at 14, and no belief shows x.
// The WithLock's function starts at 30 and believes until 38, when it
// notices the kill: a stale belief of a killed lease, bounded by a's
// expiry (1005), which the soak accepts (invariant (a), "outlived a lease
// killed server-side").
//
// matchWithLocks takes the latest unclaimed grant its Client read in
// [call, start]: x, a grant that was *released* before the function began,
// which a correct WithLock never does (it releases only after fn). The
// belief is then "held 24 ms after the server-side lease ended by
// release": an (a) violation, and (b) against anyone granted "k" after 14.
// A grant released before the function's start cannot be the WithLock's
// own; excluding those from the candidates (or preferring one still in
// force at start, or killed by a fault) matches a.
func TestCheckerWithLockNotMatchedWithAGrantReleasedBeforeItsFunctionBegan(t *testing.T) {
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "a", 5, 1005),
		ev(testutil.AuditDisconnect, "k", "a", 10, 1005),
		ev(testutil.AuditGrant, "k", "x", 12, 1012),
		ev(testutil.AuditRelease, "k", "x", 14, 1012),
		ev(testutil.AuditGrant, "k", "b", 20, 1020), // client 1's Lock, held until 60
		ev(testutil.AuditRelease, "k", "b", 60, 1020),
	)
	killedAt10 := func(node int, t time.Time) bool { return t.Equal(at(10)) }
	w := withLockHeld(0, "k", 0, 30, 38, "a", "x")
	other := held("k", "b", 21, 59)
	other.client = 1
	v := newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{w, other}, killedAt10, false)
	assert.Equal(t, "a", w.token, "the WithLock's own grant is a (killed at 10), not x (released at 14, before fn began)")
	assert.Zero(t, v.total(), "%v", v.examples)
	assert.Equal(t, 1, v.inherent, "one belief outlived a lease killed server-side")
}
