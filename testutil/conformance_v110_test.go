package testutil

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests in this file pin V1_10 behaviour that the differential harness
// (testutil/difftest) found against a real dflockd v1.10.0.

// idleOf returns the idle time stats shows for key, which must be idle.
func idleOf(t *testing.T, srv *Server, key string) time.Duration {
	t.Helper()
	st := srv.Stats()
	for _, k := range append(st.IdleLocks, st.IdleSemaphores...) {
		if k.Key == key {
			return k.Idle
		}
	}
	t.Fatalf("%q is not idle: %+v", key, st)
	return 0
}

// On v1.10 a release or renew that finds the key is activity even when its
// token is unknown: idle_s restarts and the GC (strictly older than
// GCMaxIdle) keeps the key. Later servers leave such a key's idle time alone.
func TestConformanceIdleTouchedByFailedRelease(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_10, V1_16, V2_1} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			clk := NewManualClock(clockStart)
			srv := newServer(t, Config{Version: v, Clock: clk, SweepInterval: time.Hour, GCInterval: time.Hour})
			c := dialSrv(t, srv)
			c.send("sl", "a", "0 2")
			tok := c.expectGrant("ok", 33)
			require.Equal(t, "ok", c.req("sr", "a", tok))
			clk.Advance(2 * time.Second)
			require.Equal(t, time.Duration(2*time.Second), idleOf(t, srv, "a"))
			for _, cmd := range []string{"sr", "sn", "r", "n"} {
				require.Equal(t, "error", c.req(cmd, "a", tok), cmd)
			}
			touched := v == V1_10
			if touched {
				assert.Zero(t, idleOf(t, srv, "a"), "a failed release/renew is activity on v1.10")
			} else {
				assert.Equal(t, 2*time.Second, idleOf(t, srv, "a"))
			}

			// Idle for exactly GCMaxIdle (3 s): kept, as GC prunes only keys idle longer.
			clk.Advance(time.Second)
			if touched {
				clk.Advance(2 * time.Second)
			}
			require.Equal(t, 3*time.Second, idleOf(t, srv, "a"))
			srv.locks.gc(3 * time.Second)
			require.Equal(t, "error_limit_mismatch", c.req("sl", "a", "0 3"), "pruned at exactly GCMaxIdle")
			clk.Advance(time.Nanosecond)
			srv.locks.gc(3 * time.Second)
			c.send("sl", "a", "0 3")
			c.expectGrant("ok", 33)
		})
	}
}

// v1.10 releases a lease that has run out but has not been swept yet: `ok`,
// and the slot goes to the next waiter. Renewing it fails on every version,
// and releasing it fails from v1.14 on.
func TestConformanceReleaseOfLapsedLease(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_10, V1_16, V2_1} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			clk := NewManualClock(clockStart)
			srv, log := auditServer(t, Config{Version: v, Clock: clk, SweepInterval: time.Hour})
			a := dialSrv(t, srv)
			b := dialSrv(t, srv)
			tok := a.lock("k", "0 1", 1)
			b.send("l", "k", "30")
			waitLockWaiters(t, srv, "k", 1)
			clk.Advance(time.Second)
			l, _ := findLock(srv.Stats(), "k")
			require.Zero(t, l.LeaseExpiresIn, "lapsed but not swept")
			if v == V1_10 {
				a.send("r", "k", tok)
				a.expect("ok")
				tokB := b.expectGrant("ok", 33)
				evs := log.waitKind(t, AuditGrant, tokB)
				assert.Equal(t, []AuditKind{AuditGrant, AuditRelease, AuditGrant}, kinds(evs))
				assert.True(t, evs[1].Expires.Before(evs[1].Time) || evs[1].Expires.Equal(evs[1].Time),
					"the release carries the lapsed expiry")
				checkAudit(t, evs)
				assert.Equal(t, "error", a.req("r", "k", tok), "released once")
				return
			}
			a.send("r", "k", tok)
			a.expect("error")
			tokB := b.expectGrant("ok", 33)
			evs := log.waitKind(t, AuditGrant, tokB)
			assert.Equal(t, []AuditKind{AuditGrant, AuditExpire, AuditGrant}, kinds(evs))
		})
	}

	t.Run("v1.10 renew", func(t *testing.T) {
		t.Parallel()
		clk := NewManualClock(clockStart)
		srv := newServer(t, Config{Version: V1_10, Clock: clk, SweepInterval: time.Hour})
		a := dialSrv(t, srv)
		tok := a.lock("k", "0 1", 1)
		clk.Advance(time.Second)
		assert.Equal(t, "error", a.req("n", "k", tok))
		assert.Equal(t, "error", a.req("r", "k", tok), "the failed renew evicted it")
	})
}

