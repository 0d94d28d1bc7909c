package dflock

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/dflock-sdk/go/pool"
	"github.com/dflock-sdk/go/renew"
	"github.com/dflock-sdk/go/shard"
	"github.com/dflock-sdk/go/wire"
)

// Defaults of the Client options.
const (
	// DefaultServer is the server used when New is given no servers.
	DefaultServer = "127.0.0.1:6388"
	// DefaultDialTimeout bounds dial + TLS handshake + auth of one connection.
	DefaultDialTimeout = 5 * time.Second
	// DefaultLeaseTTL is 0: requests omit the lease and the server applies
	// its own default (33 s unless configured), learnt from the grant reply.
	DefaultLeaseTTL time.Duration = 0
	// DefaultRenewRatio: a lease is renewed after this fraction of its life
	// (the TTL, or the servers' read timeout if shorter; see
	// WithRenewRatio), the first renewal up to 10% earlier (jitter).
	DefaultRenewRatio = 0.5
	// DefaultKeepAlive: every connection, and every held lease, carries
	// traffic at least this often. It must be at most half the servers'
	// read timeout (see WithServerReadTimeout), which closes idle
	// connections and thereby releases their leases.
	DefaultKeepAlive = 10 * time.Second
	// DefaultServerReadTimeout is dflockd's default --read-timeout: a
	// connection that sends nothing for this long is closed.
	DefaultServerReadTimeout = 23 * time.Second
	// DefaultMaxConnsPerServer caps the wait-pool connections per server
	// (blocking acquires in progress, two-phase tickets, and held leases
	// that were granted after waiting).
	DefaultMaxConnsPerServer = 128
	// DefaultLaneConns is the number of control-lane connections per server.
	DefaultLaneConns = 2
	// DefaultMaxIdleConnsPerServer is how many idle wait-pool connections
	// a server keeps (see WithMaxIdleConnsPerServer): enough to answer the
	// first few waits of the next burst without dialling, few enough that
	// a burst's leftovers do not hold server connection slots.
	DefaultMaxIdleConnsPerServer = 4
	// DefaultMaxConnIdleTime is how long an idle wait-pool connection is
	// kept (see WithMaxConnIdleTime): it survives pauses between bursts of
	// several keepalives, and is closed about a minute after the last.
	DefaultMaxConnIdleTime = time.Minute
	// DefaultReleaseTimeout bounds the release that WithLock, Ticket.Cancel
	// and Close perform on the caller's behalf.
	DefaultReleaseTimeout = 2 * time.Second
	// DefaultMaxStatsReply caps a server's `stats` reply (see
	// WithMaxStatsReply): 16 MiB, which holds the state of about 380,000
	// idle keys or 180,000 held locks with 10-byte keys.
	DefaultMaxStatsReply = 16 << 20
)

// Bounds of the options. A value outside its bounds makes New (or the call
// that was given it) fail with an *ArgError naming the option and the bound,
// except that durations longer than MaxDuration are treated as MaxDuration.
// WithMaxIdleConnsPerServer shares the bound of WithMaxConnsPerServer.
const (
	// MaxDuration is the longest lease or timeout the protocol carries
	// (wire.MaxSeconds seconds, about 292 years): WithLeaseTTL, LeaseTTL,
	// AcquireTimeout, WithDialTimeout and WithServerReadTimeout treat
	// anything longer as MaxDuration, that is, as forever.
	MaxDuration = wire.MaxSeconds * time.Second
	// MinKeepAlive is the shortest keepalive: the pool breaks a connection
	// whose ping is not answered within two keepalives, and below a few
	// milliseconds that is scheduling noise, not a dead server.
	MinKeepAlive = pool.MinKeepAlive
	// MinServerReadTimeout is the shortest read timeout WithServerReadTimeout
	// accepts: twice MinKeepAlive, since a keepalive must be at most half
	// of it.
	MinServerReadTimeout = 2 * MinKeepAlive
	// MaxConnsPerServer bounds WithMaxConnsPerServer: one client address
	// cannot have more connections open to one server address than it has
	// ephemeral ports.
	MaxConnsPerServer = 65535
	// MaxLaneConns bounds WithLaneConns. Each lane connection has a reader
	// goroutine; beyond a handful, more lanes only dilute the pipelining
	// that makes the lane cheap.
	MaxLaneConns = pool.MaxLaneConns
	// MaxStatsReply bounds WithMaxStatsReply (64 MiB, over a million idle
	// keys): the reply is held in memory two or three times over while it
	// is read and decoded.
	MaxStatsReply = 64 << 20
	// minStatsReply is the least WithMaxStatsReply accepts: the cap of
	// the official Go client, ample for a server with a few keys.
	minStatsReply = 64 << 10
)

