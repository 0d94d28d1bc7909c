// Package testutil is an in-process dflockd-compatible server for tests,
// examples and benchmarks, plus fault injection (connection drops, stop and
// restart on the same address, stalls, and a latency/blackhole/reset proxy).
//
// It speaks PROTOCOL.md byte for byte and does not import the SDK's wire
// package, so that the two check each other.
//
// NOTE: this file fixes the exported API that tests are written against.
// Bodies marked "unimplemented" are filled in by the server implementation.
package testutil

import (
	"context"
	"crypto/tls"
	"log/slog"
	"testing"
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
	// AuthToken, when non-empty, requires `auth` as the first request.
	AuthToken string
	// TLS, when non-nil, makes the listener TLS-only.
	TLS *tls.Config
	// ReadTimeout per line, including the idle wait for the next request. Default 23s.
	ReadTimeout time.Duration
	// WriteTimeout per response. Default 5s.
	WriteTimeout time.Duration
	// DefaultLease when a request omits it. Default 33s.
	DefaultLease time.Duration
	// SweepInterval of the lease sweeper. Default 1s.
	SweepInterval time.Duration
	// MaxLocks distinct keys (locks + semaphores). Default 1024; negative = unlimited.
	MaxLocks int
	// MaxWaiters per key. Default 0 = unlimited.
	MaxWaiters int
	// MaxSubscriptions per connection. Default 0 = unlimited.
	MaxSubscriptions int
	// MaxConnections; over it a connection is accepted and closed at once. 0 = unlimited.
	MaxConnections int
	// GCInterval and GCMaxIdle govern pruning of idle keys. Defaults 5s and 60s.
	GCInterval, GCMaxIdle time.Duration
	// DisableAutoRelease keeps a disconnected connection's leases until they expire.
	DisableAutoRelease bool
	// ShutdownTimeout bounds Shutdown's drain. Default 30s.
	ShutdownTimeout time.Duration
	// PushBuffer is the per-connection push buffer in lines. Default 64.
	PushBuffer int
	// Logger for server events; nil discards.
	Logger *slog.Logger
}

// Server is a running in-process dflockd.
type Server struct{}

// Start starts a server. It does not need a *testing.T.
func Start(cfg Config) (*Server, error) { panic("unimplemented") }

// NewServer starts a server for a test and stops it at cleanup.
func NewServer(tb testing.TB, cfg Config) *Server { panic("unimplemented") }

// Addr is the host:port the server listens on (stable across Stop/Restart).
func (s *Server) Addr() string { panic("unimplemented") }

// Close stops the server at once: listener and every connection closed, all state dropped.
func (s *Server) Close() error { panic("unimplemented") }

// Shutdown drains like SIGTERM (PROTOCOL.md §8j) until every connection is
// gone, ShutdownTimeout passes or ctx ends, then closes.
func (s *Server) Shutdown(ctx context.Context) error { panic("unimplemented") }

// DropConnections closes every open connection (auto-release applies) but keeps listening.
func (s *Server) DropConnections() { panic("unimplemented") }

// Stop closes the listener and every connection and drops all lock state, keeping the address.
func (s *Server) Stop() error { panic("unimplemented") }

// Restart listens again on the same address after Stop.
func (s *Server) Restart() error { panic("unimplemented") }

// Stall makes every connection stop reading requests until the returned
// function is called (or d passes, if d > 0).
func (s *Server) Stall(d time.Duration) (resume func()) { panic("unimplemented") }

// Stats returns a snapshot of the server's state (the same data as the
// `stats` command, typed) plus request counters.
func (s *Server) Stats() Stats { panic("unimplemented") }

// Stats is a typed server snapshot.
type Stats struct {
	Connections    int
	Locks          []LockInfo
	Semaphores     []SemaphoreInfo
	SignalChannels []SignalChannelInfo
	Requests       map[string]int64 // per command word, including unknown ones under "?"
	Reads          int64            // socket Read calls that returned data, over all connections
}

type LockInfo struct {
	Key            string
	OwnerConnID    uint64
	LeaseExpiresIn time.Duration
	Waiters        int
}

type SemaphoreInfo struct {
	Key                     string
	Limit, Holders, Waiters int
}

type SignalChannelInfo struct {
	Pattern, Group string
	Listeners      int
}