// A connection the server closes after an error has its locks released
// before the socket closes on v1.10 (later versions close first: see
// TestConformanceCloseBeforeCleanupFromV115): a client that reacts to the
// close finds them handed on. The hub's lock, held by the test, stops the
// connection's cleanup at its start, so the socket must stay open until it
// is let go.
func TestConformanceCleanupBeforeClose(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_10} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v})
			a := dialSrv(t, srv)
			a.lock("k", "0", 33)
			srv.hub.mu.Lock()
			held := true
			defer func() {
				if held {
					srv.hub.mu.Unlock()
				}
			}()
			a.send(strings.Repeat("x", 300))
			a.expect("error")
			a.expectNothing() // not closed while the cleanup has not run
			srv.hub.mu.Unlock()
			held = false
			a.expectEOF(ioWait)
			b := dialSrv(t, srv)
			b.lock("k", "0", 33)
		})
	}
}

// closeWrite half-closes the client side: the server reads EOF, and the
// client can still read what it answers.
func (c *rawConn) closeWrite() {
	c.t.Helper()
	require.NoError(c.t, c.c.(*net.TCPConn).CloseWrite())
}

// An over-long line that the peer ends with EOF instead of a newline is
// still an over-long line: `error` (before auth `error_auth`), then close.
func TestConformanceOverLongLineThenEOF(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_10, V1_16, V2_1} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v})
			c := dialSrv(t, srv)
			c.write("l\na\n" + strings.Repeat("9", 300))
			c.closeWrite()
			c.expect("error")
			c.expectEOF(ioWait)

			// 256 bytes and EOF is no over-long line: the peer is just gone.
			c = dialSrv(t, srv)
			c.write("l\na\n" + strings.Repeat("9", 256))
			c.closeWrite()
			c.expectEOF(ioWait)
		})
		t.Run(versionNames[v]+" before auth", func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v, AuthToken: "s3cret"})
			c := dialSrv(t, srv)
			c.write(strings.Repeat("a", 300))
			c.closeWrite()
			c.expect("error_auth")
			c.expectEOF(ioWait)
		})
	}
}

// A client of an auth-enabled server that goes away before it sends a whole
// request has failed auth: `error_auth` (read by a peer that only
// half-closed), then the pause before the close, during which the
// connection still counts (in stats and against MaxConnections).
func TestConformanceUnauthenticatedEOF(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_10, V1_16, V2_1} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			clk := NewManualClock(clockStart)
			srv := newServer(t, Config{Version: v, AuthToken: "s3cret", Clock: clk, MaxConnections: 1})
			c := dialSrv(t, srv)
			c.closeWrite()
			c.expect("error_auth")
			c.expectNothing() // the pause is on the server's clock
			assert.Equal(t, 1, srv.Stats().Connections)
			full := dialSrv(t, srv) // over MaxConnections
			full.expectEOF(ioWait)
			clk.Advance(authFailDelay)
			c.expectEOF(ioWait)
			waitConns(t, srv, 0)

			// A full close, with half a request sent: the same.
			c = dialSrv(t, srv)
			waitConns(t, srv, 1)
			c.write("auth\n_\n")
			c.close()
			time.Sleep(quiet)
			assert.Equal(t, 1, srv.Stats().Connections, "counted until the pause ends")
			clk.Advance(authFailDelay)
			waitConns(t, srv, 0)
		})
	}
}

// v1.10 stops its lease sweeper and idle-key GC when a drain starts: a lease
// that runs out during the drain is still listed (lease 0) and can still be
// released, and an idle key is not pruned. Later versions keep sweeping.
func TestConformanceDrainStopsJanitor(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_10, V1_16} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			clk := NewManualClock(clockStart)
			srv := newServer(t, Config{Version: v, Clock: clk, ShutdownTimeout: -1,
				SweepInterval: time.Second, GCInterval: time.Second, GCMaxIdle: 2 * time.Second})
			c := dialSrv(t, srv)
			tok := c.lock("k", "0 1", 1)
			itok := c.lock("idle", "0", 33)
			require.Equal(t, "ok", c.req("r", "idle", itok))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.Shutdown(ctx) }()
			defer func() { cancel(); <-done }()
			require.Eventually(t, srv.draining, ioWait, time.Millisecond)

			clk.Advance(5 * time.Second)
			if v != V1_10 {
				require.Eventually(t, func() bool {
					st := srv.Stats()
					// k is idle from its sweep on, so only the old key is collected.
					return len(st.Locks) == 0 && len(st.IdleLocks) == 1 && st.IdleLocks[0].Key == "k"
				}, ioWait, time.Millisecond, "swept and collected during the drain")
				return
			}
			time.Sleep(quiet)
			st := srv.Stats()
			require.Len(t, st.Locks, 1, "the lapsed lease is still listed")
			assert.Zero(t, st.Locks[0].LeaseExpiresIn)
			require.Len(t, st.IdleLocks, 1, "the idle key is not collected")
			assert.Equal(t, "idle", st.IdleLocks[0].Key)
			assert.Equal(t, "ok", c.req("r", "k", tok))
		})
	}
}