// waitChunk is the server timeout sent for a blocking acquire whose context
// has no deadline: the request is re-issued on the same connection after
// each chunk. A var so tests can shrink it.
var waitChunk = time.Hour

// ticketWaitChunk is the same for a two-phase wait. A `w` that times out
// consumes the enqueue state, so the ticket re-enqueues (losing its place)
// after each chunk; hence a much longer chunk.
var ticketWaitChunk = 24 * time.Hour

// An Option configures a Client (see New).
type Option func(*options)

// Hooks are optional callbacks for events that happen away from any call.
// They run one at a time on the Client's callback goroutine (see WithLogger),
// in the order the events happened, never on a goroutine that renews leases
// or reads replies. A hook that blocks delays later hooks and log records;
// past 4096 waiting, calls are dropped and counted
// (ClientStats.CallbacksDropped) — except the losses (OnLeaseLost and its
// log record), which have a queue of their own, 131,072 calls long (a loss
// with both a Logger and OnLeaseLost takes two): every loss of a burst (the
// thousands of leases of one broken connection) is reported, up to 65,536
// at once. Loss reports run in the order of the losses; among the other
// calls they may come earlier than events that happened before them. Close waits up to DefaultReleaseTimeout for
// the calls still queued; a hook still running then keeps that goroutine
// until it returns (Go cannot stop it), and what is still queued is dropped,
// never run after Close has returned, and counted by the time Close returns.
// A hook may call Close (say, to shut down when a lease is lost): that Close
// returns once all but the callbacks is done, as it cannot wait for the hook
// that called it, and the calls queued behind that hook run when it returns;
// a Close called elsewhere, before or after it, still waits for them as
// above.
// A hook or log handler that panics does not end the program: the panic is
// printed with its stack to standard error, and the next call runs; so it
// does after one that calls runtime.Goexit (t.FailNow in a test's hook).
type Hooks struct {
	// OnLeaseLost is called once for every lease lost while held, and for
	// one that Release finds the server no longer held (its Release returns
	// an error matching ErrLockLost); not for leases released by Release or
	// Close. Its calls have a queue of their own (see Hooks), so a burst of
	// losses is reported whole. A lease granted but lost before the acquire
	// could return it (its grant or confirming renewal answered after its
	// life had run out) is reported too: the acquire returns an error
	// matching ErrNotAcquired and ErrLockLost, and Snapshot counts it
	// acquired and lost.
	OnLeaseLost func(info LeaseInfo, err error)
	// OnConnBroken is called for every connection that breaks or is
	// destroyed (including those destroyed to cancel a blocked acquire), but
	// not for idle wait-pool connections closed by the idle limits
	// (WithMaxIdleConnsPerServer, WithMaxConnIdleTime): those are counted in
	// the pool's Stats.IdleClosed; nor for the short-lived connection of a
	// Client.Stats call, which owns nothing: a break there is that call's
	// error (matching ErrServerUnavailable), and only that. The error of
	// every connection Client.Close ends matches ErrClosed, that of a
	// blocked call Close interrupts included, so that a graceful Close can
	// be told from connections that broke.
	OnConnBroken func(server string, err error)
	// OnDial is called after every dial, successful or not.
	OnDial func(DialInfo)
	// OnRenewalBatch is called for every batch of renewals once all its
	// answers are in (or its connection broke), a Lock's or Semaphore's
	// Renew included: a hook that calls Renew for every batch it is told
	// of renews without end.
	OnRenewalBatch func(RenewalBatchInfo)
	// OnSignalDropped is called when a subscription starts dropping
	// signals because its buffer is full: once per episode, which ends when
	// a signal is delivered again, and at most once a second per
	// subscription (an episode that starts sooner is reported at its first
	// drop after that second, if it is still dropping). Dropped and
	// Snapshot count every drop.
	OnSignalDropped func(SignalDropInfo)
	// OnSignalGap is called for every gap reported to a subscription.
	OnSignalGap func(SignalGapInfo)
}

