package testutil

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// auditLog records a Server's audit events for a test.
type auditLog struct {
	mu  sync.Mutex
	evs []AuditEvent
}

func (l *auditLog) record(ev AuditEvent) {
	l.mu.Lock()
	l.evs = append(l.evs, ev)
	l.mu.Unlock()
}

func (l *auditLog) events() []AuditEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]AuditEvent(nil), l.evs...)
}

// waitEvents waits until at least n events were recorded and returns them all.
func (l *auditLog) waitEvents(t testing.TB, n int) []AuditEvent {
	t.Helper()
	require.Eventually(t, func() bool { return len(l.events()) >= n }, ioWait, 2*time.Millisecond,
		"never saw %d audit events; have %s", n, l)
	return l.events()
}

// waitKind waits for an event of kind k for token tok and returns all events.
func (l *auditLog) waitKind(t testing.TB, k AuditKind, tok string) []AuditEvent {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, ev := range l.events() {
			if ev.Kind == k && ev.Token == tok {
				return true
			}
		}
		return false
	}, ioWait, 2*time.Millisecond, "never saw %v of %s; have %s", k, tok, l)
	return l.events()
}

func (l *auditLog) String() string {
	var b []byte
	for _, ev := range l.events() {
		b = fmt.Appendf(b, "\n\t%v %s %.8s conn=%d sem=%v/%d", ev.Kind, ev.Key, ev.Token, ev.Conn, ev.Semaphore, ev.Limit)
	}
	return string(b)
}

// auditServer starts a server whose audit events go to the returned log.
func auditServer(t testing.TB, cfg Config) (*Server, *auditLog) {
	t.Helper()
	log := &auditLog{}
	cfg.Audit = log.record
	return newServer(t, cfg), log
}

// kinds lists the kinds of evs, for compact assertions.
func kinds(evs []AuditEvent) []AuditKind {
	out := make([]AuditKind, len(evs))
	for i, ev := range evs {
		out[i] = ev.Kind
	}
	return out
}

// checkAudit checks what every audit log must satisfy: non-decreasing times;
// each token begins with one Grant, then Renews, then at most one end event
// as its last; and no key ever has more live holders than its limit.
func checkAudit(t testing.TB, evs []AuditEvent) {
	t.Helper()
	type life struct{ granted, ended bool }
	lives := map[string]*life{}
	live := map[string]int{} // per Semaphore+Key
	for i, ev := range evs {
		if i > 0 {
			assert.False(t, ev.Time.Before(evs[i-1].Time), "event %d (%v) earlier than the one before", i, ev.Kind)
		}
		l := lives[ev.Token]
		res := fmt.Sprint(ev.Semaphore, "/", ev.Key)
		limit := max(ev.Limit, 1)
		switch ev.Kind {
		case AuditGrant:
			if !assert.Nil(t, l, "event %d: second grant of %s", i, ev.Token) {
				continue
			}
			lives[ev.Token] = &life{granted: true}
			live[res]++
			assert.LessOrEqual(t, live[res], limit, "event %d: %s over its limit", i, res)
			assert.Greater(t, ev.Conn, uint64(0))
			assert.True(t, ev.Expires.After(ev.Time), "event %d: grant expires at once", i)
		case AuditRenew:
			if assert.NotNil(t, l, "event %d: renew before grant", i) {
				assert.False(t, l.ended, "event %d: renew after end", i)
			}
		case AuditRelease, AuditExpire, AuditDisconnect, AuditStop:
			if assert.NotNil(t, l, "event %d: end before grant", i) {
				assert.False(t, l.ended, "event %d: second end (%v) of %s", i, ev.Kind, ev.Token)
				l.ended = true
				live[res]--
			}
			if ev.Kind == AuditExpire {
				assert.False(t, ev.Time.Before(ev.Expires), "event %d: expired before its lease ran out", i)
			}
		default:
			t.Errorf("event %d: unknown kind %v", i, ev.Kind)
		}
	}
}

func TestAuditKindString(t *testing.T) {
	t.Parallel()
	want := map[AuditKind]string{
		AuditGrant: "grant", AuditRenew: "renew", AuditRelease: "release", AuditExpire: "expire",
		AuditDisconnect: "disconnect", AuditStop: "stop", 0: "AuditKind(0)", 99: "AuditKind(99)",
	}
	for k, s := range want {
		assert.Equal(t, s, k.String())
	}
}

