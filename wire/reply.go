package wire

import (
	"bytes"
	"strconv"
)

// Status is the first word of a reply line (docs/protocol.md §10).
type Status uint8

// The status words of §5 and §10. The comment is the word on the wire.
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
	numStatuses
)

var statusWords = [numStatuses]string{
	StatusInvalid:            "",
	StatusOK:                 "ok",
	StatusAcquired:           "acquired",
	StatusQueued:             "queued",
	StatusTimeout:            "timeout",
	StatusError:              "error",
	StatusErrAuth:            "error_auth",
	StatusErrMaxLocks:        "error_max_locks",
	StatusErrMaxWaiters:      "error_max_waiters",
	StatusErrLimitMismatch:   "error_limit_mismatch",
	StatusErrAlreadyEnqueued: "error_already_enqueued",
	StatusErrNotEnqueued:     "error_not_enqueued",
	StatusErrLeaseExpired:    "error_lease_expired",
	StatusErrDraining:        "error_draining",
	StatusErrNotLeader:       "error_not_leader",
	StatusErrOther:           "error_*",
}

// String returns the status word ("ok", "error_auth", …; "error_*" for
// StatusErrOther, whose actual word is in Reply.Word).
func (s Status) String() string {
	if s > StatusInvalid && s < numStatuses {
		return statusWords[s]
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}

// IsError reports whether s is `error` or any `error_*` word.
func (s Status) IsError() bool { return s >= StatusError && s < numStatuses }

// Reply is a parsed reply line. Which fields are set depends on the command
// the reply answers and on its status.
type Reply struct {
	Status Status
	Word   string // the status word as received (set for every status; costs an allocation only for StatusErrOther)
	Token  string // grant: ok|acquired <token> <lease>; always passes ValidateToken
	// Lease is the grant's lease or the renewal's applied TTL in seconds.
	// It is any non-negative int64 the server wrote, possibly above
	// MaxSeconds: ParseReply does not refuse it (the caller holds a grant it
	// must release), so a caller must range-check it before converting it to
	// a time.Duration, which it would overflow.
	Lease    int64
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

// statusOf maps a status word to its Status, or StatusInvalid. The switch on
// string(word) compiles to comparisons without converting, so it does not
// allocate.
func statusOf(word []byte) Status {
	switch string(word) {
	case "ok":
		return StatusOK
	case "acquired":
		return StatusAcquired
	case "queued":
		return StatusQueued
	case "timeout":
		return StatusTimeout
	case "error":
		return StatusError
	case "error_auth":
		return StatusErrAuth
	case "error_max_locks":
		return StatusErrMaxLocks
	case "error_max_waiters":
		return StatusErrMaxWaiters
	case "error_limit_mismatch":
		return StatusErrLimitMismatch
	case "error_already_enqueued":
		return StatusErrAlreadyEnqueued
	case "error_not_enqueued":
		return StatusErrNotEnqueued
	case "error_lease_expired":
		return StatusErrLeaseExpired
	case "error_draining":
		return StatusErrDraining
	case "error_not_leader":
		return StatusErrNotLeader
	}
	if bytes.HasPrefix(word, []byte("error_")) {
		return StatusErrOther
	}
	return StatusInvalid
}

// trimCR strips every trailing '\r', as the server does on its side (§2).
func trimCR(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	return b
}

// cut splits at the first single space. The protocol separates fields with
// exactly one space, so a doubled space yields an empty field, which the
// callers reject.
func cut(b []byte) (before, after []byte, found bool) {
	if i := bytes.IndexByte(b, ' '); i >= 0 {
		return b[:i], b[i+1:], true
	}
	return b, nil, false
}

// parseUint parses a plain decimal (no sign: the server never writes one).
func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// parseInt parses a non-negative decimal that fits an int64.
func parseInt(b []byte) (int64, bool) {
	n, ok := parseUint(b)
	if !ok || n > 1<<63-1 {
		return 0, false
	}
	return int64(n), true
}

// ParseReply parses one reply line (without the trailing newline; trailing
// CRs are tolerated) as the answer to cmd. Unknown trailing fields are
// ignored; unknown error_* words yield StatusErrOther.
//
// A status that cmd can never receive (`acquired` for l, `timeout` for e, a
// grant without a token) is a *ProtocolError: it means the reply stream is
// out of step with the requests, and the connection must not be trusted.
// So is a grant whose token ValidateToken refuses (whitespace, NUL, control
// characters, over MaxLine): the lease could never be renewed or released.
// A grant's lease above MaxSeconds is parsed, not refused; see Reply.Lease.
// An error status is not a Go error here; the caller maps it.
//
// For a cmd outside the defined commands only the status word is checked and
// everything after it is returned in Text.
func ParseReply(line []byte, cmd Command) (Reply, error) {
	// Filling a Reply through a pointer avoids copying the struct through
	// every helper, which was a measurable share of the parse time.
	var rep Reply
	if err := parseReply(&rep, line, cmd); err != nil {
		return Reply{}, err
	}
	return rep, nil
}

func parseReply(rep *Reply, line []byte, cmd Command) error {
	line = trimCR(line)
	word, rest, hasRest := cut(line)
	st := statusOf(word)
	if st == StatusInvalid {
		if IsPush(line) {
			return protoErr(line, "push line where a reply was expected")
		}
		return protoErr(line, "unknown status word")
	}
	rep.Status = st
	rep.Word = statusWords[st]
	if st == StatusErrOther {
		rep.Word = string(word)
	}
	if !cmd.valid() {
		if hasRest {
			rep.Text = string(rest)
		}
		return nil
	}
	switch st {
	case StatusOK:
		return parseOK(rep, line, rest, hasRest, cmd)
	case StatusAcquired:
		if cmd != CmdEnqueue && cmd != CmdSemEnqueue {
			return protoErr(line, "'acquired' in reply to "+cmd.String())
		}
		return parseGrant(rep, line, rest, hasRest)
	case StatusQueued:
		if cmd != CmdEnqueue && cmd != CmdSemEnqueue {
			return protoErr(line, "'queued' in reply to "+cmd.String())
		}
	case StatusTimeout:
		switch cmd {
		case CmdLock, CmdSemLock, CmdWait, CmdSemWait:
		default:
			return protoErr(line, "'timeout' in reply to "+cmd.String())
		}
	case StatusErrNotLeader:
		if addr, _, _ := cut(rest); len(addr) > 0 {
			rep.Text = string(addr)
		}
	}
	return nil
}

func parseOK(rep *Reply, line, rest []byte, hasRest bool, cmd Command) error {
	switch cmd {
	case CmdLock, CmdSemLock, CmdEnqueue, CmdSemEnqueue, CmdWait, CmdSemWait:
		return parseGrant(rep, line, rest, hasRest)
	case CmdRenew, CmdSemRenew:
		secs, more, _ := cut(rest)
		n, ok := parseInt(secs)
		if !hasRest || !ok {
			return protoErr(line, "renew reply without integer seconds")
		}
		rep.Lease = n
		rep.Fence, rep.HasFence = parseFence(more)
	case CmdSignal:
		count, _, _ := cut(rest)
		n, ok := parseInt(count)
		if !hasRest || !ok {
			return protoErr(line, "signal reply without integer count")
		}
		rep.Count = n
	case CmdStats:
		if len(rest) == 0 {
			return protoErr(line, "stats reply without a document")
		}
		rep.Text = string(rest)
	}
	// Bare `ok` answers (r, sr, auth, ping, listen, unlisten) ignore any
	// trailing fields, as a future server might add some.
	return nil
}

// parseGrant parses `<token> <lease>[ <fence>]`.
func parseGrant(rep *Reply, line, rest []byte, hasRest bool) error {
	tok, rest, hasLease := cut(rest)
	if !hasRest || len(tok) == 0 {
		return protoErr(line, "grant without token")
	}
	leaseField, more, _ := cut(rest)
	lease, ok := parseInt(leaseField)
	if !hasLease || !ok {
		return protoErr(line, "grant without integer lease")
	}
	rep.Token = string(tok)
	if reason := tokenProblem(rep.Token); reason != "" {
		// The client could never send this token back (renew, release
		// would fail validation), so the lease would be lost at once while
		// the server keeps the lock. Refusing the reply breaks the
		// connection instead, and the server releases the grant with it.
		return protoErr(line, "grant token the client cannot send back ("+reason+")")
	}
	rep.Lease = lease
	rep.Fence, rep.HasFence = parseFence(more)
	return nil
}

// parseFence reads the decimal fence field of the unreleased fence branch.
// Anything else in that position is an unknown extension and is ignored.
func parseFence(rest []byte) (uint64, bool) {
	f, _, _ := cut(rest)
	return parseUint(f)
}

var sigPrefix = []byte("sig ")

// IsPush reports whether line is an asynchronous `sig ` push line. No reply
// status starts with "sig", so the prefix alone demultiplexes (§6.6).
func IsPush(line []byte) bool { return bytes.HasPrefix(line, sigPrefix) }

// ParsePush parses a `sig <channel> <payload>` line. The payload is
// everything after the second space and may itself contain spaces.
//
// A push no emit could have caused is a protocol error: a channel with '*',
// '>' or TAB (every server refuses them in `signal`), or an empty payload.
// A blank one is let through: v1.11.0 refused only empty payloads. So is a
// channel with NUL: this SDK refuses one in its own requests, but servers
// accept it (§3), and another client's emit must not break the listener.
// The line's length is the reader's to bound (MaxLongArg, §6.6).
func ParsePush(line []byte) (Push, error) {
	line = trimCR(line)
	if !IsPush(line) {
		return Push{}, protoErr(line, "not a sig push")
	}
	ch, payload, ok := cut(line[len(sigPrefix):])
	if !ok || len(ch) == 0 || len(payload) == 0 {
		return Push{}, protoErr(line, "push without channel and payload")
	}
	if bytes.ContainsAny(ch, "*>\t") {
		return Push{}, protoErr(line, "push on a channel no signal can have")
	}
	return Push{Channel: string(ch), Payload: string(payload)}, nil
}

// FenceFromToken extracts the v2.1 fence (big-endian uint64 in the first 16
// hex chars). ok is false when the token is not 32 lowercase hex chars.
//
// Every 32-hex token yields a number, including random pre-v2.1 tokens; only
// the server version tells whether the number is a real fence.
func FenceFromToken(token string) (fence uint64, ok bool) {
	if len(token) != 32 {
		return 0, false
	}
	for i := 0; i < len(token); i++ {
		c := token[i]
		var d uint64
		switch {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case c >= 'a' && c <= 'f':
			d = uint64(c-'a') + 10
		default:
			return 0, false
		}
		if i < 16 {
			fence = fence<<4 | d
		}
	}
	return fence, true
}