// LeaseInfo identifies a lease in a hook.
type LeaseInfo struct {
	Key       string
	Token     string
	Server    string
	Semaphore bool
	TTL       time.Duration // the lease granted, which every renewal asks for again
}

type options struct {
	// err is what New reports: argErr if set, else a conflict between
	// options (see recheck).
	err         error
	argErr      error // the first invalid option
	tls         *tls.Config
	authToken   string
	dialTimeout time.Duration
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	leaseTTL    time.Duration
	renewRatio  float64
	keepAlive   time.Duration
	readTimeout time.Duration
	maxConns    int
	maxIdle     int
	maxIdleTime time.Duration
	laneConns   int
	maxStats    int
	strategy    shard.Strategy
	logger      *slog.Logger
	hooks       Hooks
	tracer      Tracer
	fencing     bool
	groupConns  int         // WithGroupConns; 0 = DefaultGroupConns (signal_options.go)
	noLaneFast  bool        // unexported switch: Lock skips the control-lane try (benchmarks)
	clock       renew.Clock // unexported: the scheduler's time in tests (withClock); nil is the real clock

	// callbackWait bounds Close's wait for queued callbacks (log records and
	// hooks); DefaultReleaseTimeout, shorter only in tests (withCallbackWait).
	callbackWait time.Duration
}

// defaultStrategy is shard.Ring, made here: a package assigning to the
// shard.Ring variable must not move every default Client's keys.
var defaultStrategy = shard.RingWithVirtualNodes(shard.DefaultVirtualNodes)

func defaultOptions() options {
	return options{
		dialTimeout: DefaultDialTimeout,
		leaseTTL:    DefaultLeaseTTL,
		renewRatio:  DefaultRenewRatio,
		keepAlive:   DefaultKeepAlive,
		readTimeout: DefaultServerReadTimeout,
		maxConns:    DefaultMaxConnsPerServer,
		maxIdle:     DefaultMaxIdleConnsPerServer,
		maxIdleTime: DefaultMaxConnIdleTime,
		laneConns:   DefaultLaneConns,
		maxStats:    DefaultMaxStatsReply,
		strategy:    defaultStrategy,

		callbackWait: DefaultReleaseTimeout,
	}
}

func (o *options) fail(arg, value, reason string) {
	if o.argErr == nil {
		o.argErr = &ArgError{Arg: arg, Value: value, Reason: reason}
	}
	o.err = o.argErr
}

// between reports whether n is within [lo, hi], the bounds of the integer
// option arg, and records an error naming them otherwise. unit, if not
// empty, follows hi in the message ("bytes").
func (o *options) between(arg string, n, lo, hi int, unit string) bool {
	if n >= lo && n <= hi {
		return true
	}
	reason := "must be between " + strconv.Itoa(lo) + " and " + strconv.Itoa(hi)
	if unit != "" {
		reason += " " + unit
	}
	o.fail(arg, strconv.Itoa(n), reason)
	return false
}

// positive checks a duration option that must be positive and clamps it to
// MaxDuration ("no bound"); ok is false after recording the error.
func (o *options) positive(arg string, d time.Duration) (v time.Duration, ok bool) {
	if d <= 0 {
		o.fail(arg, d.String(), "must be positive")
		return 0, false
	}
	return min(d, MaxDuration), true
}

