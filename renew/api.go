// Package renew is the one central renewal scheduler of a Client: every
// held lease (lock or semaphore slot) is tracked in a deadline heap served
// by one goroutine and one timer. On each wake it takes every lease due
// within a small window and, with them, every lease due within a quarter of
// its own interval, groups them by owning connection and sends each group in
// one pipelined write. Renewing those few early keeps leases in shared
// rounds: a connection carries a few renewal writes per interval however
// many leases it holds. No goroutine per lease.
//
// The scheduler owns the truth about loss: a lease is lost when a renew is
// refused, when its owning connection fails (OwnerFailed), or when
// sendTime(last confirmed grant/renew) + life − safety margin passes without
// confirmation, whatever the network does (life: the TTL, or
// Config.ReadTimeout if shorter). (An early renewal only moves that
// send time forward, so it never brings a loss closer.) Each lease carries its own loss
// callback (Spec.OnLost), delivered off the scheduler and off connection
// readers.
//
// Compatibility: none. The package exists for package dflock and may change
// with any release; users see only the errors (dflock.Stats copies the
// figures of Stats and Counters into its own types). ErrLost and ErrReleased are defined here, the lowest package that
// produces them, and dflock exports them as ErrLockLost and ErrReleased:
// match them through dflock.
package renew

import (
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/wire"
)

var (
	// ErrLost matches every lease-loss error (dflock.ErrLockLost is this value).
	ErrLost = errors.New("dflock: lock lost")
	// ErrReleased is a lease's Err after a clean release (dflock.ErrReleased).
	ErrReleased = errors.New("dflock: lock released")
	// ErrRefused is the cause (wrapped) of a loss by a refused renewal.
	ErrRefused = errors.New("dflock: renewal refused")
	// ErrMaybeUnapplied is wrapped too by the loss of a renewal refused with
	// the bare `error`, which is also how a paused server answers a request
	// that reached it after its read deadline, unapplied (it then closes the
	// connection): the lease may still be held on the server, so whoever
	// handles the loss releases it.
	ErrMaybeUnapplied = errors.New("dflock: the server may not have applied the request (a paused server answers so)")
	// ErrOwnerFailed is the cause (wrapped) of a loss by a failed owning connection.
	ErrOwnerFailed = errors.New("dflock: owning connection failed")
	// ErrNotTracked is the Err of a Lease no Scheduler tracks: a zero
	// Lease, which Track and TrackInto did not make.
	ErrNotTracked = errors.New("dflock: lease not tracked by a scheduler")

	// errExpired is the cause of a loss by the client's own clock: no
	// renewal was confirmed within TTL − safety margin of the last confirmed
	// send. Unexported: no caller acts on it (its message says what
	// happened); ErrRefused and ErrOwnerFailed are matched by dflock.
	errExpired = errors.New("dflock: no renewal confirmed within the lease's life − safety margin")
	// errClosed is the cause of the loss of a lease tracked after Close.
	errClosed = errors.New("dflock: renewal scheduler closed")
)

// Refusal returns the cause of a loss the server refused (a renewal, or a
// release that found the lease gone): msg says what it answered; the
// error matches ErrRefused, and each of also — the sentinels dflock
// matches for that answer (wire.ErrRefused, wire.ErrDraining), and
// ErrMaybeUnapplied where it applies — without naming them in its text.
func Refusal(msg string, also ...error) error {
	return &refusal{msg: msg, is: append([]error{ErrRefused}, also...)}
}

type refusal struct {
	msg string
	is  []error
}

func (e *refusal) Error() string   { return e.msg }
func (e *refusal) Unwrap() []error { return e.is }

// LostError is the Err of a lost lease. It matches ErrLost and unwraps to
// the cause (ErrRefused, ErrOwnerFailed, expiry by the client's clock,
// the scheduler's Close, ... joined with the underlying error where there
// is one).
type LostError struct {
	Key       string
	Server    string // Spec.Server: which server, for a Client of several
	Semaphore bool
	Cause     error
}

func (e *LostError) Error() string {
	what := "dflock: lock lost: key "
	if e.Semaphore {
		what = "dflock: semaphore slot lost: key "
	}
	msg := what + strconv.Quote(e.Key)
	if e.Server != "" {
		msg += " on " + e.Server
	}
	return msg + ": " + unprefixed(e.Cause.Error())
}

// unprefixed drops the "dflock: " that starts every error of this module
// from each ": "-separated part of a message, so that an error wrapping
// others reads "dflock: a: b: c", not "dflock: a: dflock: b: dflock: c".
// (Keys, tokens and addresses contain no spaces, so no part of them can
// look like a prefix.)
func unprefixed(msg string) string {
	return strings.ReplaceAll(strings.TrimPrefix(msg, "dflock: "), ": dflock: ", ": ")
}

// Is reports whether target is ErrLost.
func (e *LostError) Is(target error) bool { return target == ErrLost }

// Unwrap returns the cause.
func (e *LostError) Unwrap() error { return e.Cause }

