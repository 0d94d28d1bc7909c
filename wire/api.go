// Package wire is the dflockd protocol codec: request encoding, reply and push
// parsing, argument validation, NATS-style pattern matching, and a framed
// connection that keeps replies in step with requests.
//
// The package knows nothing about pools, leases or sharding; it turns values
// into bytes and bytes into values, and refuses anything the server would
// refuse (or would misread) before it reaches the network.
//
// NOTE: this file fixes the exported API that pool, renew and dflock are
// written against. Bodies marked "unimplemented" are filled in by the wire
// implementation; the signatures are the contract.
package wire

import (
	"context"
	"errors"
	"net"
	"time"
)

// Command is a request verb of the line protocol (PROTOCOL.md §6).
type Command uint8

const (
	CmdInvalid    Command = iota
	CmdAuth               // auth
	CmdLock               // l
	CmdEnqueue            // e
	CmdWait               // w
	CmdRelease            // r
	CmdRenew              // n
	CmdSemLock            // sl
	CmdSemEnqueue         // se
	CmdSemWait            // sw
	CmdSemRelease         // sr
	CmdSemRenew           // sn
	CmdStats              // stats
	CmdPing               // ping
	CmdListen             // listen
	CmdUnlisten           // unlisten
	CmdSignal             // signal
)

// Wire limits (PROTOCOL.md §2, §6.6).
const (
	MaxLine        = 256   // bytes before '\n' of any cmd/key line and of most arg lines
	MaxLongArg     = 65536 // arg cap for signal (v1.15+) and auth
	MaxSeconds     = 9223372036
	DefaultMaxLine = 1 << 20 // default reply-line cap of Conn
)

// Request is one protocol request. Only the fields the command uses are
// encoded; the zero value of an optional field means "omit".
type Request struct {
	Cmd     Command
	Key     string // lock/semaphore key, listen pattern or signal channel; "_" is sent for auth/stats/ping
	Token   string // r, n, sr, sn
	Timeout int64  // seconds; l, sl, w, sw (0 = try)
	Lease   int64  // seconds; l, sl, e, se, n, sn (0 = omit: server default)
	Limit   int64  // sl, se
	Arg     string // auth secret, listen/unlisten group, signal payload
}

// Status is the first word of a reply line (PROTOCOL.md §10).
type Status uint8

const (
	StatusInvalid            Status = iota
	StatusOK                        // ok
	StatusAcquired                  // acquired
	StatusQueued                    // queued
	StatusTimeout                   // timeout
	StatusError                     // error
	StatusErrAuth                   // error_auth
	StatusErrMaxLocks               // error_max_locks
	StatusErrMaxWaiters             // error_max_waiters
	StatusErrLimitMismatch          // error_limit_mismatch
	StatusErrAlreadyEnqueued        // error_already_enqueued
	StatusErrNotEnqueued            // error_not_enqueued
	StatusErrLeaseExpired           // error_lease_expired
	StatusErrDraining               // error_draining
	StatusErrNotLeader              // error_not_leader [addr]
	StatusErrOther                  // any other error_* word (Reply.Word holds it)
)

// Reply is a parsed reply line. Which fields are set depends on the command
// the reply answers and on its status.
type Reply struct {
	Status   Status
	Word     string // the status word as received, for StatusErrOther (and error_not_leader's address in Text)
	Token    string // grant: ok|acquired <token> <lease>
	Lease    int64  // grant: lease seconds; renew: applied TTL seconds
	Fence    uint64 // grant/renew 4th/3rd field of the unreleased fence branch, if present
	HasFence bool
	Count    int64  // signal: number of receivers
	Text     string // stats: the JSON document; error_not_leader: the leader address, if any
}

// Push is an asynchronous `sig <channel> <payload>` line.
type Push struct {
	Channel string
	Payload string
}

var (
	// ErrInvalidArgument matches every *ArgError.
	ErrInvalidArgument = errors.New("dflock: invalid argument")
	// ErrProtocol matches every *ProtocolError.
	ErrProtocol = errors.New("dflock: protocol violation")
	// ErrConnBroken is returned by a Conn after an I/O or framing failure; the
	// connection must be discarded.
	ErrConnBroken = errors.New("dflock: connection broken")
)

// ArgError names a caller-supplied argument that the server would refuse.
type ArgError struct {
	Arg    string // "key", "token", "pattern", "channel", "payload", "group", "timeout", "lease", "limit", "secret"
	Value  string // the offending value, truncated for display
	Reason string
}

func (e *ArgError) Error() string {
	if e.Value == "" {
		return "dflock: invalid " + e.Arg + ": " + e.Reason
	}
	return "dflock: invalid " + e.Arg + " " + quoteTrunc(e.Value) + ": " + e.Reason
}

func (e *ArgError) Is(target error) bool { return target == ErrInvalidArgument }

// ProtocolError reports a reply line the client cannot make sense of.
type ProtocolError struct {
	Line   string // the offending line, truncated
	Reason string
}

func (e *ProtocolError) Error() string {
	return "dflock: protocol violation: " + e.Reason + " in reply " + quoteTrunc(e.Line)
}

func (e *ProtocolError) Is(target error) bool { return target == ErrProtocol }