// atLeastMs is positive for a duration that only a unit mistake makes
// shorter than a millisecond (WithDialTimeout(5), meant as seconds, is 5 ns:
// every dial would time out, and the error would not say why).
func (o *options) atLeastMs(arg string, d time.Duration) (v time.Duration, ok bool) {
	if d > 0 && d < time.Millisecond {
		o.fail(arg, d.String(), "must be at least 1ms (a bare number is nanoseconds)")
		return 0, false
	}
	return o.positive(arg, d)
}

// recheck re-evaluates the constraints between options. New applies the
// options in the order given and then looks at o.err only, so every option
// that takes part in such a constraint calls recheck once it has stored its
// value: the last of them sees the final values of all, whatever the order
// the caller chose.
func (o *options) recheck() {
	o.err = o.argErr
	if o.err == nil {
		o.err = o.conflict()
	}
}

// conflict reports a combination of valid options that cannot work.
func (o *options) conflict() error {
	// The server closes a connection when no line arrives for its read
	// timeout. A keepalive of at most half of it leaves the other half for
	// what delays a ping: a janitor or scheduler running late, a lost
	// segment waiting for its retransmission (TCP's timeout starts at
	// 200 ms–1 s and doubles with each loss), a stop-the-world pause. (A
	// silent network is not noticed by the pool's keepalive in time — it
	// breaks a connection whose request went unanswered for two keepalives
	// — but by the leases' own deadlines, which count from the read timeout
	// when it is shorter than the TTL: see renew.Config.ReadTimeout.)
	if o.keepAlive > o.readTimeout/2 {
		return &ArgError{Arg: "keepalive", Value: o.keepAlive.String(),
			Reason: "must be at most half the server read timeout (" + o.readTimeout.String() +
				", see WithServerReadTimeout), or idle connections are closed and their leases lost"}
	}
	return nil
}

// WithTLS makes every connection use TLS with cfg (cloned). If
// cfg.ServerName is empty it defaults to the host of each server address.
// nil, or the default, means plain TCP.
//
// cfg's callbacks (GetClientCertificate, VerifyPeerCertificate,
// VerifyConnection, KeyLogWriter, ...) run during dials, on the goroutine
// that dials (the Client's own but for a long Emit's: see WithDialer,
// whose rule on panics applies to them too), never on one that renews or
// reads; a handshake cannot be interrupted while one runs, so one that
// blocks delays that server's new connections and holds Close until it
// returns. After the handshake crypto/tls still uses cfg.Rand (for every
// record of a CBC cipher suite, written by whichever goroutine writes,
// the renewal scheduler's included) and cfg.Time and ClientSessionCache
// (for a session ticket): those must return promptly. So must every
// callback if cfg.Renegotiation allows a server to renegotiate: the
// handshake would then run on the connection's reader (dflockd, a Go
// server, never asks to).
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) {
		if cfg == nil {
			o.tls = nil
			return
		}
		o.tls = cfg.Clone()
	}
}

// WithAuthToken sends token as the first request on every connection
// (servers started with --auth-token). The empty string means no auth (so
// a token read from an unset variable turns auth off: a server that wants
// one then refuses every call with ErrAuth); otherwise the token must not
// be blank (only whitespace), contain CR, LF or NUL, or exceed 65,536
// bytes. The token is never logged, and a server
// that echoes it back, in a reply or a refusal's word, cannot get it into
// an error, a log record or a hook: it shows as "<redacted>" there. Data
// is left as sent (a grant's token that holds it by chance, a signal's
// payload). Surrounding whitespace is harmless (the server trims the line).
// Servers before v1.15 cap every line at 256 bytes and refuse a longer
// token whatever it is; the ErrAuth error then says so. After a refusal,
// new connections to that server are held back for a while (see ErrAuth),
// so a service retrying against a server with another token does not dial
// it once per call. Default: no auth.
func WithAuthToken(token string) Option {
	return func(o *options) {
		if token != "" {
			if err := (&wire.Request{Cmd: wire.CmdAuth, Arg: token}).Validate(); err != nil {
				reason := "must not be blank or contain CR, LF or NUL"
				if ae := (*ArgError)(nil); errors.As(err, &ae) {
					reason = ae.Reason // never quotes the token
				}
				o.fail("auth token", "", reason)
				return
			}
		}
		o.authToken = token
	}
}

