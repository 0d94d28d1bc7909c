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
package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"time"
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
	// ErrAuth: the server refused the auth token (error_auth).
	ErrAuth = errors.New("dflock: authentication failed")
	// ErrClosed: the pool (client) is closed.
	ErrClosed = errors.New("dflock: client closed")
	// ErrDraining: the server is shutting down (error_draining) and closes
	// the connection.
	ErrDraining = errors.New("dflock: server draining")
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
	//
	// The pool logs from connection readers, flush goroutines and the
	// janitor (a broken connection, an abandoned grant released), whose
	// stalling would delay replies, renewals and keepalives of every lease
	// on the server: its handler must not block. The Client passes a
	// bounded asynchronous handler that drops (and counts) what it cannot
	// queue. Besides Logger and OnConnBroken the pool runs no user code on
	// those goroutines.
	Logger *slog.Logger
	// OnConnBroken is called once for every connection that breaks (I/O
	// error, EOF, protocol violation, cancellation) or is destroyed, from
	// the goroutine that noticed — often a reader, a flusher or the
	// janitor. It must return promptly and never block, for the same reason
	// as Logger. The renewal scheduler uses it to declare the connection's
	// leases lost at once. err matches wire.ErrConnBroken; it also matches
	// ErrUnavailable if the server or the network broke the connection, and
	// ErrClosed if Close did.
	OnConnBroken func(c *Conn, err error)
}

// Stats of one server's pool.
type Stats struct {
	Addr          string
	Up            bool  // Pool.Err() == nil
	Dials         int64 // successful dials (incl. TLS + auth)
	DialFailures  int64
	LaneConns     int   // live control-lane connections
	IdleConns     int   // idle wait-pool connections
	AcquiredConns int   // wait-pool connections out of the pool (blocking acquires, tickets, pinned)
	PinnedConns   int   // acquired connections that own at least one lease
	ListenerConns int   // live signal listener connections (DialListener)
	Broken        int64 // connections that broke or were destroyed
	Pings         int64 // keepalive pings sent
	Requests      int64 // requests written
	Writes        int64 // write calls (Requests/Writes = pipelining factor)
}