func TestAuditGrantRenewRelease(t *testing.T) {
	t.Parallel()
	srv, log := auditServer(t, Config{})
	a := dialSrv(t, srv)
	before := time.Now()
	tok := a.lock("k", "0 7", 7)
	owner, ok := findLock(srv.Stats(), "k")
	require.True(t, ok)
	a.send("n", "k", tok+" 9")
	a.expect("ok 9")
	a.send("r", "k", tok)
	a.expect("ok")
	after := time.Now()

	evs := log.waitEvents(t, 3)
	require.Equal(t, []AuditKind{AuditGrant, AuditRenew, AuditRelease}, kinds(evs))
	for _, ev := range evs {
		assert.Equal(t, "k", ev.Key)
		assert.Equal(t, tok, ev.Token)
		assert.False(t, ev.Semaphore)
		assert.Zero(t, ev.Limit)
		assert.Equal(t, owner.OwnerConnID, ev.Conn)
		assert.False(t, ev.Time.Before(before) || ev.Time.After(after), "time outside the exchange")
	}
	assert.Equal(t, evs[0].Time.Add(7*time.Second), evs[0].Expires)
	assert.Equal(t, evs[1].Time.Add(9*time.Second), evs[1].Expires)
	assert.Equal(t, evs[1].Expires, evs[2].Expires, "an end event carries the expiry then in force")
	checkAudit(t, evs)
}

func TestAuditExpiry(t *testing.T) {
	t.Parallel()

	t.Run("by the sweeper, before the next grant", func(t *testing.T) {
		t.Parallel()
		srv, log := auditServer(t, Config{SweepInterval: 50 * time.Millisecond})
		a := dialSrv(t, srv)
		b := dialSrv(t, srv)
		tok := a.lock("k", "0 1", 1)
		b.send("l", "k", "30")
		tokB := b.expectGrant("ok", 33)
		evs := log.waitKind(t, AuditGrant, tokB)
		require.Equal(t, []AuditKind{AuditGrant, AuditExpire, AuditGrant}, kinds(evs))
		assert.Equal(t, tok, evs[1].Token)
		assert.Equal(t, evs[0].Expires, evs[1].Expires)
		checkAudit(t, evs)
	})

	t.Run("on the spot by a late release", func(t *testing.T) {
		t.Parallel()
		srv, log := auditServer(t, Config{SweepInterval: time.Hour})
		a := dialSrv(t, srv)
		tok := a.lock("k", "0 1", 1)
		require.Eventually(t, func() bool {
			l, ok := findLock(srv.Stats(), "k")
			return ok && l.LeaseExpiresIn <= 0
		}, ioWait, 10*time.Millisecond)
		a.send("r", "k", tok)
		a.expect("error")
		a.send("r", "k", tok)
		a.expect("error")
		evs := log.waitEvents(t, 2)
		assert.Equal(t, []AuditKind{AuditGrant, AuditExpire}, kinds(evs), "a failed release of a lapsed lease is its expiry")
		checkAudit(t, evs)
	})

	t.Run("on the spot by a late renew", func(t *testing.T) {
		t.Parallel()
		srv, log := auditServer(t, Config{SweepInterval: time.Hour})
		a := dialSrv(t, srv)
		tok := a.lock("k", "0 1", 1)
		require.Eventually(t, func() bool {
			l, ok := findLock(srv.Stats(), "k")
			return ok && l.LeaseExpiresIn <= 0
		}, ioWait, 10*time.Millisecond)
		a.send("n", "k", tok)
		a.expect("error")
		evs := log.waitEvents(t, 2)
		assert.Equal(t, []AuditKind{AuditGrant, AuditExpire}, kinds(evs))
		checkAudit(t, evs)
	})
}

func TestAuditDisconnectHandsOn(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_16, V1_10, V2_1} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv, log := auditServer(t, Config{Version: v})
			a := dialSrv(t, srv)
			tok := a.lock("k", "0", 33)
			a.send("sl", "s", "0 2")
			stok := a.expectGrant("ok", 33)
			b := dialSrv(t, srv)
			b.send("l", "k", "30")
			waitLockWaiters(t, srv, "k", 1)
			a.close()
			tokB := b.expectGrant("ok", 33)
			evs := log.waitEvents(t, 5)
			checkAudit(t, evs)
			at := map[string]int{}
			for i, ev := range evs[2:] {
				at[ev.Kind.String()+" "+ev.Token] = i + 2
			}
			require.Len(t, at, 3, "%s", log)
			assert.Contains(t, at, "disconnect "+tok)
			assert.Contains(t, at, "disconnect "+stok)
			assert.Greater(t, at["grant "+tokB], at["disconnect "+tok], "the waiter is granted after the disconnect")
			assert.NotEqual(t, evs[0].Conn, evs[at["grant "+tokB]].Conn)
		})
	}
}