// WithDialTimeout bounds dial + TLS handshake + auth of each connection (the
// caller's context may end it sooner). It must be at least a millisecond;
// a duration above MaxDuration means no bound. Default DefaultDialTimeout.
func WithDialTimeout(d time.Duration) Option {
	return func(o *options) {
		if v, ok := o.atLeastMs("dial timeout", d); ok {
			o.dialTimeout = v
		}
	}
}

// WithDialer replaces the function that opens TCP connections (TLS and auth
// are still applied on top). Default: (&net.Dialer{}).DialContext.
//
// The connections' Write must report what it wrote as io.Writer says:
// a write that fails having written nothing (n == 0) tells the Client that
// its requests never reached the server, and a try-lock among them is sent
// again on another connection. A wrapper that returns 0 with an error after
// sending bytes could have one try granted twice.
//
// dial must return once ctx ends: ctx carries the dial timeout
// (WithDialTimeout), the caller's context where a call waits for the dial,
// and Close. The Client cannot abandon a dial in progress, so a dialer that
// ignores ctx holds Close, and a Stats call (which waits for its dials),
// until it returns. One that returns neither a connection nor
// an error fails the dial (ErrServerUnavailable), and so does a nil
// pointer returned as the connection; a connection returned together with
// an error is closed. nil means the default.
//
// The connection's methods run on the Client's own goroutines: Read on the
// connection's reader, Write on its flusher (only a *net.TCPConn or
// *net.UnixConn is also written on a caller's goroutine or the renewal
// scheduler's, when idle), and the deadline setters wherever a read or
// write is bounded or cut, at times under the connection's lock. Like a
// net.TCPConn's, they must return promptly (Read and Write once their
// deadline passes); one that blocks holds up renewals on every server.
// Deadline setters that fail (an SSH channel's) are tolerated: the
// connection is then closed to end a handshake whose time is up, and to end
// anything else the keepalive's cut of a server that stopped answering (2 ×
// WithKeepAlive); such a connection is never kept open to read replies
// after a cut. Setters that return nil and do nothing are not: a
// connection kept open after a cut, to read what the server still answers,
// is then read until the server closes it or Client.Close. Close may take its time (an SSH
// channel's writes to its transport): a connection that is not a kernel
// socket is closed, or half-closed, on a goroutine of its own (also when
// its handshake failed: a Stats does not wait for it), and Client.Close
// waits for those. Close is called once per connection.
//
// dial and the connection's methods, like cfg's callbacks under WithTLS,
// run on the Client's goroutines (a lane or wait-pool dial, a Stats
// query's, a reader, a flusher), but for the dial of the connection that
// carries Emits over 256 bytes, which runs on the Emit's. They must not
// panic or call runtime.Goexit (a test's t.FailNow, say): as in a net/http
// Transport's dialer, a panic there is not recovered and ends the program,
// and a Goexit loses that goroutine's work without an error (a lane
// connection never dialled, a reply never read, so its caller waits for
// its context). Return an error instead. Nor may they call Client.Close,
// which waits for the dials and calls in progress, theirs included, and
// would wait forever (start it on a goroutine of its own: go c.Close()).
func WithDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return func(o *options) { o.dial = dial }
}

// WithLeaseTTL sets the lease requested for every lock and slot that does
// not set its own with LeaseTTL. It is rounded up to whole seconds; a lease
// above MaxDuration is MaxDuration (forever). Default DefaultLeaseTTL (0):
// the server's default lease. A lease under 1 ms other than 0 is refused
// (WithLeaseTTL(30) is 30 ns, not 30 s).
func WithLeaseTTL(d time.Duration) Option {
	return func(o *options) {
		if reason := leaseProblem(d); reason != "" {
			o.fail("lease TTL", d.String(), reason)
			return
		}
		o.leaseTTL = min(d, MaxDuration)
	}
}

