// Package pool owns the connections to one dflockd server: dialling (with TLS
// and auth under the caller's context and a dial timeout), the control lane
// (a few long-lived connections that pipeline small non-blocking commands from
// many goroutines), the wait pool (puddle-managed connections for blocking
// acquires and two-phase tickets, pinned while they own a lease), keepalive
// of every connection below the server's read timeout, and the fail-fast
// state of a server that is down.
//
// New makes the Pool of one server from a Config. Pool.Do sends a
// non-blocking request on the control lane; Pool.Acquire hands out a
// wait-pool Conn for a blocking or two-phase exchange; Pool.DialListener
// opens a connection for signal pushes; Pool.Query runs a one-off request
// (such as `stats`) on a connection of its own. Pool.Stats is a local
// snapshot. Errors matching ErrUnavailable mean the server is down and the
// call failed fast; a *ServerError carries a reply the server refused with.
//
// Three kinds of connection share one framed, pipelined implementation (an
// unexported conn: coalesced writes, replies matched in FIFO order by one
// reader or, on a quiet connection, by the caller reading its own, and
// keepalive) and each has its own type: a lane connection (control
// lane, via Pool.Do, seen by callers only as the Owner of its leases), Conn (an acquired wait-pool connection, via Pool.Acquire) and
// ListenerConn (Pool.DialListener). One way to send per need: Do waits for
// a reply; SendBatch queues several requests in one write and reports each
// answer to a callback on the reader; Owner.Request sends a request that
// must go out even if the caller's context has ended (a release) and waits
// for its answer while the context lasts.
//
// Compatibility: none. The package exists for package dflock (which wraps
// every value it hands to users, except Stats) and may change with any
// release. Its sentinel errors are the ones dflock exports under its own
// names (dflock.ErrClosed is ErrClosed, dflock.ErrServerUnavailable is
// ErrUnavailable, and so on): they are defined here, in the lowest package
// that returns them, so that errors from every layer match one value; match
// them through package dflock.
package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/dflock-sdk/go/wire"
)

var (
	// ErrUnavailable: the server cannot be reached right now, or a
	// connection to it broke because of the server or the network. Either a
	// dial made for this call failed; or the server is down (a lane dial
	// failed, or a dial failed while no connection to it was alive) and the
	// call failed fast without touching the network while a background probe
	// re-dials; or the connection carrying the call broke on an I/O error,
	// EOF, reset, write timeout, a stall detected by the keepalive, or a
	// protocol violation by the server (such errors also match
	// wire.ErrConnBroken and wrap the network error). Breaks the client made
	// itself (a cancelled context withdrawing a waiter, Destroy, Close) do
	// not match it.
	ErrUnavailable = errors.New("dflock: server unavailable")
	// ErrAuth: the server refused the auth token (error_auth), or answered
	// auth with error (it has no auth configured, yet a token was given).
	ErrAuth = errors.New("dflock: authentication failed")
	// ErrClosed: the pool (client) is closed. dflock.ErrClosed.
	ErrClosed = errors.New("dflock: client closed")
	// ErrDraining: the server is shutting down (error_draining) and closes
	// the connection.
	ErrDraining = wire.ErrDraining
)

// Owner is a connection that leases granted on it belong to: the lane
// connection that Pool.Do returns, or an acquired *Conn. The server ties a
// lease's auto-release to that connection, so its renewals and release are
// sent there. It has the method set of renew.Owner, so it is one.
type Owner interface {
	// SendBatch writes reqs in one write, coalesced with concurrent
	// senders, and calls done once per request, in order, from the
	// connection's reader goroutine — or at once, before SendBatch returns,
	// for every request if the connection is already broken, and for a
	// request with a line break in a field (which would desynchronise the
	// connection). done must not block; nil discards the replies.
	// SendBatch never blocks on the network. On a lane connection a request
	// Pool.Do would refuse as not lane-safe is answered with that error at
	// once and not sent (the scheduler's renewals and releases are safe);
	// on a Conn whose acquisition has ended, every request is answered with
	// an error matching ErrClosed.
	SendBatch(reqs []wire.Request, done func(i int, r wire.Reply, err error))
	// Request sends one request that must reach the server even if ctx
	// has already ended (a release: the lease is no longer renewed), and
	// waits for its answer while ctx and Config.Lifetime last. It is sent
	// unless the connection is already broken or the request has a line
	// break in a field, and never blocks on the network. answered reports
	// that r and err are the outcome; otherwise err says why the wait
	// ended (it matches ctx.Err(), or ErrClosed) and late receives the
	// outcome later, exactly once, from the connection's reader goroutine
	// (or whoever breaks the connection): late must not block (nil
	// discards it). On an idle connection the caller reads the answer
	// itself, sparing the reader's wake-up. The requests SendBatch answers
	// with an error without sending them are refused likewise (answered).
	// A caller that unwinds through ctx's methods (a panic, or
	// runtime.Goexit) leaves the request sent, or refused, and late
	// receives its outcome.
	Request(ctx context.Context, req wire.Request, late func(i int, r wire.Reply, err error)) (r wire.Reply, answered bool, err error)
	// Err is nil while the connection is usable; afterwards an error
	// matching wire.ErrConnBroken that names the server (see Conn.Err).
	Err() error
}

