package dflock

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/renew"
)

// Snapshot is the Client's local view of itself, from Client.Snapshot:
// counters since New and gauges as of the call. Unlike Stats it asks no
// server anything.
type Snapshot struct {
	// Servers holds one entry per server, in the order given to New.
	Servers []ServerSnapshot
	// Acquired, Released and Lost count leases since New, and Held the
	// leases held now, as in ClientStats.
	Acquired, Released, Lost int64
	Held                     int
	// SignalsDropped counts signals dropped because a subscription's
	// buffer was full, and queue-group jobs the server had queued for a
	// member that left with no other member in the Client to take them
	// (docs/signals.md, Queue groups), what the subscription of a Listen
	// that failed had taken meanwhile, and what a closed subscription held
	// beyond what its channel still offers (a queue-group member's jobs
	// only if no other member was left to take them: Subscription.Close);
	// SignalGaps the gaps reported to subscriptions.
	SignalsDropped, SignalGaps int64
	// CallbacksDropped counts log records and hook calls dropped because
	// too many were waiting, or Close stopped waiting for them (see
	// ClientStats.CallbacksDropped).
	CallbacksDropped int64
}

// ServerSnapshot is one server in a Snapshot.
type ServerSnapshot struct {
	Addr string
	// Up is false while the server is known to be down and no lane
	// connection to it is healthy: calls fail fast with
	// ErrServerUnavailable. A failed dial marks the server down even while
	// a lane connection lives (Up stays true): calls that need a new
	// connection (a contended Lock's) then fail fast too, until the
	// background probe's next dial succeeds. Since is
	// when the current state began: for Up, the first successful dial after
	// the server was last down, or the first that reached it but had its
	// auth token refused (zero while no dial has reached it yet); for
	// down, the failed dial that found it down. After Close, Up and Since
	// stay as they were (a closed Client does not report its servers down).
	// A server not dialled yet is Up with a zero Since: Up means "not known
	// to be down", so a health check run before the first call cannot tell
	// an unreachable server from a healthy one (Since.IsZero says it has
	// not been reached yet).
	Up    bool
	Since time.Time
	// AuthRefused is true from the moment the server refuses a dial's auth
	// (see WithAuthToken) until a dial succeeds: meanwhile calls that need a
	// new connection to it fail with ErrAuth, while Up stays true (the
	// server answers). Connections already open keep serving.
	AuthRefused bool
	// Conns counts the server's open connections by role.
	Conns ConnCounts
	// Dials counts successful dials (TCP, TLS and auth); DialFailures the
	// others. Calls failed fast, without a dial (the server down, or an
	// auth refusal's hold: see ErrAuth), count in neither.
	Dials, DialFailures int64
	// WaitsInFlight counts acquires (and ticket waits) on the wait path
	// now: getting a wait-pool connection or waiting on one.
	WaitsInFlight int
	// LeasesHeld counts the leases held on the server now.
	LeasesHeld int
	// RenewalsSent counts renewals the scheduler sent to the server;
	// Renewed those confirmed, RenewalsRefused those the server refused
	// (each one loses its lease, but for a rare renewal that crossed its
	// lease's Release on the way to the server) and RenewalsUnanswered
	// those whose connection broke before the answer.
	RenewalsSent, Renewed, RenewalsRefused, RenewalsUnanswered int64
	// Releases counts leases released (by Release, WithLock, Cancel or
	// Close); Losses leases lost while held, and those that Release found
	// lost.
	Releases, Losses int64
}

// ConnCounts counts a server's open connections by role. The roles are
// disjoint: their sum is the server's open connections (a Client.Stats
// query connection, short-lived, is not counted).
type ConnCounts struct {
	// Lane: control-lane connections.
	Lane int
	// Idle: wait-pool connections waiting to be used.
	Idle int
	// InUse: wait-pool connections out of the pool and owning no lease
	// (a blocking acquire waiting, a queued ticket).
	InUse int
	// Pinned: wait-pool connections that own a lease (granted after
	// waiting, or by a ticket).
	Pinned int
	// Listener: signal listener connections, and the connection that
	// carries Emits over 256 bytes (one per server, once used).
	Listener int
	// Lingering: lane or wait-pool connections the keepalive gave up on,
	// ticket connections whose withdrawal of the queued place the server
	// left unanswered in time, and those of a Lock or Semaphore that timed
	// out whose answer the server left unanswered for
	// DefaultReleaseTimeout, kept open (at most a minute) for the
	// replies to requests they had written, so that a grant a stalled
	// server makes when it resumes is released rather than left to a
	// closed socket; and wait-pool connections half-closed to withdraw a
	// cancelled wait, read until the server closes its side (at most 2 s)
	// for a grant that crossed the withdrawal (see docs/leases.md). They
	// are outside the caps on the other counts; at most WithMaxConnsPerServer
	// + WithLaneConns of them linger per server at once, and a connection
	// given up on beyond that is closed at once instead.
	Lingering int
}

