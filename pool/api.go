// Package pool owns the connections to one dflockd server: dialling (with TLS
// and auth under the caller's context and a dial timeout), the control lane
// (a few long-lived connections that pipeline small non-blocking commands from
// many goroutines), the wait pool (puddle-managed connections for blocking
// acquires and two-phase tickets, pinned while they own a lease), keepalive
// of every connection below the server's read timeout, and the fail-fast
// state of a server that is down.
//
// NOTE: this file fixes the exported API that renew and dflock are written
// against. Bodies marked "unimplemented" are filled in by the implementation.
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
	// ErrUnavailable: the server cannot be reached right now; the call failed
	// fast without touching the network (a background probe re-dials).
	ErrUnavailable = errors.New("dflock: server unavailable")
	// ErrAuth: the server refused the auth token (error_auth).
	ErrAuth = errors.New("dflock: authentication failed")
	// ErrClosed: the pool (client) is closed.
	ErrClosed = errors.New("dflock: client closed")
)

// Defaults, exported so callers can document and reuse them.
const (
	DefaultDialTimeout  = 5 * time.Second
	DefaultKeepAlive    = 10 * time.Second
	DefaultMaxConns     = 128
	DefaultLaneConns    = 2
	DefaultWriteTimeout = 5 * time.Second
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
	// DialTimeout bounds dial + TLS + auth. Default DefaultDialTimeout.
	DialTimeout time.Duration
	// KeepAlive: a connection that has written nothing for this long is
	// pinged. Must stay below the server's read timeout (23 s by default).
	// Default DefaultKeepAlive.
	KeepAlive time.Duration
	// MaxConns caps the wait pool (pinned connections included). Default DefaultMaxConns.
	MaxConns int32
	// LaneConns is the number of control-lane connections. Default DefaultLaneConns.
	LaneConns int
	// WriteTimeout bounds one (coalesced) write. Default DefaultWriteTimeout.
	WriteTimeout time.Duration
	// MaxReplyLine caps a reply line; default wire.DefaultMaxLine.
	MaxReplyLine int
	// Logger; nil discards. Never logs the auth token.
	Logger *slog.Logger
	// OnConnBroken is called once for every connection that breaks (I/O
	// error, EOF, protocol violation, cancellation) or is destroyed, from
	// the goroutine that noticed. It must not block. The renewal scheduler
	// uses it to declare the connection's leases lost at once.
	OnConnBroken func(c *Conn, err error)
}

// Pool is the set of connections to one server. Goroutine-safe.
type Pool struct{}

// New creates the pool without dialling (connections are made on demand).
func New(cfg Config) (*Pool, error) { panic("unimplemented") }

// Addr is the server address.
func (p *Pool) Addr() string { panic("unimplemented") }

// Do sends a non-blocking request (try-acquire, renew, release, ping,
// signal) on the control lane and waits for its reply. The returned Conn is
// the lane connection that carried it: for a grant it is the lease owner.
//
// If ctx ends first Do returns an error matching ctx.Err(); the lane
// connection is NOT closed (it may own other leases): the reply is still
// read, and a grant that arrives for an abandoned l/sl request is released
// at once on the same connection.
//
// Requests whose encoded lines exceed wire.MaxLine, and blocking requests,
// are refused (they could break a lease-owning connection).
func (p *Pool) Do(ctx context.Context, req wire.Request) (wire.Reply, *Conn, error) {
	panic("unimplemented")
}

// Acquire takes an exclusive connection from the wait pool (dialling if
// needed, honouring ctx). The caller must end with exactly one of
// Conn.Release (clean, reusable) or Conn.Destroy.
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) { panic("unimplemented") }

// Err is nil while the server is considered up; otherwise the error that
// made it unavailable (matches ErrUnavailable).
func (p *Pool) Err() error { panic("unimplemented") }

// Stats is a snapshot of the pool's counters.
func (p *Pool) Stats() Stats { panic("unimplemented") }

// Close closes every connection (leases on them are released by the server)
// and stops the pool's goroutines. Release leases before calling it.
func (p *Pool) Close() { panic("unimplemented") }

// Stats of one server's pool.
type Stats struct {
	Addr          string
	Up            bool
	Dials         int64 // successful dials (incl. TLS + auth)
	DialFailures  int64
	LaneConns     int   // live control-lane connections
	IdleConns     int   // idle wait-pool connections
	AcquiredConns int   // wait-pool connections out of the pool (blocking acquires, tickets, pinned)
	PinnedConns   int   // acquired connections that own at least one lease
	Broken        int64 // connections that broke or were destroyed
	Pings         int64 // keepalive pings sent
	Requests      int64 // requests written
	Writes        int64 // write calls (Requests/Writes = pipelining factor)
}

// Conn is one framed, pipelined connection. Any number of goroutines may
// send on it; their requests are coalesced into as few writes as possible
// and replies are matched in FIFO order by one reader goroutine.
type Conn struct{}

// Do sends req and waits for its reply. On an exclusive (wait-pool)
// connection, if ctx ends first the connection is destroyed (that is how the
// server withdraws a blocked waiter) and the error matches ctx.Err().
func (c *Conn) Do(ctx context.Context, req wire.Request) (wire.Reply, error) {
	panic("unimplemented")
}

// SendBatch writes reqs in one write (coalesced with concurrent senders) and
// calls done once per request, in order, from the reader goroutine (or with
// an error if the connection breaks). done must not block.
func (c *Conn) SendBatch(reqs []wire.Request, done func(i int, r wire.Reply, err error)) {
	panic("unimplemented")
}

// Pin records that the connection owns one more lease; Unpin one fewer.
func (c *Conn) Pin()   { panic("unimplemented") }
func (c *Conn) Unpin() { panic("unimplemented") }

// Release returns an exclusive connection to the wait pool if it is healthy,
// otherwise destroys it. Idempotent (only the first Release/Destroy counts).
func (c *Conn) Release() { panic("unimplemented") }

// Destroy closes the connection (server auto-releases its leases). Idempotent.
func (c *Conn) Destroy() { panic("unimplemented") }

// Err is nil while the connection is usable.
func (c *Conn) Err() error { panic("unimplemented") }

// Server is the address of the connection's server.
func (c *Conn) Server() string { panic("unimplemented") }

// SupportsPing reports whether the server answered `ping` with ok (v1.14+);
// false on v1.10 servers, which answer `error` (still a valid keepalive).
func (c *Conn) SupportsPing() bool { panic("unimplemented") }
