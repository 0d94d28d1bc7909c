package testutil

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The edge cases of §15, where testutil was checked against released
// servers and once differed from them.

// TestConformanceMaxWaitersBeforeTry: with the waiter cap reached, a try on
// a held key answers error_max_waiters, not timeout.
func TestConformanceMaxWaitersBeforeTry(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_16, V1_10, V2_1} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v, MaxWaiters: 1})
			a := dialSrv(t, srv)
			a.lock("k", "0", 33)
			a.send("sl", "s", "0 2")
			a.expectGrant("ok", 33)
			a.send("sl", "s", "0 2")
			a.expectGrant("ok", 33)
			c := dialSrv(t, srv)
			// Below the cap a try is an ordinary timeout.
			c.send("l", "k", "0")
			c.expect("timeout")
			c.send("sl", "s", "0 2")
			c.expect("timeout")

			b := dialSrv(t, srv)
			b.send("l", "k", "30")
			waitLockWaiters(t, srv, "k", 1)
			b2 := dialSrv(t, srv)
			b2.send("sl", "s", "30 2")
			waitSemWaiters(t, srv, "s", 1)
			c.send("l", "k", "0")
			c.expect("error_max_waiters")
			c.send("sl", "s", "0 2")
			c.expect("error_max_waiters")
			// A free key is granted whatever the cap.
			c.lock("free", "0", 33)
		})
	}
}

// TestConformanceStatsClassifiesByLimit: stats lists a limit-1 semaphore
// as a lock (§15, v1.10). Later servers keep locks and semaphores apart but
// classify the same way (the signal-era server's Stats: limit 1 → locks),
// so a lock and a limit-1 semaphore of one name are two `locks` entries.
func TestConformanceStatsClassifiesByLimit(t *testing.T) {
	t.Parallel()

	t.Run("v1.10", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{Version: V1_10})
		a := dialSrv(t, srv)
		a.send("sl", "one", "0 1 20")
		a.expectGrant("ok", 20)
		a.send("sl", "two", "0 2")
		a.expectGrant("ok", 33)
		a.send("se", "idle-one", "1")
		tok := a.expectGrant("acquired", 33)
		a.send("sr", "idle-one", tok)
		a.expect("ok")

		st := decodeStats(t, statsLine(a))
		require.Len(t, st.Locks, 1, "%+v", st)
		assert.Equal(t, "one", st.Locks[0].Key)
		assert.NotZero(t, st.Locks[0].OwnerConnID)
		assert.InDelta(t, 20, st.Locks[0].LeaseExpiresInS, 5)
		require.Len(t, st.Semaphores, 1)
		assert.Equal(t, "two", st.Semaphores[0].Key)
		require.Len(t, st.IdleLocks, 1)
		assert.Equal(t, "idle-one", st.IdleLocks[0].Key)
		assert.Empty(t, st.IdleSemaphores)
	})

	t.Run("v1.16 and v2.1 by limit too", func(t *testing.T) {
		t.Parallel()
		for _, v := range []Version{V1_16, V2_1} {
			srv := newServer(t, Config{Version: v})
			a := dialSrv(t, srv)
			a.send("sl", "one", "0 1")
			a.expectGrant("ok", 33)
			a.lock("one", "0", 33) // the lock namespace: another key
			a.send("se", "idle-one", "1")
			tok := a.expectGrant("acquired", 33)
			a.send("sr", "idle-one", tok)
			a.expect("ok")
			st := decodeStats(t, statsLine(a))
			require.Len(t, st.Locks, 2, versionNames[v])
			assert.Equal(t, "one", st.Locks[0].Key)
			assert.Equal(t, "one", st.Locks[1].Key)
			assert.Empty(t, st.Semaphores, versionNames[v])
			require.Len(t, st.IdleLocks, 1, versionNames[v])
			assert.Equal(t, "idle-one", st.IdleLocks[0].Key)
			assert.Empty(t, st.IdleSemaphores, versionNames[v])
		}
	})
}

// TestConformanceSecondsOverflow: timeouts and leases whose seconds do not
// fit a duration answer `error` on every version (v1.10 too).
func TestConformanceSecondsOverflow(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_10, V1_16, V2_1} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v})
			c := dialSrv(t, srv)
			tok := c.lock("held", "0", 33)
			for _, r := range [][3]string{
				{"l", "h", "0 9223372037"},
				{"l", "h", "9223372037"},
				{"sl", "h", "9223372037 2"},
				{"sl", "h", "0 2 9223372037"},
				{"e", "h", "9223372037"},
				{"se", "h", "2 9223372037"},
				{"w", "h", "9223372037"},
				{"n", "held", tok + " 9223372037"},
				{"sn", "held", tok + " 9223372037"},
			} {
				assert.Equal(t, "error", c.req(r[0], r[1], r[2]), "%q", r)
			}
			st := srv.Stats()
			assert.Len(t, st.Locks, 1, "nothing but the held lock exists")
			assert.Empty(t, st.Semaphores)
			assert.Empty(t, st.IdleLocks)
			// The largest value that fits is accepted.
			c.lock("max", "0 9223372036", 9223372036)
			c.lock("maxwait", "9223372036", 33)
		})
	}
}