// A configured token with surrounding spaces is trimmed from v1.16 on; on
// v1.10 (the -auth-token flag) it is not, and no client can match it, since
// the `auth` argument is trimmed.
func TestConformanceConfiguredTokenWithSpaces(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_10, V1_16, V2_1} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v, AuthToken: " s3cret "})
			want := "ok"
			if v == V1_10 {
				want = "error_auth"
			}
			for _, arg := range []string{"s3cret", " s3cret "} {
				c := dialSrv(t, srv)
				assert.Equal(t, want, c.req("auth", "_", arg), "auth %q", arg)
			}
		})
	}
}

// From v1.15 (the signal-era and v2.x ServeConn) the deferred teardown
// closes the socket first and cleans up (unlisten, auto-release) after; only
// v1.10 cleans up before the close. So on V1_16/V2_1 the peer sees a
// connection the server closes while its auto-release has not yet run. Here
// the AuditDisconnect hook (run inside the cleanup) waits for the client to
// see the close; it must not wait in vain.
func TestConformanceCloseBeforeCleanupFromV115(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_16, V2_1} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			sawEOF := make(chan struct{})
			var hookWaitedInVain atomic.Bool
			srv := newServer(t, Config{Version: v, Audit: func(ev AuditEvent) {
				if ev.Kind != AuditDisconnect {
					return
				}
				select {
				case <-sawEOF:
				case <-time.After(2 * time.Second):
					hookWaitedInVain.Store(true)
				}
			}})
			a := dialSrv(t, srv)
			a.lock("k", "0", 33)
			a.send(strings.Repeat("x", 300))
			a.expect("error")
			start := time.Now()
			a.expectEOF(ioWait)
			close(sawEOF)
			assert.Less(t, time.Since(start), time.Second,
				"the socket closed only after the auto-release (cleanup before close), unlike dflockd v1.15+/v2.x")
			// The auto-release runs after the close: a try may still find
			// the lock held, a wait gets it once the cleanup hands it on.
			b := dialSrv(t, srv)
			b.lock("k", "5", 33)
			assert.False(t, hookWaitedInVain.Load(), "the peer could not see the close while the locks were being released")
		})
	}
}