// Defaults of the zero Config fields. Package dflock always sets these
// fields from its own options (it owns the exported defaults, such as
// dflock.defaultKeepAlive), so these serve the pool's own tests and a zero
// Config.
const (
	defaultDialTimeout     = 5 * time.Second
	defaultKeepAlive       = 10 * time.Second
	defaultMaxConns        = 128
	defaultLaneConns       = 2
	defaultMaxIdleConns    = 4
	defaultMaxConnIdleTime = time.Minute
	defaultWriteTimeout    = 5 * time.Second
)

// MaxLaneConns bounds Config.LaneConns: each lane connection is dialled and
// kept open for the pool's lifetime, and a lane wider than this spreads
// requests too thin to batch.
const MaxLaneConns = 64

// MinKeepAlive is the shortest Config.KeepAlive New accepts: a connection
// whose ping is not answered within two keepalives is broken, and below a
// few milliseconds that is scheduling noise, not a stalled server.
const MinKeepAlive = 10 * time.Millisecond

// Roles of a connection, as reported to Config.OnDial.
const (
	roleLane     = "lane"
	roleWait     = "wait"
	roleListener = "listener"
	roleQuery    = "query"
)

// Config configures the pool of one server.
type Config struct {
	Addr string
	// Dial opens the TCP connection; default (&net.Dialer{}).DialContext.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLS, when non-nil, wraps every connection; ServerName defaults to the host of Addr.
	TLS *tls.Config
	// AuthToken, when non-empty, is sent as the first request of every connection.
	AuthToken string
	// DialTimeout bounds dial + TLS + auth. Default 5 s.
	DialTimeout time.Duration
	// KeepAlive: a connection that has written nothing for this long is
	// pinged. Must stay below the server's read timeout (23 s by default).
	// A connection whose pending requests (none of them blocking) get no
	// reply, and no byte of one, for two keepalives (three, at worst,
	// after the last byte of a long reply) is broken as stalled; over TLS
	// bytes count a record (up to 16 KiB) at a time, so a long reply on a
	// link slower than a record per two keepalives is taken for a stall.
	// Not, for up to 5 s more, one this process is behind on (requests not
	// written yet, replies unread: see conn.behindGrace), nor one whose
	// only unanswered requests are pings while it holds a ticket's place
	// (Conn.HoldPlace). Default 10 s; at least MinKeepAlive.
	KeepAlive time.Duration
	// MaxConns caps the wait pool (pinned connections included). Default 128.
	MaxConns int32
	// LaneConns is the number of control-lane connections, at most
	// MaxLaneConns. Default 2.
	LaneConns int
	// MaxIdleConns caps the idle wait-pool connections; the janitor
	// closes the excess, those idle longest first, within a keepalive
	// interval. Negative: keep none. Default (0) 4.
	// Lane and listener connections are not wait-pool connections, and an
	// acquired (in particular a pinned) one is never idle.
	MaxIdleConns int32
	// MaxConnIdleTime: the janitor closes a wait-pool connection that has
	// been idle this long, within a keepalive interval of its expiry.
	// Default 1 minute.
	MaxConnIdleTime time.Duration
	// Logger; nil discards. Never logs the auth token. Records carry no
	// server attribute of their own: give a Logger that has one (dflock
	// passes its own With("server", Addr); adding it here too repeated
	// the key in every record).
	//
	// The pool logs from connection readers, flush goroutines and the
	// janitor (a broken connection, an abandoned grant released), whose
	// stalling would delay replies, renewals and keepalives of every lease
	// on the server: its handler must not block. The Client passes a
	// bounded asynchronous handler that drops (and counts) what it cannot
	// queue. Besides Logger, OnConnBroken and OnDial the pool runs no user
	// code on those goroutines.
	Logger *slog.Logger
	// OnConnBroken is called once for every connection that breaks (I/O
	// error, EOF, protocol violation, cancellation) or is destroyed, from
	// the goroutine that noticed — often a reader, a flusher or the
	// janitor. It must return promptly and never block, for the same reason
	// as Logger. owner is the connection as the Owner of the leases granted
	// on it — the lane connection, or the acquired *Conn — or nil when it could
	// own none (idle in the wait pool, a listener): the Client declares
	// those leases lost at once. err matches wire.ErrConnBroken; it also
	// matches ErrUnavailable if the server or the network broke the
	// connection, and ErrClosed if Close did.
	OnConnBroken func(owner Owner, err error)
	// OnDial, if set, is called after every dial (TCP, TLS and auth),
	// successful or not, with the connection's role ("lane", "wait",
	// "listener" or "query") and how long it took, on the goroutine that
	// dialled (a caller, a wait-pool constructor or the probe). Dials that
	// fail fast because the server is down are not dials. Like
	// OnConnBroken it must return promptly.
	OnDial func(role string, d time.Duration, err error)
	// OnReleaseLost, if set, is given the release of a grant whose caller
	// gave up (see Do) when the connection broke before it could carry
	// it. A server with auto-release on releases the grant with the
	// connection; one with it off keeps it, held by nobody until its lease
	// runs out, so the owner may send the release elsewhere. It is called
	// from the goroutine that noticed (a reader, or whoever broke the
	// connection) and, like OnConnBroken, must return promptly. Setting
	// it also makes a connection the keepalive breaks linger (see
	// conn.linger): its socket stays open, for at most a minute, until
	// the replies to what it had written are read, and a grant among
	// them — which a stalled server makes when it resumes — comes here.
	OnReleaseLost func(req wire.Request)
	// Lifetime, if set, is the owner's lifetime (the Client's): when it
	// ends, every wait for a reply ends as if the caller's context had
	// (the error matches ErrClosed), so that a caller may pass a context
	// that lives as long as the owner, or Lifetime itself, without merging
	// the two (merging a context that can end costs allocations on every
	// call). Close still has to be called.
	Lifetime context.Context

	// Set only by this package's tests (dflock keeps the defaults):

	// writeTimeout bounds one (coalesced) write. Default defaultWriteTimeout.
	writeTimeout time.Duration
	// maxReplyLine caps a reply line; default wire.DefaultMaxLine.
	maxReplyLine int
}