func TestAuditStopEndsEveryLeaseAndRestartKeepsReporting(t *testing.T) {
	t.Parallel()
	srv, log := auditServer(t, Config{})
	a := dialSrv(t, srv)
	tok := a.lock("k", "0", 33)
	a.send("sl", "s", "0 3")
	stok := a.expectGrant("ok", 33)
	b := dialSrv(t, srv)
	b.send("l", "k", "30")
	waitLockWaiters(t, srv, "k", 1)

	require.NoError(t, srv.Stop())
	evs := log.waitEvents(t, 4)
	assert.Equal(t, []AuditKind{AuditGrant, AuditGrant, AuditStop, AuditStop}, kinds(evs),
		"a stop ends the leases at once and hands nothing to the waiter: %s", log)
	assert.ElementsMatch(t, []string{tok, stok}, []string{evs[2].Token, evs[3].Token})
	assert.Equal(t, evs[2].Time, evs[3].Time, "one instant")
	b.expectEOF(ioWait)

	require.NoError(t, srv.Restart())
	c := dialSrv(t, srv)
	tokC := c.lock("k", "0", 33) // the restarted server has no state
	require.NoError(t, srv.Close())
	evs = log.waitKind(t, AuditStop, tokC)
	assert.Equal(t, []AuditKind{AuditGrant, AuditStop}, kinds(evs[4:]))
	checkAudit(t, evs)
	n := len(log.events())
	require.NoError(t, srv.Close())
	assert.Len(t, log.events(), n, "nothing after Close")
}

func TestAuditShutdownReportsDisconnects(t *testing.T) {
	t.Parallel()
	srv, log := auditServer(t, Config{})
	a := dialSrv(t, srv)
	tok := a.lock("k", "0", 33)
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(t.Context()) }()
	require.Eventually(t, srv.draining, ioWait, 2*time.Millisecond)
	a.send("n", "k", tok)
	a.expect("error_draining")
	require.NoError(t, <-done)
	evs := log.events()
	assert.Equal(t, []AuditKind{AuditGrant, AuditDisconnect}, kinds(evs))
	checkAudit(t, evs)
}

func TestAuditTwoPhase(t *testing.T) {
	t.Parallel()

	t.Run("acquired, then w restarts the lease", func(t *testing.T) {
		t.Parallel()
		srv, log := auditServer(t, Config{})
		a := dialSrv(t, srv)
		a.send("e", "k", "5")
		tok := a.expectGrant("acquired", 5)
		a.send("w", "k", "0")
		a.expectGrant("ok", 5)
		a.send("r", "k", tok)
		a.expect("ok")
		evs := log.waitEvents(t, 3)
		require.Equal(t, []AuditKind{AuditGrant, AuditRenew, AuditRelease}, kinds(evs))
		assert.Equal(t, evs[1].Time.Add(5*time.Second), evs[1].Expires)
		checkAudit(t, evs)
	})

	t.Run("queued, granted before w", func(t *testing.T) {
		t.Parallel()
		srv, log := auditServer(t, Config{})
		h := dialSrv(t, srv)
		htok := h.lock("k", "0", 33)
		b := dialSrv(t, srv)
		b.send("e", "k", "7")
		b.expect("queued")
		h.send("r", "k", htok)
		h.expect("ok")
		evs := log.waitEvents(t, 3)
		require.Equal(t, []AuditKind{AuditGrant, AuditRelease, AuditGrant}, kinds(evs),
			"the slot is granted to the queued e at the release")
		b.send("w", "k", "0")
		tok := b.expectGrant("ok", 7)
		assert.Equal(t, tok, evs[2].Token)
		assert.NotEqual(t, evs[0].Conn, evs[2].Conn)
		evs = log.waitEvents(t, 4)
		assert.Equal(t, AuditRenew, evs[3].Kind, "w restarts the lease")
		checkAudit(t, evs)
	})

	t.Run("queued, w parked, granted", func(t *testing.T) {
		t.Parallel()
		srv, log := auditServer(t, Config{})
		h := dialSrv(t, srv)
		htok := h.lock("k", "0", 33)
		b := dialSrv(t, srv)
		b.send("e", "k", "")
		b.expect("queued")
		b.send("w", "k", "30")
		b.expectNothing()
		h.send("r", "k", htok)
		h.expect("ok")
		tok := b.expectGrant("ok", 33)
		evs := log.waitEvents(t, 3)
		require.Equal(t, []AuditKind{AuditGrant, AuditRelease, AuditGrant}, kinds(evs))
		assert.Equal(t, tok, evs[2].Token)
		checkAudit(t, evs)
	})

	t.Run("acquired, lapsed before w", func(t *testing.T) {
		t.Parallel()
		srv, log := auditServer(t, Config{SweepInterval: time.Hour})
		a := dialSrv(t, srv)
		a.send("e", "k", "1")
		a.expectGrant("acquired", 1)
		require.Eventually(t, func() bool {
			l, ok := findLock(srv.Stats(), "k")
			return ok && l.LeaseExpiresIn <= 0
		}, ioWait, 10*time.Millisecond)
		a.send("w", "k", "0")
		a.expect("error_lease_expired")
		evs := log.waitEvents(t, 2)
		assert.Equal(t, []AuditKind{AuditGrant, AuditExpire}, kinds(evs))
		checkAudit(t, evs)
	})
}

