// Package renew is the one central renewal scheduler of a Client: every
// held lease (lock or semaphore slot) is tracked in a deadline heap served
// by one goroutine and one timer. On each wake it takes every lease due
// within a small window, groups them by owning connection and sends each
// group in one pipelined write. No goroutine per lease.
//
// The scheduler owns the truth about loss: a lease is lost when a renew is
// refused, when its owning connection fails, or when
// sendTime(last confirmed grant/renew) + TTL − safety margin passes without
// confirmation, whatever the network does.
//
// NOTE: this file fixes the exported API that dflock is written against.
// Bodies marked "unimplemented" are filled in by the implementation.
package renew

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/dflock-sdk/go/wire"
)

var (
	// ErrLost matches every lease-loss error (dflock.ErrLockLost is this value).
	ErrLost = errors.New("dflock: lock lost")
	// ErrReleased is a lease's Err after a clean release (dflock.ErrReleased).
	ErrReleased = errors.New("dflock: lock released")
)

// Owner is the connection that acquired a lease; renewals go to it (the
// server ties auto-release to it). *pool.Conn implements it.
type Owner interface {
	// SendBatch writes reqs in one write and calls done once per request in
	// order, or with an error if the connection breaks. done must not block.
	SendBatch(reqs []wire.Request, done func(i int, r wire.Reply, err error))
}

// Defaults.
const (
	DefaultRatio     = 0.5
	DefaultJitter    = 0.1
	DefaultKeepAlive = 10 * time.Second
	DefaultWindow    = 25 * time.Millisecond
)

// Config of a Scheduler.
type Config struct {
	// Ratio of the TTL after which a lease is renewed. Default DefaultRatio.
	Ratio float64
	// Jitter: renew up to this fraction of the interval earlier, at random. Default DefaultJitter.
	Jitter float64
	// KeepAlive: a lease is renewed at least this often (keeps its owning
	// connection under the server read timeout). Default DefaultKeepAlive.
	KeepAlive time.Duration
	// Window: on each wake, leases due within Window are renewed together. Default DefaultWindow.
	Window time.Duration
	// SafetyMargin before the server-side expiry at which a lease with no
	// confirmed renewal is declared lost. Default: 10% of the TTL, at least 100ms, at most 2s.
	SafetyMargin func(ttl time.Duration) time.Duration
	// OnLost, if set, is called (on its own goroutine) after a lease is lost.
	OnLost func(l *Lease, err error)
	// Logger; nil discards.
	Logger *slog.Logger
}

// Scheduler renews leases. Goroutine-safe.
type Scheduler struct{}

// New starts a scheduler (one goroutine, stopped by Close).
func New(cfg Config) *Scheduler { panic("unimplemented") }

// Spec describes a freshly granted lease.
type Spec struct {
	Key       string
	Token     string
	Semaphore bool          // renew with sn instead of n
	TTL       time.Duration // whole seconds; sent explicitly on every renew
	Owner     Owner
	// Sent is when the acquire request that produced the grant was written
	// (the lease is assumed to have started then, the conservative choice).
	Sent time.Time
}

// Track starts renewing a granted lease.
func (s *Scheduler) Track(spec Spec) *Lease { panic("unimplemented") }

// Untrack stops renewing l (before the caller releases it), closing Done
// with Err ErrReleased. It reports false if l was already lost (l.Err()
// says why) or untracked.
func (s *Scheduler) Untrack(l *Lease) bool { panic("unimplemented") }

// Renew renews l now and waits for the answer (or ctx). A refusal loses the lease.
func (s *Scheduler) Renew(ctx context.Context, l *Lease) error { panic("unimplemented") }

// OwnerFailed declares every lease owned by o lost with cause err.
func (s *Scheduler) OwnerFailed(o Owner, err error) { panic("unimplemented") }

// Close stops the scheduler and returns the leases it still held (not lost),
// untracked, so the caller can release them.
func (s *Scheduler) Close() []*Lease { panic("unimplemented") }

// Stats of the scheduler.
type Stats struct {
	Leases  int   // tracked now
	Renewed int64 // successful renewals
	Sent    int64 // renew requests sent
	Batches int64 // SendBatch calls (one write each, per owner per round)
	Rounds  int64 // wakes that sent at least one renewal
	Lost    int64
}

func (s *Scheduler) Stats() Stats { panic("unimplemented") }

// Lease is one tracked lease.
type Lease struct{}

func (l *Lease) Key() string        { panic("unimplemented") }
func (l *Lease) Token() string      { panic("unimplemented") }
func (l *Lease) TTL() time.Duration { panic("unimplemented") }
func (l *Lease) Owner() Owner       { panic("unimplemented") }

// Done is closed when the lease ends: lost, or untracked for release.
func (l *Lease) Done() <-chan struct{} { panic("unimplemented") }

// Err is nil while Done is open; after loss it matches ErrLost (and wraps the
// cause); after Untrack it is ErrReleased.
func (l *Lease) Err() error { panic("unimplemented") }

// Context is cancelled when Done closes; context.Cause gives Err().
func (l *Lease) Context() context.Context { panic("unimplemented") }