// Stats of one server's pool.
type Stats struct {
	Addr string
	// Up is Pool.Err() == nil, but for Close: after it, Up is what it was
	// before (a closed pool is not a down server).
	Up bool
	// Since is when the state Up reports began: the first successful dial
	// after the server was last down (zero before any), or the failed
	// dial that marked it down.
	Since time.Time
	// AuthRefused: the server refused a dial's auth (a wrong token, none,
	// or one for a server without auth), and no dial has succeeded since.
	// Calls that need a new connection fail with ErrAuth meanwhile (see
	// authHold); connections already open keep serving.
	AuthRefused   bool
	Dials         int64 // successful dials (incl. TLS + auth)
	DialFailures  int64
	LaneConns     int // live control-lane connections
	IdleConns     int // idle wait-pool connections
	AcquiredConns int // wait-pool connections out of the pool (blocking acquires, tickets, pinned)
	PinnedConns   int // acquired connections that own at least one lease
	ListenerConns int // live listener connections (DialListener)
	// LingeringConns: connections the keepalive broke or Conn.Abandon
	// gave up on that stay open (at most a minute) for the replies to what
	// they had written, and connections Conn.Withdraw half-closed, read
	// until the server closes its side (at most 2 s; see OnReleaseLost).
	// At most MaxConns + LaneConns linger at once; a connection broken
	// past that is closed at once.
	// Their role is over: they
	// are in no other count, except that a wait-pool connection the
	// keepalive broke while acquired stays in AcquiredConns until its
	// holder calls Release or Destroy (which package dflock does at once).
	LingeringConns int
	Broken         int64 // connections that broke or were destroyed
	IdleClosed     int64 // idle wait-pool connections closed by MaxIdleConns or MaxConnIdleTime (not in Broken)
	Pings          int64 // keepalive pings sent
	Requests       int64 // requests written
	Writes         int64 // write calls (Requests/Writes = pipelining factor)
}