// v1.10.0 keeps the two-phase state of a queued e/se whose slot was granted
// while nobody waited, even after that slot's lease lapsed and was evicted
// (by the sweeper, or an acquire or enqueue of the key from any connection,
// its own included): the state records no token, and an eviction drops only
// the state whose token it evicts. Its w/sw then takes the granted token and
// answers `ok <stale token> <lease of the e>` although nothing is held; r/n
// with that token answer error, and until the w another e of the key gets
// error_already_enqueued. Before any eviction, the w restarts the lapsed
// lease. Later versions drop the state with the slot (error_not_enqueued;
// before an eviction error_lease_expired). §15; the difftest scenarios
// expiry/queued-* agree with a v1.10.0 binary.
func TestConformanceWaitAfterLapsedQueuedGrant(t *testing.T) {
	t.Parallel()
	type kind struct {
		name                          string
		sem                           bool
		acq, enq, wait, rel, ren, arg string // commands and the acquire/enqueue limit argument prefix
	}
	shapes := []kind{
		{"lock", false, "l", "e", "w", "r", "n", ""},
		{"semaphore", true, "sl", "se", "sw", "sr", "sn", "2 "},
	}
	evictions := []struct {
		name string
		// evict evicts the lapsed slot (if it does) and returns the token
		// of the slot it took for o or b, if any.
		evict func(t *testing.T, srv *Server, k kind, o, b *rawConn) (tok string, byB bool)
	}{
		{"not evicted", func(*testing.T, *Server, kind, *rawConn, *rawConn) (string, bool) { return "", false }},
		{"swept", func(_ *testing.T, srv *Server, _ kind, _, _ *rawConn) (string, bool) {
			srv.locks.sweep()
			return "", false
		}},
		{"acquired by another", func(_ *testing.T, _ *Server, k kind, o, _ *rawConn) (string, bool) {
			o.send(k.acq, "k", "0 "+k.arg)
			return o.expectGrant("ok", 33), false
		}},
		{"enqueued by another", func(_ *testing.T, _ *Server, k kind, o, _ *rawConn) (string, bool) {
			o.send(k.enq, "k", k.arg)
			return o.expectGrant("acquired", 33), false
		}},
		{"acquired by itself", func(_ *testing.T, _ *Server, k kind, _, b *rawConn) (string, bool) {
			b.send(k.acq, "k", "0 "+k.arg)
			return b.expectGrant("ok", 33), true
		}},
	}
	for _, v := range []Version{V1_10, V1_16, V2_1} {
		for _, k := range shapes {
			for _, ev := range evictions {
				t.Run(versionNames[v]+"/"+k.name+"/"+ev.name, func(t *testing.T) {
					t.Parallel()
					clk := NewManualClock(clockStart)
					srv, log := auditServer(t, Config{Version: v, Clock: clk, SweepInterval: time.Hour})
					h, b, o := dialSrv(t, srv), dialSrv(t, srv), dialSrv(t, srv)
					h.send(k.acq, "k", "0 "+k.arg)
					hTok := h.expectGrant("ok", 33)
					if k.sem {
						h.send(k.acq, "k", "0 "+k.arg)
						h.expectGrant("ok", 33)
					}
					b.send(k.enq, "k", k.arg+"1")
					b.expect("queued")
					require.Equal(t, "ok", h.req(k.rel, "k", hTok))
					// The release granted b's place, which nobody waits on.
					evs := log.waitEvents(t, 3+btoi(k.sem)) // h's grant(s) and release, b's grant
					bGrant := evs[len(evs)-1]
					require.Equal(t, AuditGrant, bGrant.Kind)
					bTok := bGrant.Token
					clk.Advance(time.Second) // its 1 s lease lapses
					otherTok, byB := ev.evict(t, srv, k, o, b)
					evicted := ev.name != "not evicted"

					if v != V1_10 {
						want := "error_not_enqueued"
						if !evicted {
							want = "error_lease_expired"
						}
						assert.Equal(t, want, b.req(k.wait, "k", "0"))
						checkAudit(t, log.events())
						return
					}
					if evicted {
						assert.Equal(t, "error_already_enqueued", b.req(k.enq, "k", k.arg), "the state outlives the slot")
					}
					before := len(log.events())
					b.send(k.wait, "k", "0")
					assert.Equal(t, bTok, b.expectGrant("ok", 1), "w answers the token it was granted")
					evs = log.events()
					if !evicted {
						// The lapsed lease, not yet removed, is restarted.
						require.Len(t, evs, before+1)
						assert.Equal(t, AuditRenew, evs[before].Kind)
						assert.Equal(t, bTok, evs[before].Token)
						assert.Equal(t, clk.Now().Add(time.Second), evs[before].Expires)
						assert.Equal(t, "ok", b.req(k.rel, "k", bTok), "still held")
						checkAudit(t, log.events())
						return
					}
					assert.Len(t, evs, before, "a stale token is no event")
					assert.Equal(t, "error", b.req(k.ren, "k", bTok), "not held")
					assert.Equal(t, "error", b.req(k.rel, "k", bTok), "not held")
					assert.Equal(t, "error_not_enqueued", b.req(k.wait, "k", "0"), "w consumed the state")
					// Only the slots granted since are held.
					holders := 0
					if k.sem {
						s, ok := findSem(srv.Stats(), "k")
						require.True(t, ok)
						holders = s.Holders
					} else if l, ok := findLock(srv.Stats(), "k"); ok && l.OwnerConnID != 0 {
						holders = 1
					}
					want := btoi(k.sem) + btoi(otherTok != "")
					assert.Equal(t, want, holders)

					// b's close releases only what b holds: not the stale token.
					before = len(log.events())
					b.close()
					if byB {
						evs = log.waitKind(t, AuditDisconnect, otherTok)
					} else {
						waitConns(t, srv, 2)
						evs = log.events()
					}
					for _, e := range evs[before:] {
						assert.NotEqual(t, bTok, e.Token, "%v of the stale token", e.Kind)
					}
					assert.Len(t, evs, before+btoi(byB))
					if otherTok != "" && !byB {
						assert.Equal(t, "ok", o.req(k.rel, "k", otherTok), "the other client holds its slot")
					}
					checkAudit(t, log.events())
				})
			}
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
