package soak

import (
	"fmt"
	"sync"
	"time"

	"github.com/dflock-sdk/go/testutil"
)

// grant is one server-side lease, as the server's audit log tells it.
type grant struct {
	node      int
	key       string
	token     string
	sem       bool
	limit     int
	conn      uint64
	start     time.Time
	expires   time.Time     // the expiry in force (last Grant/Renew)
	ttl       time.Duration // the lease of the last Grant/Renew
	end       time.Time     // zero while the lease is held
	endKind   testutil.AuditKind
	ranOut    bool // it had run out before the event that ended it (end is the expiry)
	renewals  int
	lateEvent bool // an event arrived for it after its end
}

// held reports whether the lease had not ended at t.
func (g *grant) ended() bool { return !g.end.IsZero() }

// ledger is one server's audit log, folded into grant intervals as events
// arrive. record is the server's Audit callback: it runs under the server's
// lock table, so it only updates maps.
type ledger struct {
	node int

	mu        sync.Mutex
	byToken   map[string]*grant
	byKey     map[string][]*grant // in grant order
	count     int
	events    [testutil.AuditStop + 1]int
	anomalies []string
}

func newLedger(node int) *ledger {
	return &ledger{node: node, byToken: make(map[string]*grant), byKey: make(map[string][]*grant)}
}

func (l *ledger) record(ev testutil.AuditEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if int(ev.Kind) < len(l.events) {
		l.events[ev.Kind]++
	}
	g := l.byToken[ev.Token]
	if ev.Kind == testutil.AuditGrant {
		if g != nil {
			l.anomaly("token %s of %q granted twice", ev.Token, ev.Key)
			return
		}
		g = &grant{node: l.node, key: ev.Key, token: ev.Token, sem: ev.Semaphore, limit: ev.Limit,
			conn: ev.Conn, start: ev.Time, expires: ev.Expires, ttl: ev.Expires.Sub(ev.Time)}
		l.byToken[ev.Token] = g
		l.byKey[ev.Key] = append(l.byKey[ev.Key], g)
		l.count++
		return
	}
	switch {
	case g == nil:
		l.anomaly("%s of unknown token %s of %q", ev.Kind, ev.Token, ev.Key)
		return
	case g.ended():
		g.lateEvent = true
		l.anomaly("%s of %q token %s after its %s", ev.Kind, ev.Key, ev.Token, g.endKind)
		return
	}
	if ev.Kind == testutil.AuditRenew {
		g.expires, g.ttl = ev.Expires, ev.Expires.Sub(ev.Time)
		g.renewals++
		return
	}
	// The lease ended at the event, or earlier if it had already run out
	// (an expired lease removed by the sweeper, or when next touched).
	end := ev.Time
	if !ev.Expires.IsZero() && ev.Expires.Before(end) {
		end = ev.Expires
		g.ranOut = true
	}
	g.end, g.endKind = end, ev.Kind
}

func (l *ledger) anomaly(format string, args ...any) {
	if len(l.anomalies) < 20 {
		l.anomalies = append(l.anomalies, fmt.Sprintf("server %d: ", l.node)+fmt.Sprintf(format, args...))
	} else if len(l.anomalies) == 20 {
		l.anomalies = append(l.anomalies, "…")
	}
}

// find returns the grant of token, or nil.
func (l *ledger) find(token string) *grant {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byToken[token]
}

// between returns the grants of key that began in [from, to].
func (l *ledger) between(key string, from, to time.Time) []*grant {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*grant
	for _, g := range l.byKey[key] {
		if !g.start.Before(from) && !g.start.After(to) {
			out = append(out, g)
		}
	}
	return out
}

// open returns the grants that have not ended.
func (l *ledger) open() []*grant {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*grant
	for _, gs := range l.byKey {
		for _, g := range gs {
			if !g.ended() {
				out = append(out, g)
			}
		}
	}
	return out
}

// snapshot copies the grants of every key, in grant order.
func (l *ledger) snapshot() map[string][]grant {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string][]grant, len(l.byKey))
	for k, gs := range l.byKey {
		cp := make([]grant, len(gs))
		for i, g := range gs {
			cp[i] = *g
		}
		out[k] = cp
	}
	return out
}
