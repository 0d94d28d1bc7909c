package soak

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// Two WithLocks of one Client on one key, whose functions begin in the
// order opposite to their grants. Client 0's WithLock A (called at 0) is
// granted a at 5; a drop kills a on the server at 10 (and every other
// connection of that server). Client 0's WithLock B, called at 11 on a
// fresh connection, is granted x at 12. A's goroutine, slow to be
// scheduled, only gets to fn at 13: its lease was lost already (Track or
// OwnerFailed), but runHeld cancels fn's context from a context.AfterFunc
// goroutine, so fn's first check still finds ctx open and A believes at 13
// (one reading, then it notices). B's function begins at 14.
//
// Taken in the order their functions began, A (candidates a and x) would
// take x, B's grant, and leave B without one: an (a) violation where there
// is only one stale belief of a killed lease (inherent) and one correct
// holder. Matching the WithLocks with a single candidate first (B → x),
// then the others (A → a), gets it right.
func TestCheckerWithLocksOfOneClientWhoseFunctionsBeginOutOfGrantOrder(t *testing.T) {
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "a", 5, 1005),
		ev(testutil.AuditDisconnect, "k", "a", 10, 1005),
		ev(testutil.AuditGrant, "k", "x", 12, 1012),
		ev(testutil.AuditRelease, "k", "x", 80, 1012),
	)
	killedAt10 := func(node int, t time.Time) bool { return t.Equal(at(10)) }
	seen := []string{"a", "x"} // client 0 read both grants
	a := withLockHeld(0, "k", 0, 13, 13, seen...)
	b := withLockHeld(0, "k", 11, 14, 76, seen...)
	v := newVerdict()
	checkLeases(v, []*ledger{lg}, []*belief{a, b}, killedAt10, false)
	assert.Equal(t, "a", a.token, "A's own grant is a (killed at 10)")
	assert.Equal(t, "x", b.token, "B's own grant is x, the only grant in its window")
	assert.Zero(t, v.total(), "%v", v.examples)
}

// The same history with a given-back grant in between: client 0's Lock
// (goroutine C), waiting on "k" too, is granted y at 11 as its context
// ends, and the SDK gives it back at once (released at 11.5, before either
// function began; no belief shows y). Later a fault kills x (70) and B
// observes the loss; the SDK calls OnLeaseLost for a and x, never for y,
// which was released, not lost.
//
// y, released before either function began, is no candidate: matched
// (unambiguously) with B, (j) would look for a hook call for y, never
// made since y was released, not lost.
func TestCheckerLossHooksWithLockMatchedWithAGivenBackGrant(t *testing.T) {
	lg := fakeLedger(0,
		ev(testutil.AuditGrant, "k", "a", 5, 1005),
		ev(testutil.AuditDisconnect, "k", "a", 10, 1005),
		ev(testutil.AuditGrant, "k", "y", 11, 1011),
		testutil.AuditEvent{Time: at(11).Add(500 * time.Microsecond), Kind: testutil.AuditRelease, Key: "k", Token: "y", Expires: at(1011)},
		ev(testutil.AuditGrant, "k", "x", 12, 1012),
		ev(testutil.AuditDisconnect, "k", "x", 70, 1012),
	)
	kills := func(node int, t time.Time) bool { return t.Equal(at(10)) || t.Equal(at(70)) }
	seen := []string{"a", "y", "x"}
	a := withLockHeld(0, "k", 0, 13, 13, seen...)
	lostA := at(14)
	a.lost.Store(&lostA)
	b := withLockHeld(0, "k", 11, 14, 69, seen...)
	lostB := at(71)
	b.lost.Store(&lostB)

	rec := newRecorder()
	rec.beliefs = []*belief{a, b}
	rec.hooked.Store("a", true) // OnLeaseLost: a (killed at 10), x (killed at 70)
	rec.hooked.Store("x", true)
	c, err := dflock.New([]string{"127.0.0.1:1"}) // dials nothing; only Snapshot is used
	require.NoError(t, err)
	defer c.Close()

	v := newVerdict()
	checkLeases(v, []*ledger{lg}, rec.beliefs, kills, false)
	checkLossHooks(v, rec, []*dflock.Client{c})
	assert.NotEqual(t, "y", b.token, "y was released before B's fn began: not B's grant")
	assert.Zero(t, v.counts["j"], "every lease lost was told to OnLeaseLost: %v", v.examples["j"])
}

// (j) covers the losses Release finds too (the server refused the release:
// the lease had run out or its connection closed first), reported through
// lostAtRelease: Release untracks the lease first, so its belief never
// records a loss, only a Release error matching ErrLockLost. Here such a
// release had no hook call: (j) must say so.
func TestCheckerLossHooksCoversLossesFoundByRelease(t *testing.T) {
	b := held("k", "r", 1, 900)
	b.released, b.relErr, b.relRet = true, fmt.Errorf("release: %w", dflock.ErrLockLost), at(1100)
	rec := newRecorder()
	rec.beliefs = []*belief{b}
	c, err := dflock.New([]string{"127.0.0.1:1"})
	require.NoError(t, err)
	defer c.Close()
	v := newVerdict()
	checkLossHooks(v, rec, []*dflock.Client{c})
	assert.Equal(t, 1, v.counts["j"], "a loss found by Release and never told to OnLeaseLost: %v", v.examples)
}