// Owner is the connection that acquired a lease; renewals go to it (the
// server ties auto-release to it). pool.Owner (a lane or a pinned wait-pool
// connection) is one.
type Owner interface {
	// SendBatch writes reqs in one write and calls done once per request in
	// order, or with an error if the connection breaks. done must not block.
	//
	// The scheduler calls SendBatch from its one goroutine without holding
	// any lock, and does not touch reqs afterwards (the owner may queue it).
	// SendBatch should not block for long (queue, don't wait for the socket):
	// while it blocks no other lease is renewed or declared lost. done may be
	// called synchronously from within SendBatch.
	SendBatch(reqs []wire.Request, done func(i int, r wire.Reply, err error))

	// Err is non-nil once the connection has failed. It must become non-nil
	// before the failure is reported through Scheduler.OwnerFailed: Track
	// checks it under the same lock as OwnerFailed, so a lease granted on a
	// connection that broke before Track is lost at once instead of being
	// tracked on a dead connection until its next renewal.
	Err() error
}

// Clock is the time source of a Scheduler; the real clock by default.
//
// Only the scheduler's decisions (when to renew, when a lease is lost) are
// timed by it; contexts and connection I/O stay on the real clock. A test
// clock lets tests move a lease through its renewals and its loss deadline
// without waiting for them.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f once d has passed on this clock, as time.AfterFunc
	// does. f must not block. The result stops the call (*time.Timer is
	// one). It is an unnamed interface so that another package's clock can
	// implement Clock without importing this one: identical interface
	// literals are one type wherever they are written.
	AfterFunc(d time.Duration, f func()) interface{ Stop() bool }
}

// realClock is the default Clock: the process's monotonic clock.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) interface{ Stop() bool } {
	return time.AfterFunc(d, f)
}

const (
	// defaultRatio is the default Config.Ratio. dflock always sets Ratio
	// (dflock.DefaultRenewRatio is the user-visible default).
	defaultRatio     = 0.5
	defaultJitter    = 0.1
	defaultKeepAlive = 10 * time.Second
	defaultWindow    = 25 * time.Millisecond
)

// MinInterval is the shortest renewal interval a Ratio gives: a tiny ratio
// (a typo, or one computed from durations) must not renew every lease once
// per round trip. It equals dflock.MinKeepAlive, the floor of the other
// periodic traffic.
const MinInterval = 10 * time.Millisecond

// Config of a Scheduler. Out-of-range values are replaced by the defaults
// as documented per field; nothing panics.
type Config struct {
	// Ratio of a lease's life (its TTL, or ReadTimeout if shorter) after
	// which it is renewed, but never sooner than MinInterval after the
	// last renewal. Default 0.5; values outside (0, 1) mean the default.
	Ratio float64
	// KeepAlive: a lease is renewed at least this often (keeps its owning
	// connection under the server read timeout). Default 10 s; values <= 0
	// mean the default; values below MinInterval are raised to it.
	KeepAlive time.Duration
	// Clock times renewals and loss deadlines. Nil means the real clock.
	Clock Clock
	// ReadTimeout is the servers' read timeout: a server closes a
	// connection it has read nothing from for this long, releasing its
	// leases. A lease's last confirmed renewal was read by the server, so
	// the lease lives no longer than min(TTL, ReadTimeout) after that
	// renewal was sent, and its loss deadline and renewal interval are
	// computed from that (a silent network otherwise had the server hand
	// the lock on before the client reported the loss). Values <= 0 mean
	// none.
	ReadTimeout time.Duration
	// OnBatch, if set, is called once per renewal batch (one write to one
	// owner) when its last reply or its connection's failure has arrived.
	// It runs on the owner's reader or on the scheduler goroutine, so it
	// must not block or call into the scheduler: queue the figures and
	// return. Nil costs nothing. Like OnReleaseLost, it may run after
	// Close has returned, for a batch whose answers were still coming
	// (Close does not wait for the owners' readers).
	OnBatch func(BatchInfo)
	// OnReleaseLost, if set, is given the best-effort release of a lease
	// declared lost by the client's clock whose owning connection broke
	// before answering it, or answered the bare error (which a paused
	// server whose read deadline passed sends instead of applying the
	// request, then closes): a server with auto-release off keeps the lease
	// (held by nobody until its TTL runs out) unless the release is sent
	// on another connection. It runs on the owner's reader or on the
	// scheduler goroutine, so it must not block or call into the
	// scheduler. counters is the lease's Spec.Counters, which tells the
	// caller whose lease it was (dflock keeps one Counters per server).
	OnReleaseLost func(counters *Counters, req wire.Request)

	// Tuning that only this package's tests change.

	// jitter: renew a lease the first time up to this fraction of the
	// interval earlier, at random (later renewals keep that phase).
	// Default defaultJitter; values outside (0, 1) mean the default.
	jitter float64
	// window: a wake renews the leases due within window (and then those
	// due within a quarter of their interval). Default defaultWindow; values
	// <= 0 mean the default. A lease is never renewed more than a quarter of
	// its interval early, whatever window.
	window time.Duration
	// safetyMargin before the server-side expiry at which a lease with no
	// confirmed renewal is declared lost. Default: 10% of the TTL, at least
	// 100ms, at most 2s. A result < 0 counts as 0, one above TTL/2 as TTL/2.
	safetyMargin func(ttl time.Duration) time.Duration
}