// TestConformanceSweepDropsTwoPhaseState: once the sweeper has removed an
// expired `acquired` slot, `w` finds no two-phase state at all (§15, v1.10;
// the signal-era sweeper does the same); before the sweep it answers
// error_lease_expired.
func TestConformanceSweepDropsTwoPhaseState(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		v     Version
		sweep time.Duration
		want  string
	}{
		{"v1.10 swept", V1_10, 20 * time.Millisecond, "error_not_enqueued"},
		{"v1.10 not yet swept", V1_10, time.Hour, "error_lease_expired"},
		{"v1.16 swept", V1_16, 20 * time.Millisecond, "error_not_enqueued"},
		{"v1.16 not yet swept", V1_16, time.Hour, "error_lease_expired"},
		{"v2.1 swept", V2_1, 20 * time.Millisecond, "error_not_enqueued"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: tc.v, SweepInterval: tc.sweep})
			a := dialSrv(t, srv)
			a.send("e", "k", "1")
			a.expectGrant("acquired", 1)
			if tc.sweep == time.Hour {
				require.Eventually(t, func() bool {
					l, ok := findLock(srv.Stats(), "k")
					return ok && l.LeaseExpiresIn <= 0
				}, ioWait, 10*time.Millisecond, "lease never lapsed")
			} else {
				// The sweep removed the holder: the key is idle.
				require.Eventually(t, func() bool {
					return len(srv.Stats().IdleLocks) == 1
				}, ioWait, 10*time.Millisecond, "lease never swept")
			}
			a.send("w", "k", "0")
			a.expect(tc.want)
			a.send("w", "k", "0")
			a.expect("error_not_enqueued")
			a.lock("k", "0", 33)
		})
	}
}

// TestConformanceAbandonedWaiter covers §8e and §15: v1.10 does not notice
// that a blocked waiter's connection closed. The dead waiter keeps its place
// (and counts against the waiter cap) until its wait ends; a release is
// first granted to it, and only the failed connection's auto-release passes
// the slot on. From v1.15 the waiter is withdrawn as soon as its peer closes.
func TestConformanceAbandonedWaiter(t *testing.T) {
	t.Parallel()

	t.Run("v1.10 grants the dead waiter first", func(t *testing.T) {
		t.Parallel()
		srv, log := auditServer(t, Config{Version: V1_10, MaxWaiters: 2})
		h := dialSrv(t, srv)
		tok := h.lock("k", "0", 33)
		a := dialSrv(t, srv)
		a.send("l", "k", "30")
		waitLockWaiters(t, srv, "k", 1)
		a.close()
		b := dialSrv(t, srv)
		b.send("l", "k", "30")
		waitLockWaiters(t, srv, "k", 2) // a is still queued
		c := dialSrv(t, srv)
		c.send("l", "k", "0")
		c.expect("error_max_waiters") // and still counts against the cap

		h.send("r", "k", tok)
		h.expect("ok")
		tokB := b.expectGrant("ok", 33)
		evs := log.waitKind(t, AuditGrant, tokB)
		checkAudit(t, evs)
		require.Equal(t, []AuditKind{AuditGrant, AuditRelease, AuditGrant, AuditDisconnect, AuditGrant}, kinds(evs), "%s", log)
		phantom := evs[2]
		assert.Equal(t, phantom.Token, evs[3].Token, "the dead waiter's grant is auto-released")
		assert.NotEqual(t, evs[0].Conn, phantom.Conn)
		assert.NotEqual(t, evs[4].Conn, phantom.Conn)
		assert.Equal(t, tokB, evs[4].Token)
	})

	for _, v := range []Version{V1_16, V2_1} {
		t.Run(versionNames[v]+" withdraws the dead waiter", func(t *testing.T) {
			t.Parallel()
			srv, log := auditServer(t, Config{Version: v})
			h := dialSrv(t, srv)
			tok := h.lock("k", "0", 33)
			a := dialSrv(t, srv)
			a.send("l", "k", "30")
			waitLockWaiters(t, srv, "k", 1)
			a.close()
			waitLockWaiters(t, srv, "k", 0)
			b := dialSrv(t, srv)
			b.send("l", "k", "30")
			waitLockWaiters(t, srv, "k", 1)
			h.send("r", "k", tok)
			h.expect("ok")
			tokB := b.expectGrant("ok", 33)
			evs := log.waitKind(t, AuditGrant, tokB)
			checkAudit(t, evs)
			assert.Equal(t, []AuditKind{AuditGrant, AuditRelease, AuditGrant}, kinds(evs), "%s", log)
		})
	}
}
