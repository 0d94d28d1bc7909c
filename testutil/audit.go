package testutil

import (
	"strconv"
	"time"
)

// AuditKind is what happened to a lease in an AuditEvent.
type AuditKind uint8

// Every lease is reported by one AuditGrant, any number of AuditRenew, and
// exactly one of the end kinds (AuditRelease, AuditExpire, AuditDisconnect,
// AuditStop), which is reported at the moment the slot stops being held and
// so before the slot's next holder is granted.
const (
	// AuditGrant: a lease began: l/sl granted at once or after waiting, e/se
	// answered `acquired`, or a queued e/se was granted its slot (before or
	// while its w/sw waits).
	AuditGrant AuditKind = iota + 1
	// AuditRenew: the lease's expiry moved: n/sn accepted, or a w/sw returned
	// a slot granted to its e/se and restarted the lease (§6.4). On V1_10
	// that includes a queued e/se's slot whose lease ran out but was not yet
	// removed: v1.10.0's w restarts it. A V1_10 w that returns the token of
	// a slot already removed (a stale token, §15) reports nothing.
	AuditRenew
	// AuditRelease: r/sr accepted. On V1_10 that includes the release of a
	// lease that has run out but was not yet removed (Expires is then at or
	// before Time): v1.10 does not check the expiry on release.
	AuditRelease
	// AuditExpire: the lease ran out and the server removed it, by its sweeper
	// or on the spot (acquire, renew, release — not on V1_10 — or w of a
	// lapsed lease — on V1_10 only one its e/se answered `acquired` for).
	AuditExpire
	// AuditDisconnect: auto-released because its acquiring connection closed.
	AuditDisconnect
	// AuditStop: the server stopped (Stop or Close, including the forced end
	// of Shutdown) and its lock state is gone. As with a crashed server, a
	// grant decided just before may still reach its client afterwards.
	AuditStop
)

var auditKindNames = [...]string{
	AuditGrant:      "grant",
	AuditRenew:      "renew",
	AuditRelease:    "release",
	AuditExpire:     "expire",
	AuditDisconnect: "disconnect",
	AuditStop:       "stop",
}

func (k AuditKind) String() string {
	if int(k) < len(auditKindNames) && auditKindNames[k] != "" {
		return auditKindNames[k]
	}
	return "AuditKind(" + strconv.Itoa(int(k)) + ")"
}

// AuditEvent is the server's own record of one lease event (Config.Audit).
// Times come from the server process's clock, which in a test is the
// client's clock too, and keep their monotonic reading.
type AuditEvent struct {
	// Time is when the server applied the event. Events of one Server are
	// reported in the order applied, with non-decreasing Time.
	Time  time.Time
	Kind  AuditKind
	Key   string
	Token string
	// Semaphore is true for a slot granted by sl/se, false for l/e (also on
	// V1_10, where both share one namespace).
	Semaphore bool
	// Limit is the semaphore's limit; 0 for a lock.
	Limit int
	// Expires is the server-side lease expiry in force after the event: for
	// Grant and Renew the new one, for the end kinds the one in force when
	// the lease ended (for Expire, when it ran out: at or before Time).
	Expires time.Time
	// Conn is the id of the connection that acquired the slot, the one whose
	// close auto-releases it (the owner_conn_id of `stats`).
	Conn uint64
}