// leaseProblem says what is wrong with d as a lease ("" if nothing). A
// lease under a millisecond is a unit mistake: LeaseTTL(30), meant as
// seconds, would silently ask for the shortest lease the protocol has (1 s).
func leaseProblem(d time.Duration) string {
	switch {
	case d < 0:
		return "must not be negative"
	case d > 0 && d < time.Millisecond:
		return "must be 0 (the server's default) or at least 1ms (a bare number is nanoseconds)"
	}
	return ""
}

// WithRenewRatio sets after which fraction of its TTL a lease is renewed
// (of the servers' read timeout instead, if that is shorter). A lease is
// also renewed at least every keepalive interval, and at most every
// MinKeepAlive unless its deadline needs sooner: a renewal always comes
// before 0.9 × (life − safety margin), so a read timeout under about 22 ms
// (where the margin is half of it) renews more often than MinKeepAlive
// (docs/leases.md has the full rule). It must be in (0, 1). Default
// DefaultRenewRatio.
func WithRenewRatio(r float64) Option {
	return func(o *options) {
		if !(r > 0 && r < 1) {
			o.fail("renew ratio", strconv.FormatFloat(r, 'g', -1, 64), "must be between 0 and 1 (exclusive)")
			return
		}
		o.renewRatio = r
	}
}

// WithKeepAlive sets the longest time a connection, or a held lease, goes
// without traffic. It must be at least MinKeepAlive and at most half the
// servers' read timeout (WithServerReadTimeout, 23 s by default), or New
// fails: a connection the server closes for idleness takes its leases
// with it. A connection whose requests go unanswered for twice this long
// is taken for a stalled server and broken, failing its callers with
// ErrServerUnavailable; docs/leases.md says which connections are spared
// (replies waiting unread in the socket, a queued ticket's). Default
// DefaultKeepAlive.
func WithKeepAlive(d time.Duration) Option {
	return func(o *options) {
		if d < MinKeepAlive {
			o.fail("keepalive", d.String(), "must be at least "+MinKeepAlive.String())
			return
		}
		o.keepAlive = d
		o.recheck()
	}
}

// WithServerReadTimeout declares the servers' read timeout (dflockd's
// --read-timeout): a server closes a connection that sends nothing for this
// long, releasing its leases. It bounds WithKeepAlive (at most half of it)
// and, on a network gone silent, the life of a lease longer than it: such a
// lease is declared lost within the read timeout of its last confirmed
// renewal, before the server can close the connection (docs/leases.md). It
// sends nothing itself. It must be at least MinServerReadTimeout; above MaxDuration it means
// a server without a read timeout. When servers differ, give the shortest.
// Default DefaultServerReadTimeout (23 s, dflockd's default).
func WithServerReadTimeout(d time.Duration) Option {
	return func(o *options) {
		v, ok := o.positive("server read timeout", d)
		if !ok {
			return
		}
		// No keepalive fits in half of a shorter one; blaming the
		// keepalive (conflict) would point at the wrong option.
		if v < MinServerReadTimeout {
			o.fail("server read timeout", d.String(), "must be at least "+MinServerReadTimeout.String()+
				" (twice MinKeepAlive: a keepalive must fit in half of it)")
			return
		}
		o.readTimeout = v
		o.recheck()
	}
}

// WithMaxConnsPerServer caps the wait-pool connections per server. Every
// blocking acquire in progress, every two-phase ticket and every lease
// granted after waiting holds one (as does a lease of a key found held
// within the last second or so, which goes straight to the wait pool);
// uncontended locks use the control lane and hold none. A contended
// acquire that finds all n in use waits for one, trying its key on the
// control lane meanwhile (see Client.Lock). It must be between
// 1 and MaxConnsPerServer. Default DefaultMaxConnsPerServer. Connections
// given up on but kept open a while for a grant still on its way
// (ConnCounts.Lingering) are outside the cap and bounded on their own, at
// n plus the lane connections.
func WithMaxConnsPerServer(n int) Option {
	return func(o *options) {
		if o.between("max conns per server", n, 1, MaxConnsPerServer, "") {
			o.maxConns = n
		}
	}
}