// ConnOptions configure a framed connection.
type ConnOptions struct {
	// MaxLine caps an incoming line; a longer one breaks the connection.
	// Default DefaultMaxLine.
	MaxLine int
	// OnPush receives every `sig` line read by the connection's reader. It is
	// called on the reading goroutine and must not block. Nil drops pushes.
	OnPush func(Push)
}

// Conn is a framed protocol connection. Writes and reads may run on
// different goroutines (one writer, one reader at a time each); after any
// failure every later call returns an error matching ErrConnBroken.
type Conn struct {
	nc  net.Conn
	opt ConnOptions
}

// NewConn frames nc. The Conn owns nc from now on.
func NewConn(nc net.Conn, opt ConnOptions) *Conn { panic("unimplemented") }

// NetConn returns the underlying connection (for deadlines and addresses).
func (c *Conn) NetConn() net.Conn { return c.nc }

// WriteRequests encodes reqs into the connection's write buffer and sends
// them in a single Write call. It does not validate (call Validate first).
func (c *Conn) WriteRequests(reqs ...Request) error { panic("unimplemented") }

// WriteRaw sends pre-encoded request bytes in a single Write call.
func (c *Conn) WriteRaw(b []byte) error { panic("unimplemented") }

// ReadReply reads the next reply line, routing any `sig` push lines that
// precede it to OnPush, and parses it as the answer to cmd.
func (c *Conn) ReadReply(cmd Command) (Reply, error) { panic("unimplemented") }

// ReadLine reads the next line (push or reply) without parsing it. The slice
// is valid until the next read.
func (c *Conn) ReadLine() ([]byte, error) { panic("unimplemented") }

// SetDeadline, SetReadDeadline, SetWriteDeadline forward to the net.Conn.
func (c *Conn) SetDeadline(t time.Time) error      { return c.nc.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.nc.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.nc.SetWriteDeadline(t) }

// Do writes req and reads its reply, honouring ctx: if ctx ends first the
// connection's deadline is forced into the past, the call returns an error
// that matches both ctx.Err() and ErrConnBroken, and the Conn is broken.
func (c *Conn) Do(ctx context.Context, req Request) (Reply, error) { panic("unimplemented") }

// Err returns the error that broke the connection, or nil while it is usable.
func (c *Conn) Err() error { panic("unimplemented") }

// Close closes the underlying connection and marks the Conn broken.
func (c *Conn) Close() error { panic("unimplemented") }

// String returns the protocol word of the command ("l", "sl", "stats", …).
func (c Command) String() string { panic("unimplemented") }

// Blocking reports whether the request may park its connection on the
// server (l/sl with Timeout > 0, w/sw).
func (r *Request) Blocking() bool { panic("unimplemented") }

// Validate checks every field the command uses against PROTOCOL.md §3 and
// the line caps, returning an *ArgError that names the first bad argument.
func (r *Request) Validate() error { panic("unimplemented") }

// AppendTo appends the three request lines to dst. It never allocates when
// dst has room.
func (r *Request) AppendTo(dst []byte) []byte { panic("unimplemented") }

// LineLen returns the longest of the three encoded lines (for routing
// requests whose arg exceeds MaxLine away from lease-owning connections).
func (r *Request) LineLen() int { panic("unimplemented") }

// ParseReply parses one reply line (without the trailing newline; trailing
// CRs are tolerated) as the answer to cmd. Unknown trailing fields are
// ignored; unknown error_* words yield StatusErrOther.
func ParseReply(line []byte, cmd Command) (Reply, error) { panic("unimplemented") }

// IsPush reports whether line is an asynchronous `sig ` push line.
func IsPush(line []byte) bool { panic("unimplemented") }

// ParsePush parses a `sig <channel> <payload>` line.
func ParsePush(line []byte) (Push, error) { panic("unimplemented") }

// FenceFromToken extracts the v2.1 fence (big-endian uint64 in the first 16
// hex chars). ok is false when the token is not 32 lowercase hex chars.
func FenceFromToken(token string) (fence uint64, ok bool) { panic("unimplemented") }

// ValidateKey checks a lock/semaphore key (arg names it in the error:
// "key", "pattern", "channel").
func ValidateKey(arg, key string) error { panic("unimplemented") }

// ValidatePattern checks a listen pattern: key rules plus NATS token rules.
func ValidatePattern(pattern string) error { panic("unimplemented") }

// ValidateChannel checks a signal channel: key rules and no '*' or '>'.
func ValidateChannel(channel string) error { panic("unimplemented") }

// ValidateToken checks a token: non-empty, no whitespace, ≤ MaxLine.
func ValidateToken(token string) error { panic("unimplemented") }

// ValidatePayload checks a signal payload for channel: not blank, no CR/LF/NUL,
// ≤ MaxLongArg − 5 − len(channel) bytes.
func ValidatePayload(channel, payload string) error { panic("unimplemented") }

// ValidateGroup checks a queue-group name: no CR/LF/NUL, no leading or
// trailing whitespace, ≤ MaxLine bytes (empty = no group).
func ValidateGroup(group string) error { panic("unimplemented") }

// MatchPattern reports whether channel matches the NATS-style pattern
// (PROTOCOL.md §6.6). The pattern is assumed valid.
func MatchPattern(pattern, channel string) bool { panic("unimplemented") }

// Seconds converts a duration to whole protocol seconds, rounding up
// (a positive sub-second duration becomes 1).
func Seconds(d time.Duration) int64 { panic("unimplemented") }

func quoteTrunc(s string) string { panic("unimplemented") }
