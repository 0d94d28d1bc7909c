package wire

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

var (
	// ErrInvalidArgument matches every *ArgError.
	ErrInvalidArgument = errors.New("dflock: invalid argument")
	// ErrProtocol matches every *ProtocolError.
	ErrProtocol = errors.New("dflock: protocol violation")
	// ErrConnBroken is returned by a Conn after an I/O or framing failure; the
	// connection must be discarded.
	ErrConnBroken = errors.New("dflock: connection broken")
	// ErrLineTooLong matches the *ProtocolError of a line longer than the
	// Conn's ConnOptions.MaxLine (it also matches ErrProtocol). It is the one
	// protocol violation that a larger cap can cure: stats replies grow with
	// the server's key count.
	ErrLineTooLong = errors.New("dflock: line over the cap")
	// ErrRefused matches a request the server refused with the bare
	// `error` or an error word this module does not know (dflock.ErrRefused);
	// here so that a lease lost to a refused renewal (package renew) can
	// match it too.
	ErrRefused = errors.New("dflock: request refused by the server")
	// ErrDraining: the server is shutting down (error_draining, v1.16+;
	// dflock.ErrDraining).
	ErrDraining = errors.New("dflock: server draining")
)

// ArgError names a caller-supplied argument that the server would refuse.
type ArgError struct {
	Arg    string // "command", "key", "token", "pattern", "channel", "payload", "group", "timeout", "lease", "limit", "secret"
	Value  string // the offending value, truncated for display
	Reason string
}

func (e *ArgError) Error() string {
	if e.Value == "" {
		return "dflock: invalid " + e.Arg + ": " + e.Reason
	}
	return "dflock: invalid " + e.Arg + " " + quoteTrunc(e.Value) + ": " + e.Reason
}

// Is makes every *ArgError match ErrInvalidArgument.
func (e *ArgError) Is(target error) bool { return target == ErrInvalidArgument }

// ProtocolError reports a reply line (or bytes) the client cannot make
// sense of.
type ProtocolError struct {
	Line   string // the offending line, truncated
	Reason string

	kind   error // a finer sentinel it also matches (ErrLineTooLong), or nil
	noLine bool  // about bytes or a state, not one line (LinelessProtocolError)
}

// LinelessProtocolError returns a ProtocolError that no one line caused
// (bytes read with no request pending, say): its message names no reply,
// where an empty Line would name the empty one.
func LinelessProtocolError(reason string) *ProtocolError {
	return &ProtocolError{Reason: reason, noLine: true}
}

// WithoutSecret returns a copy of e whose Line has every occurrence of
// secret replaced by "<redacted>", and also the start of one that the
// truncation of Line cut off: a server that echoes the auth token must not
// get it into errors and logs.
func (e *ProtocolError) WithoutSecret(secret string) *ProtocolError {
	c := *e
	if secret != "" {
		line, cut := c.Line, ""
		if len(line) >= keepMax { // protoErr may have cut a secret short
			// after the last whole one, which may end as the secret
			// begins (a token whose first and last bytes are equal)
			from := 0
			if j := strings.LastIndex(line, secret); j >= 0 {
				from = j + len(secret)
			}
			if i := cutSecretAt(line[from:], secret); i >= 0 {
				line, cut = line[:from+i], Redacted
			}
		}
		c.Line = strings.ReplaceAll(line, secret, Redacted) + cut
	}
	return &c
}

// cutSecretAt is where, within its first keepMax bytes, line ends in the
// start of secret (a secret cut off by the end of what was kept, which a
// search for the whole secret cannot see), or -1.
func cutSecretAt(line, secret string) int {
	for i := 0; secret != "" && i < min(len(line), keepMax); i++ {
		if strings.HasPrefix(secret, line[i:]) {
			return i
		}
	}
	return -1
}

func (e *ProtocolError) Error() string {
	if e.noLine {
		return "dflock: protocol violation: " + e.Reason
	}
	return "dflock: protocol violation: " + e.Reason + " in reply " + quoteTrunc(e.Line)
}

// Is makes every *ProtocolError match ErrProtocol, and an over-long line
// ErrLineTooLong as well.
func (e *ProtocolError) Is(target error) bool {
	return target == ErrProtocol || (e.kind != nil && target == e.kind)
}

// displayMax bounds how much of an offending value is shown in a message.
const displayMax = 64

// keepMax bounds how much of an offending value an error retains, so that an
// error about a 64 KiB payload or a 1 MiB reply does not pin that memory.
// It is larger than displayMax so that quoteTrunc can still tell that the
// value was cut.
const keepMax = displayMax + 8

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Back off only over a valid multi-byte rune the cut would split:
	// bytes that are no UTF-8 (a binary payload, a garbled reply) are cut
	// where they are, or a value of them would shrink to nothing.
	for i := n - 1; i >= 0 && i > n-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			if r, size := utf8.DecodeRuneInString(s[i:]); r != utf8.RuneError && i+size > n {
				return s[:i]
			}
			break
		}
	}
	return s[:n]
}

// QuoteValue renders a value as an *ArgError shows it: quoted (so control
// bytes and spaces are visible) and, when longer than 64 bytes, cut and
// followed by "...".
func QuoteValue(s string) string { return quoteTrunc(s) }

// quoteTrunc renders a value for an error message: quoted (so control bytes
// and spaces are visible) and cut to about displayMax bytes.
func quoteTrunc(s string) string {
	if len(s) <= displayMax {
		return strconv.Quote(s)
	}
	return strconv.Quote(truncate(s, displayMax)) + "..."
}

// DisplayWord renders a status word a server sent for an error message:
// as is when it is short and printable ASCII, as every known word is;
// otherwise quoted (so that control bytes cannot forge log lines) and cut
// to about 64 bytes (an unknown error_* word may be as long as the reply
// line cap).
func DisplayWord(w string) string {
	if len(w) <= displayMax {
		plain := true
		for i := 0; i < len(w) && plain; i++ {
			plain = w[i] > ' ' && w[i] < 0x7f
		}
		if plain {
			return w
		}
	}
	return quoteTrunc(w)
}

func argErr(arg, value, reason string) *ArgError {
	return &ArgError{Arg: arg, Value: truncate(value, keepMax), Reason: reason}
}

func intArgErr(arg string, v int64, reason string) *ArgError {
	return &ArgError{Arg: arg, Value: strconv.FormatInt(v, 10), Reason: reason}
}

func protoErr(line []byte, reason string) *ProtocolError {
	if len(line) > keepMax {
		line = line[:keepMax]
	}
	return &ProtocolError{Line: string(line), Reason: reason}
}

// brokenError is the sticky error of a broken Conn. It matches ErrConnBroken
// and unwraps to the failure that broke the connection, so callers can ask
// both "must I discard it?" and "why?".
type brokenError struct{ cause error }

func (e *brokenError) Error() string {
	return "dflock: connection broken: " + strings.TrimPrefix(e.cause.Error(), "dflock: ")
}

func (e *brokenError) Is(target error) bool { return target == ErrConnBroken }
func (e *brokenError) Unwrap() error        { return e.cause }