func TestAuditSemaphores(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_16, V1_10} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv, log := auditServer(t, Config{Version: v})
			a := dialSrv(t, srv)
			var toks []string
			for range 2 {
				a.send("sl", "s", "0 2 9")
				toks = append(toks, a.expectGrant("ok", 9))
			}
			b := dialSrv(t, srv)
			b.send("se", "s", "2")
			b.expect("queued")
			a.send("sr", "s", toks[0])
			a.expect("ok")
			b.send("sw", "s", "0")
			tokB := b.expectGrant("ok", 33)
			// A limit-1 semaphore is still reported as one, also where it
			// shares the lock namespace.
			a.send("sl", "one", "0 1")
			one := a.expectGrant("ok", 33)
			evs := log.waitKind(t, AuditGrant, one)
			require.Equal(t, []AuditKind{AuditGrant, AuditGrant, AuditRelease, AuditGrant, AuditRenew, AuditGrant}, kinds(evs))
			for _, ev := range evs[:5] {
				assert.Equal(t, "s", ev.Key)
				assert.True(t, ev.Semaphore)
				assert.Equal(t, 2, ev.Limit)
			}
			assert.Equal(t, tokB, evs[3].Token)
			assert.True(t, evs[5].Semaphore)
			assert.Equal(t, 1, evs[5].Limit)
			checkAudit(t, evs)
		})
	}
}

// TestAuditManyClientsKeepTheInvariants churns one semaphore from many
// connections with every way a lease can end, and checks the whole log.
func TestAuditManyClientsKeepTheInvariants(t *testing.T) {
	t.Parallel()
	srv, log := auditServer(t, Config{SweepInterval: 20 * time.Millisecond})
	const clients, rounds = 6, 12
	// Parallel subtests, not goroutines: the raw-connection helpers
	// require, which must run on the test's own goroutine. The group
	// returns when all have.
	t.Run("clients", func(t *testing.T) {
		for i := range clients {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				c := dialSrv(t, srv)
				defer c.close() // auto-releases what is still held
				for j := range rounds {
					line := c.req("sl", "s", "5 2 1")
					if line == "timeout" {
						continue
					}
					tok := parseGrant(t, line, "ok", 1)
					switch {
					case j == rounds-1:
						// left to the disconnect
					case j%3 == 2 && i == 0:
						// left to expire
					case j%3 == 1:
						c.send("sn", "s", tok+" 1")
						c.readLine() // ok, or error if it lapsed meanwhile
						fallthrough
					default:
						c.send("sr", "s", tok)
						c.readLine()
					}
				}
			})
		}
	})
	waitConns(t, srv, 0)
	require.NoError(t, srv.Close())
	evs := log.events()
	checkAudit(t, evs)
	ended := map[string]bool{}
	seen := map[AuditKind]bool{}
	for _, ev := range evs {
		seen[ev.Kind] = true
		if ev.Kind != AuditGrant && ev.Kind != AuditRenew {
			ended[ev.Token] = true
		}
	}
	for _, ev := range evs {
		if ev.Kind == AuditGrant {
			assert.True(t, ended[ev.Token], "grant %s never ended", ev.Token)
		}
	}
	for _, k := range []AuditKind{AuditGrant, AuditRenew, AuditRelease, AuditExpire, AuditDisconnect} {
		assert.True(t, seen[k], "no %v event", k)
	}
}
