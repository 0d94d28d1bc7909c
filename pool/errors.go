package pool

import (
	"errors"
	"strings"

	"github.com/dflock-sdk/go/wire"
)

// ServerError is an error about one server. It matches both Err (a state:
// ErrUnavailable, ErrAuth, ErrClosed, wire.ErrConnBroken, a context error,
// ...) and Cause (what happened underneath, if anything) with errors.Is and
// errors.As.
type ServerError struct {
	Addr  string
	Err   error
	Cause error
}

func (e *ServerError) Error() string {
	var b strings.Builder
	b.WriteString("dflock: server ")
	b.WriteString(e.Addr)
	b.WriteString(": ")
	b.WriteString(strings.TrimPrefix(e.Err.Error(), "dflock: "))
	if e.Cause != nil {
		b.WriteString(": ")
		b.WriteString(strings.TrimPrefix(e.Cause.Error(), "dflock: "))
	}
	return b.String()
}

// Unwrap returns Err and Cause.
func (e *ServerError) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Cause}
}

func serverErr(addr string, err, cause error) *ServerError {
	return &ServerError{Addr: addr, Err: err, Cause: cause}
}

// brokenErr is the sticky error of a broken Conn: it matches
// wire.ErrConnBroken and unwraps to cause. A cause that is itself a wire
// "connection broken" error is unwrapped once so the message does not say it
// twice.
//
// A break the server caused — an I/O error, EOF, reset, write timeout, a
// stall broken by the keepalive, a protocol violation — also matches
// ErrUnavailable, whichever path noticed it first (a caller's Do, the
// reader, a flusher, the janitor), so that a call made in the instant after
// a server crashed reports the same sentinel as one made after the pool
// noticed. A break the client made (Destroy, Release of a pinned or busy
// connection, Pool.Close) does not: the server is fine.
func brokenErr(addr string, cause error) *ServerError {
	if errors.Is(cause, wire.ErrConnBroken) {
		if u := errors.Unwrap(cause); u != nil {
			cause = u
		}
	}
	if errors.Is(cause, errDestroyed) || errors.Is(cause, errWithdrawn) || errors.Is(cause, ErrClosed) {
		return serverErr(addr, wire.ErrConnBroken, cause)
	}
	return serverErr(addr, ErrUnavailable, &connBrokenError{cause: cause})
}

// connBrokenError is the cause of a server-caused break: it reads
// "connection broken: <cause>", matches wire.ErrConnBroken and unwraps to
// cause.
type connBrokenError struct{ cause error }

func (e *connBrokenError) Error() string {
	return "connection broken: " + strings.TrimPrefix(e.cause.Error(), "dflock: ")
}

func (e *connBrokenError) Is(target error) bool { return target == wire.ErrConnBroken }
func (e *connBrokenError) Unwrap() error        { return e.cause }

var (
	errDestroyed   = errors.New("connection destroyed")
	errWithdrawn   = errors.New("connection destroyed to withdraw the request")
	errEnded       = errors.New("wait-pool connection used after Release, Destroy or Close")
	errUnsolicited = errors.New("reply with no pending request")
	// errIdleTimeout is the cause of a bare `error` with nothing pending:
	// what dflockd writes before it closes a connection that sent nothing
	// for its --read-timeout. A keepalive of at most half of that would
	// have kept it open, so the client was told a longer one, or none.
	errIdleTimeout = errors.New("the server closed the connection as idle (an unsolicited `error`, as dflockd writes at its --read-timeout): " +
		"its read timeout is shorter than the client allows for; declare it (dflock.WithServerReadTimeout) or shorten the keepalive")
	errNoReply   = errors.New("no reply for 2×KeepAlive (server stalled or unreachable)")
	errAbandoned = errors.New("request unanswered in time; connection abandoned (server stalled or unreachable)")
)

func isUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }

// redact returns err with every occurrence of secret (the auth token) in
// its text replaced: a server that echoes the token back, as a reply or
// inside one, must not get it into the errors, logs and hooks the text of
// an error reaches. errors.Is still matches what err matched; errors.As
// finds the *wire.ProtocolError in err's chain, if any, as a scrubbed copy.
func redact(err error, secret string) error {
	if err == nil || secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	r := &redactedError{msg: strings.ReplaceAll(err.Error(), secret, wire.Redacted), orig: err}
	var pe *wire.ProtocolError
	if errors.As(err, &pe) {
		r.pe = pe.WithoutSecret(secret)
	}
	return r
}

type redactedError struct {
	msg  string
	orig error               // for Is only: its text holds the secret
	pe   *wire.ProtocolError // scrubbed; nil if orig holds none
}

func (e *redactedError) Error() string        { return e.msg }
func (e *redactedError) Is(target error) bool { return errors.Is(e.orig, target) }

func (e *redactedError) Unwrap() error {
	if e.pe != nil {
		return e.pe
	}
	return nil
}