// defaultSafetyMargin is the default Config.safetyMargin: 10% of ttl,
// clamped to [100ms, 2s].
func defaultSafetyMargin(ttl time.Duration) time.Duration {
	return min(max(ttl/10, 100*time.Millisecond), 2*time.Second)
}

func (c Config) withDefaults() Config {
	if !(c.Ratio > 0 && c.Ratio < 1) {
		c.Ratio = defaultRatio
	}
	if !(c.jitter > 0 && c.jitter < 1) {
		c.jitter = defaultJitter
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = defaultKeepAlive
	}
	// The floor of every interval, KeepAlive's too (docs/leases.md).
	c.KeepAlive = max(c.KeepAlive, MinInterval)
	if c.window <= 0 {
		c.window = defaultWindow
	}
	if c.safetyMargin == nil {
		c.safetyMargin = defaultSafetyMargin
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	return c
}

// Counters are renewal figures of a group of leases (dflock keeps one per
// server, and sums them for its users). Safe for concurrent use.
//
// Every renew request sent counts in Sent once, and in exactly one of
// Renewed, Refused or Unanswered once its answer (or its connection's
// failure) arrives, even if the lease has ended meanwhile; so
// Sent − Renewed − Refused − Unanswered is the number in flight. Lost counts
// leases lost, whatever the cause.
type Counters struct {
	Sent, Renewed, Refused, Unanswered, Lost atomic.Int64
}

// CountersValue is a reading of Counters.
type CountersValue struct {
	Sent, Renewed, Refused, Unanswered, Lost int64
}

// Load reads c with the outcomes before Sent: Sent is counted before a
// renewal is written, so the reading never shows more renewals answered
// than sent.
func (c *Counters) Load() CountersValue {
	v := CountersValue{Renewed: c.Renewed.Load(), Refused: c.Refused.Load(), Unanswered: c.Unanswered.Load(), Lost: c.Lost.Load()}
	v.Sent = c.Sent.Load()
	return v
}

// BatchInfo describes one renewal batch (one write to one owner) once it
// has ended.
type BatchInfo struct {
	Counters         *Counters     // of the batch's leases (nil if none set)
	Size             int           // renew requests in the write
	Renewed, Refused int           // replies; Size−Renewed−Refused went unanswered (connection failed)
	Latency          time.Duration // write to last reply (or failure), on Config.Clock
	Err              error         // the connection error, if it failed
}

// Spec describes a freshly granted lease.
type Spec struct {
	Key       string
	Token     string
	Semaphore bool          // renew with sn instead of n
	TTL       time.Duration // whole seconds (a fraction is dropped); sent explicitly on every renew; < 1s is refused
	Owner     Owner
	Server    string // the owner's server, named in LostError (optional)
	// Sent is when the acquire request that produced the grant was written
	// (the lease is assumed to have started then, the conservative choice).
	// Zero, or a time after now, means now.
	Sent time.Time
	// OnLost, if set, is called once if the lease is lost, with the lease
	// and its Err, after Done is closed. It is not called for a lease that
	// ends otherwise (Untrack, or handed back by Close), nor for one that
	// Track returns already lost because the scheduler is closed (its
	// caller sees that from Err).
	//
	// The calls of all leases are made one at a time, in the order the
	// losses happened, by a notifier goroutine that runs only while
	// notifications are pending; never on the scheduler goroutine or on a
	// connection reader. Losses are queued without bound and never dropped
	// (at most one entry per lease), so a slow OnLost delays later
	// notifications but never a renewal or the detection of a loss. It may
	// run before Track returns.
	//
	// Close delivers every notification queued before it and waits for
	// those calls to return: OnLost must not block indefinitely and must not
	// call Close. The scheduler itself logs nothing.
	//
	// It is an interface rather than a func so that a caller can pass the
	// pointer it keeps per lease anyway (dflock's held): a method value
	// would be one more allocation per lease.
	OnLost LossHandler
	// Counters, if set, receive this lease's renewal events. Leases sent to
	// one owner should share one (dflock's are per server), or BatchInfo
	// names only the first.
	Counters *Counters
}

// A LossHandler is told of a lease's loss (see Spec.OnLost).
type LossHandler interface {
	LeaseLost(l *Lease, err error)
}

// Stats of the scheduler. The renewals of leases and their outcomes are
// counted in the Counters each Spec names (package dflock sums its
// per-server Counters for its users); these are the figures no lease owns.
type Stats struct {
	Leases  int   // tracked now
	Batches int64 // SendBatch calls (one write each, per owner per round)
	Rounds  int64 // wakes that sent at least one renewal
	// ReleaseFailed counts best-effort releases of leases declared lost by
	// the client's clock that failed: refused (usually because the server
	// had already expired the lease) or not delivered (the connection broke:
	// the server releases the lease with it unless it runs with auto-release
	// off, and Config.OnReleaseLost is given the release to send again, as
	// it is after the bare error).
	ReleaseFailed int64
}