// serverObs is what the Client counts per server for Snapshot; the pool
// and the renewal scheduler count the rest.
type serverObs struct {
	waits atomic.Int64 // acquires waiting on a wait-pool connection now
	// tracked minus released: the leases held now, once the losses are
	// taken off. Losses are renew's count (renew.Counters.Lost), which the
	// scheduler makes before a lost lease's Done closes, so that whoever
	// wakes on Done finds the loss in Snapshot already; LeaseLost, which
	// runs later on the notifier goroutine, counts nothing.
	held     atomic.Int64
	released atomic.Int64
	renew    renew.Counters // the scheduler's, for the server's leases
}

// Snapshot returns the Client's local figures: no network I/O, never
// fails, cheap enough to call every second (a metrics scraper's pace). It
// works after Close too, returning the final figures.
//
// Use Snapshot for metrics and health checks; Stats adds what each server
// reports about itself, at the price of a connection and a round trip to
// every server.
func (c *Client) Snapshot() Snapshot {
	s := Snapshot{
		Servers:          make([]ServerSnapshot, len(c.servers)),
		SignalsDropped:   c.stats.sigDropped.Load(),
		SignalGaps:       c.stats.sigGaps.Load(),
		CallbacksDropped: c.disp.dropped.Load(),
	}
	for i, srv := range c.servers {
		ps := srv.pool.Stats()
		o := &srv.obs
		rn := o.renew.Load()
		lost := o.renew.Lost.Load() // before held, which counts a lease first
		// Before held, which released1 decrements first: a reading then
		// never counts one lease both held and released (at worst, one
		// being released, in neither).
		released := o.released.Load()
		ss := ServerSnapshot{
			Addr:        srv.addr,
			Up:          ps.Up,
			Since:       ps.Since,
			AuthRefused: ps.AuthRefused,
			Conns: ConnCounts{
				Lane:      ps.LaneConns,
				Idle:      ps.IdleConns,
				InUse:     max(ps.AcquiredConns-ps.PinnedConns, 0),
				Pinned:    ps.PinnedConns,
				Listener:  ps.ListenerConns,
				Lingering: ps.LingeringConns,
			},
			Dials:         ps.Dials,
			DialFailures:  ps.DialFailures,
			WaitsInFlight: int(max(o.waits.Load(), 0)),
			LeasesHeld:    int(max(o.held.Load()-lost, 0)),
			Releases:      released,
			Losses:        lost,

			RenewalsSent:       rn.Sent,
			Renewed:            rn.Renewed,
			RenewalsRefused:    rn.Refused,
			RenewalsUnanswered: rn.Unanswered,
		}
		s.Servers[i] = ss
	}
	s.Released, s.Lost = c.releasedAndLost()
	s.Held = c.sched.Stats().Leases
	s.Acquired = c.stats.acquired.Load() // last: see track
	return s
}

// waitTracker marks an acquire waiting on a wait-pool connection; its end
// method is deferred by the waiting function.
type waitTracker struct {
	srv *server
}

// waitBegin counts a wait in flight on srv and, for a traced call, notes
// when it began.
func (c *Client) waitBegin(ctx context.Context, srv *server) waitTracker {
	if c.opts.tracer != nil {
		noteWait(ctx) // before the count: ctx may be the caller's, and unwind
	}
	srv.obs.waits.Add(1)
	return waitTracker{srv}
}

// releasedAndLost are the Client's totals: the sums of its servers'.
func (c *Client) releasedAndLost() (released, lost int64) {
	for _, srv := range c.servers {
		released += srv.obs.released.Load()
		lost += srv.obs.renew.Lost.Load()
	}
	return released, lost
}

func (o *serverObs) tracked()   { o.held.Add(1) }
func (o *serverObs) released1() { o.held.Add(-1); o.released.Add(1) } // see Snapshot

func (w waitTracker) end() { w.srv.obs.waits.Add(-1) }