// WithMaxIdleConnsPerServer caps the idle wait-pool connections kept per
// server, like database/sql's SetMaxIdleConns: connections a burst of
// blocking acquires opened beyond it are closed within a keepalive interval
// after they become idle (those idle longest first). Control-lane and
// signal-listener connections are not counted, and a connection that holds
// a lease is never idle. It must be between 0 (keep none) and
// MaxConnsPerServer. Default DefaultMaxIdleConnsPerServer.
func WithMaxIdleConnsPerServer(n int) Option {
	return func(o *options) {
		if o.between("max idle conns per server", n, 0, MaxConnsPerServer, "") {
			o.maxIdle = n
		}
	}
}

// WithMaxConnIdleTime sets how long a wait-pool connection may stay idle
// before it is closed, like database/sql's SetConnMaxIdleTime; it is closed
// within a keepalive interval after that. It must be at least a
// millisecond; a duration above MaxDuration means no limit. Default
// DefaultMaxConnIdleTime.
func WithMaxConnIdleTime(d time.Duration) Option {
	return func(o *options) {
		if v, ok := o.atLeastMs("max conn idle time", d); ok {
			o.maxIdleTime = v
		}
	}
}

// poolMaxIdle is maxIdle as pool.Config.MaxIdleConns, where 0 means the
// default and a negative value none.
func (o *options) poolMaxIdle() int32 {
	if o.maxIdle == 0 {
		return -1
	}
	return int32(o.maxIdle) // at most MaxConnsPerServer
}

// WithLaneConns sets the number of control-lane connections per server: the
// pipelined connections that carry try-acquires, renewals and releases of
// every goroutine. It must be between 1 and MaxLaneConns. Default
// DefaultLaneConns.
func WithLaneConns(n int) Option {
	return func(o *options) {
		if o.between("lane conns", n, 1, MaxLaneConns, "") {
			o.laneConns = n
		}
	}
}

// WithMaxStatsReply caps, in bytes, the `stats` reply that Client.Stats
// accepts from each server: the reply is one JSON line that grows with the
// server's keys (about 30 bytes per idle key, 80 per held lock, plus the
// key), and a longer one fails that server's entry with an error naming
// the cap. It must be between 64 KiB and MaxStatsReply. Default
// DefaultMaxStatsReply.
func WithMaxStatsReply(n int) Option {
	return func(o *options) {
		if o.between("max stats reply", n, minStatsReply, MaxStatsReply, "bytes") {
			o.maxStats = n
		}
	}
}

// WithSharding sets how keys are placed on servers. Every process that
// shares keys must use the same strategy and the same server list. Default
// shard.Ring (consistent hashing); use shard.CRC32 to share keys with the
// official dflockd clients.
func WithSharding(s shard.Strategy) Option {
	return func(o *options) {
		if s == nil {
			o.fail("sharding", "", "strategy must not be nil")
			return
		}
		o.strategy = s
	}
}

// WithLogger sets the structured logger of the Client and of everything
// under it. nil, or the default, discards the records. Auth tokens are
// never logged.
//
// Records are handed to l's handler on one goroutine of the Client's, in
// order, never on the goroutines that renew leases, read replies or write
// requests: a slow handler cannot delay a renewal. The handler's Enabled is
// asked there too, just before Handle; a level it refuses is then skipped
// at the source for a second before a record goes through to ask again (so
// a change of level takes effect within a second). Records and hook calls
// that find more than 4096 others waiting are dropped and counted in
// ClientStats.CallbacksDropped; Close waits up to DefaultReleaseTimeout for
// those still queued, as described at Hooks (which also says what becomes
// of a handler that blocks past that, or panics). The handler's WithAttrs
// runs on the caller's goroutine, once per server in New (which, if it
// panics, leaves nothing running).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithHooks installs event callbacks. Default: none. Hooks run on the same
// goroutine as the Logger's records (see WithLogger), one at a time: a hook
// that blocks delays later hooks and records but never the Client's work.
// A hook may call the Client, Close included; such a Close returns once
// everything but the callbacks is done, as it cannot wait for the hook that
// called it (see Hooks).
//
// WithHooks adds to the hooks of earlier WithHooks options instead of
// replacing them: every set runs, in option order, so that an adapter's
// hooks (such as a metrics package's) compose with the application's.
func WithHooks(h Hooks) Option {
	return func(o *options) { o.hooks = o.hooks.merge(h) }
}

