// Package testutil is an in-process dflockd-compatible server for tests,
// examples and benchmarks, plus fault injection (connection drops, stop and
// restart on the same address, stalls, and a latency/blackhole/reset proxy).
//
// It speaks docs/protocol.md byte for byte and does not import the SDK's wire
// package, so that the two check each other.
//
// NewServer starts a Server for one test and stops it at the test's end;
// Start does the same outside tests. Config picks the protocol Version to
// imitate and the server's flags (auth token, TLS, limits, timeouts;
// Config.Audit sees every lease event, for invariant checks; Config.Clock,
// a ManualClock for instance, lets a test move the server's time: lease
// expiry, sweeps, wait and read timeouts). A Server can be
// stopped and restarted on the same address, stalled, drained like SIGTERM
// (Shutdown), or made to drop its connections; Server.Stats is its view of
// locks, semaphores and subscriptions. Proxy injects network faults between
// a client and a server, and NewTLSCerts makes a throwaway CA and server
// certificate for TLS tests.
package testutil

import (
	"crypto/tls"
	"log/slog"
	"time"
)

// Version selects which dflockd release the server imitates.
type Version int

const (
	V1_16 Version = iota // default: signal era, ping, separate lock/semaphore namespaces, error_draining
	V1_10                // no ping, no signals, shared lock/semaphore namespace, no error_draining
	V2_1                 // no signals, fence-prefixed tokens
)

// Config configures a Server. The zero value imitates a default dflockd v1.16
// on 127.0.0.1 with a random port.
type Config struct {
	Version Version
	// Addr to listen on; default "127.0.0.1:0".
	Addr string
	// AuthToken, when non-empty, requires `auth` as the first request. It is
	// whitespace-trimmed, as dflockd trims every token source from v1.16,
	// except on V1_10, where it stands for the -auth-token flag, which v1.10
	// does not trim: surrounding spaces there make a token no client can
	// present (the `auth` argument is trimmed). To imitate v1.10 reading the
	// token from -auth-token-file (which it trims), trim it yourself.
	AuthToken string
	// TLS, when non-nil, makes the listener TLS-only (minimum TLS 1.2).
	TLS *tls.Config
	// ReadTimeout per line, including the idle wait for the next request. Default 23s; negative = none.
	ReadTimeout time.Duration
	// WriteTimeout per response. Default 5s; negative = none.
	WriteTimeout time.Duration
	// DefaultLease when a request omits it. Default 33s; announced in whole seconds, rounded up.
	DefaultLease time.Duration
	// SweepInterval of the lease sweeper. Default 1s; negative is rejected.
	SweepInterval time.Duration
	// MaxLocks distinct keys (locks + semaphores). Default 1024; negative = unlimited.
	MaxLocks int
	// MaxWaiters per key. Default 0 = unlimited; negative is rejected.
	MaxWaiters int
	// MaxSubscriptions per connection. Default 0 = unlimited; negative is rejected.
	MaxSubscriptions int
	// MaxConnections; over it a connection is accepted and closed at once.
	// 0 = unlimited; negative is rejected.
	MaxConnections int
	// GCInterval and GCMaxIdle govern pruning of idle keys. Defaults 5s and
	// 60s; negative is rejected.
	GCInterval, GCMaxIdle time.Duration
	// DisableAutoRelease keeps a disconnected connection's leases until they expire.
	DisableAutoRelease bool
	// ShutdownTimeout bounds Shutdown's drain. Default 30s; negative = until ctx ends.
	ShutdownTimeout time.Duration
	// PushBuffer is the per-connection push buffer in lines. Default 64;
	// negative is rejected.
	PushBuffer int
	// SignalOverflow is what a signal for a listener whose push buffer is
	// full does. Default OverflowDisconnect (released dflockd v1.11+); any
	// other value than the two constants is rejected.
	SignalOverflow SignalOverflow
	// ReplyPerWrite writes every reply with a write call of its own, as
	// dflockd does (signal pushes always leave one per write), instead of buffering the answers to
	// a pipelined batch and writing them together. A client then receives
	// the replies to a batch one by one and wakes its callers one at a
	// time; benchmarks that should predict behaviour against a real server
	// set it. The default (false) favours fast tests.
	ReplyPerWrite bool
	// Clock is the server's time (see Clock for what it governs); nil is the
	// real clock. A ManualClock lets a test make leases expire and waits
	// and read timeouts run out without waiting for them.
	Clock Clock
	// Logger for server events; nil discards.
	Logger *slog.Logger
	// Audit, if set, is called synchronously for every lease event, in the
	// order the server applies them (a total order per Server), with the
	// server's lock state held. It must not block and must not call into the
	// Server. It keeps being called across Stop and Restart.
	Audit func(AuditEvent)
}

// Stats is a typed server snapshot. Slices are sorted by key (or pattern,
// group) and never nil.
type Stats struct {
	Connections    int
	Locks          []LockInfo
	Semaphores     []SemaphoreInfo
	SignalChannels []SignalChannelInfo
	// Requests counts complete requests per command word, including unknown
	// ones under "?". Words some dflockd version knows keep their name even
	// where the imitated version answers `error` (e.g. "ping" on V1_10).
	Requests map[string]int64
	Reads    int64 // socket Read calls that returned data, over all connections

	// IdleLocks and IdleSemaphores are keys without holders or waiters that
	// still count against MaxLocks until GC (idle_locks / idle_semaphores).
	IdleLocks      []IdleKeyInfo
	IdleSemaphores []IdleKeyInfo
}

// IdleKeyInfo is an idle key and how long it has been idle.
type IdleKeyInfo struct {
	Key  string
	Idle time.Duration
}

// LockInfo is a lock with a holder or waiters. Without a holder,
// OwnerConnID and LeaseExpiresIn are 0.
type LockInfo struct {
	Key            string
	OwnerConnID    uint64
	LeaseExpiresIn time.Duration
	Waiters        int
}

// SemaphoreInfo is a semaphore of limit 2 or more with holders or waiters. A
// semaphore of limit 1 is listed as a LockInfo, as dflockd lists it (it
// classifies by limit).
type SemaphoreInfo struct {
	Key                     string
	Limit, Holders, Waiters int
}

// SignalChannelInfo is one (pattern, group) subscription set; Group is
// empty for non-grouped listeners.
type SignalChannelInfo struct {
	Pattern, Group string
	Listeners      int
}