// WithFencing declares that the servers are dflockd v2.1 or later, whose
// tokens start with a fencing number, so that Lock.Fence derives it from the
// token. Without it Fence only reports a fence the server sent as an
// explicit reply field. The declaration is trusted, as far as the Client
// can check it: a grant from a server that does not answer ping (older
// than v1.14, whose tokens are random) has no fence; one from v1.14–v2.0
// would get a meaningless one, reported with ok == true. So turn it on only
// once every server runs v2.1+, and off before rolling one back
// (docs/sharding.md, "Upgrading servers"). Default: off.
func WithFencing() Option {
	return func(o *options) { o.fencing = true }
}

// withoutLaneFastPath makes Lock skip the control-lane try and go straight
// to a blocking acquire on a wait-pool connection (benchmarks compare both).
func withoutLaneFastPath() Option {
	return func(o *options) { o.noLaneFast = true }
}

// An AcquireOption tunes one acquire (Lock, Semaphore, Enqueue, Ticket.Wait
// and their variants).
type AcquireOption func(*acquireOptions)

type acquireOptions struct {
	timeout    time.Duration
	hasTimeout bool
	lease      time.Duration
	hasLease   bool
}

// AcquireTimeout bounds how long Lock, Semaphore or Ticket.Wait wait for the
// lock or slot; the context may end the wait sooner. The server is sent the
// timeout rounded up to whole seconds, and the local deadline is exact: when
// it passes the wait is withdrawn and the call returns ErrTimeout.
// AcquireTimeout(0) makes the call a try (like TryLock); a timeout above
// MaxDuration is MaxDuration (forever). Default: wait until the context
// ends. The timeout bounds the server's answer too: one shorter than a
// round trip returns ErrTimeout even for a free key (a grant that crosses
// it is released). A timeout under 1 ms is accepted, since one computed
// from a deadline may well be that short: AcquireTimeout(5), meant as
// seconds, is 5 ns and times out every time.
func AcquireTimeout(d time.Duration) AcquireOption {
	return func(a *acquireOptions) { a.timeout, a.hasTimeout = d, true }
}

// LeaseTTL sets the lease of this lock or slot, rounded up to whole
// seconds (above MaxDuration: MaxDuration, forever); it is renewed
// automatically until released. Default: the Client's WithLeaseTTL. 0
// asks for the server's default lease; anything else under 1 ms is refused
// as a unit mistake (LeaseTTL(30) is 30 ns).
func LeaseTTL(d time.Duration) AcquireOption {
	return func(a *acquireOptions) { a.lease, a.hasLease = d, true }
}

func (c *Client) acquireOptions(opts []AcquireOption) (acquireOptions, error) {
	a := acquireOptions{lease: c.opts.leaseTTL}
	if len(opts) > 0 {
		a = applyAcquireOptions(a, opts)
	}
	if a.hasTimeout && a.timeout < 0 {
		return a, &ArgError{Arg: "timeout", Value: a.timeout.String(), Reason: "must not be negative"}
	}
	if reason := leaseProblem(a.lease); reason != "" {
		return a, &ArgError{Arg: "lease", Value: a.lease.String(), Reason: reason}
	}
	// Clamped here so that no deadline arithmetic downstream meets a
	// duration the protocol cannot carry anyway.
	a.timeout = min(a.timeout, MaxDuration)
	a.lease = min(a.lease, MaxDuration)
	return a, nil
}

// applyAcquireOptions applies opts to a copy of a. It is separate from
// acquireOptions because passing &a to an option function moves a to the
// heap: here that costs an allocation only when options are given.
func applyAcquireOptions(a acquireOptions, opts []AcquireOption) acquireOptions {
	for _, o := range opts {
		if o != nil {
			o(&a)
		}
	}
	return a
}
