package dflock

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/dflock-sdk/go/pool"
	"github.com/dflock-sdk/go/renew"
	"github.com/dflock-sdk/go/wire"
)

// Sentinel errors. Every error returned by this package matches at most a
// few of them with errors.Is; the detail (operation, key, server, reply)
// is in an *Error.
var (
	// ErrNotAcquired: the lock or semaphore slot was not acquired because
	// it was held or the caller stopped waiting. TryLock and TrySemaphore
	// return it when the key is held; ErrTimeout matches it, and so does
	// the error of an acquire whose context ended or that Client.Close
	// ended (or that came after Close). Other errors of an acquire
	// (ErrServerUnavailable, ErrAuth, …) are failures. Either way the
	// caller holds nothing (see the package doc for what a server may
	// still hold).
	ErrNotAcquired = errors.New("dflock: not acquired")

	// ErrTimeout: waiting for a lock or slot timed out, either by
	// AcquireTimeout or by the context's deadline (the error then also
	// matches context.DeadlineExceeded). It also matches ErrNotAcquired.
	ErrTimeout error = timeoutError{}

	// ErrLockLost: a held lease was lost — a renewal was refused, its
	// owning connection failed, or no renewal was confirmed in time by the
	// client's own clock — or Release found that the server no longer held
	// it. It is the Err of a lost Lock or Semaphore, the cause of its
	// cancelled Context, and what Release returns for it.
	ErrLockLost = renew.ErrLost

	// ErrReleased is the Err of a Lock or Semaphore once Release (or
	// Client.Close) ended it, whatever Release returned: a Release that
	// finds the lease already gone on the server returns an error matching
	// ErrLockLost (and counts a loss), but Err is ErrReleased.
	ErrReleased = renew.ErrReleased

	// ErrClosed: the Client is closed.
	ErrClosed = pool.ErrClosed

	// ErrAuth: the server refused the auth token (see WithAuthToken), or
	// wants one and none is configured, or refused it moments ago: after a
	// refusal, calls that need a new connection to that server fail at
	// once with ErrAuth for 50 ms, doubling up to 2 s while the server
	// keeps refusing, rather than each dialling again; a server that
	// starts taking the token serves calls again within that hold.
	ErrAuth = pool.ErrAuth

	// ErrServerUnavailable: the key's server cannot be reached right now.
	// The call failed fast; keys are never re-routed to another server.
	ErrServerUnavailable = pool.ErrUnavailable

	// ErrInvalidArgument matches every *ArgError: input the server would
	// refuse, rejected before anything was sent.
	ErrInvalidArgument = wire.ErrInvalidArgument

	// ErrMaxLocks: the server's cap on distinct keys is reached (error_max_locks).
	ErrMaxLocks = errors.New("dflock: server key limit reached")

	// ErrMaxWaiters: the key's waiter queue is full on the server
	// (error_max_waiters). Servers answer a try on such a key so too; the
	// error of TryLock and TrySemaphore then matches ErrNotAcquired as well.
	ErrMaxWaiters = errors.New("dflock: server waiter limit reached")

	// ErrLimitMismatch: the semaphore exists on the server with another
	// limit (error_limit_mismatch). On servers before v1.14 a lock and a
	// semaphore of the same key also conflict this way.
	ErrLimitMismatch = errors.New("dflock: semaphore limit mismatch")

	// ErrLeaseExpired: a granted slot's lease lapsed before the grant was
	// observed (error_lease_expired; rare, two-phase wait or v1.15+ servers;
	// also a ticket's place granted while nobody waited, whose lease ran
	// out before Wait). An acquire refused so also matches ErrNotAcquired.
	ErrLeaseExpired = errors.New("dflock: lease expired before it was observed")

	// ErrDraining: the server is shutting down (error_draining, v1.16+).
	// A lease lost to a renewal so answered matches it too, beside
	// ErrLockLost.
	ErrDraining = pool.ErrDraining

	// ErrNotSupported: the server version does not support the operation.
	// For Emit and Listen it means the server answered the bare `error`,
	// which it also does for a listen beyond --max-subscriptions, a
	// payload too long for it, or a request that reached it while paused
	// past its read timeout (not applied; a retry may succeed): see
	// docs/signals.md.
	ErrNotSupported = errors.New("dflock: not supported by this server")

	// ErrRefused: the server answered the bare `error` (or an error word
	// this package does not know) — a request the server considers invalid,
	// an unknown token, a wait interrupted by a server shutdown, or a
	// request that reached the server after its read deadline had passed
	// (a server process paused past it, as by SIGSTOP: it times the
	// connection out and closes it; the request was not applied, and a
	// retry on a new connection may succeed; a Release so answered is sent
	// again aside). The reply word is in *Error.Reply. A lease lost to a
	// renewal so answered (its Err, Context's cause, the error of Renew or
	// Release) matches it too, beside ErrLockLost; the word is then in the
	// loss's text.
	ErrRefused = wire.ErrRefused

	// ErrTicketDone: the Ticket was already waited for, timed out or cancelled.
	ErrTicketDone = errors.New("dflock: ticket already used")
)

// ArgError describes an invalid argument (it names the argument: "key",
// "limit", "timeout", "lease", "server", ...). It matches ErrInvalidArgument.
type ArgError = wire.ArgError

// timeoutError is the type of ErrTimeout, so that it can also match
// ErrNotAcquired.
type timeoutError struct{}

func (timeoutError) Error() string        { return "dflock: timed out" }
func (timeoutError) Is(target error) bool { return target == ErrNotAcquired }

// Timeout reports true, like the net package's timeout errors.
func (timeoutError) Timeout() bool { return true }

// Error is the detailed error of an operation on one key or server. It
// unwraps to a sentinel (and, when a context ended the operation, to the
// context's error as well), so test it with errors.Is and read it with
// errors.As.
//
// Its message reads like
//
//	dflock: lock "orders:42" on 127.0.0.1:6388: server refused: error_max_locks
type Error struct {
	// Op is the operation: "lock", "trylock", "semaphore", "trysemaphore",
	// "enqueue", "enqueue semaphore", "wait", "wait semaphore", "release",
	// "renew" (these two prefixed "semaphore " for a semaphore slot), "stats",
	// "emit" or "listen".
	Op     string
	Key    string // the lock or semaphore key, if any
	Server string // the server address, if the operation got that far
	Reply  string // the server's reply word, when the server refused the operation's request (a refused renewal's is in Err's text)
	Err    error  // what went wrong; matches one or more sentinels
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("dflock: ")
	b.WriteString(e.Op)
	if e.Key != "" {
		b.WriteByte(' ')
		b.WriteString(strconv.Quote(e.Key))
	}
	if e.Server != "" {
		b.WriteString(" on ")
		b.WriteString(e.Server)
	}
	b.WriteString(": ")
	switch {
	case e.Reply != "":
		b.WriteString("server refused: ")
		b.WriteString(e.Reply)
		if lost, ok := e.Err.(*renew.LostError); ok && lost.Cause != nil {
			// A release that found the lease gone (or, for the bare
			// error, perhaps did not apply): the reply alone would not
			// say that the lease was lost, nor why.
			if lost.Semaphore {
				b.WriteString(": semaphore slot lost: ")
			} else {
				b.WriteString(": lock lost: ")
			}
			b.WriteString(strings.TrimPrefix(trimPrefix(lost.Cause.Error()), "release refused: "))
		}
	case e.Err != nil:
		b.WriteString(errText(e.Err, e.Server))
	default:
		b.WriteString("unknown error")
	}
	return b.String()
}

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

func trimPrefix(s string) string { return strings.TrimPrefix(s, "dflock: ") }

// errText renders err without the "dflock: " prefix and without repeating
// the server address when err is the pool's error about that same server.
func errText(err error, server string) string {
	var se *pool.ServerError
	if errors.As(err, &se) && se == err && se.Addr == server {
		s := trimPrefix(se.Err.Error())
		if se.Cause != nil {
			s += ": " + trimPrefix(se.Cause.Error())
		}
		return s
	}
	return trimPrefix(err.Error())
}

// bothError matches two errors at once: a domain error (ErrNotAcquired,
// ErrTimeout, ErrClosed, ...) and the context error that caused it.
type bothError struct {
	domain error
	cause  error
}

func (e *bothError) Error() string {
	if e.cause == nil { // never built so; an error must still print
		return "dflock: " + trimPrefix(e.domain.Error())
	}
	return "dflock: " + trimPrefix(e.domain.Error()) + ": " + trimPrefix(e.cause.Error())
}

func (e *bothError) Unwrap() []error { return []error{e.domain, e.cause} }

// errTicketUsed is the cause of ErrTicketDone for a Wait on a ticket
// already waited for (or being waited for), not cancelled: a program error,
// which a Tracer sees Failed, not Cancelled.
var errTicketUsed = errors.New("Wait called again on a ticket already waited for")

// errAcquireTimeout is the cancellation cause of the local AcquireTimeout
// deadline, so it can be told apart from the caller's own deadline.
var errAcquireTimeout = errors.New("dflock: acquire timeout")

// failedError is the error of an operation that failed with err (for
// signals: a Listen or Emit with no domain meaning of "gave up") while its
// context or the Client may have ended: an error that the end caused — a
// dial cancelled by Close, say — is reported as that end (ctxError), not as
// a context.Canceled the caller never asked for. Close's cancellation
// reaches opCtx asynchronously (opContext), so c.ctx is checked as well.
func (c *Client) failedError(ctx, opCtx context.Context, err error) error {
	if opCtx.Err() != nil || c.ctx.Err() != nil {
		return connecting(c.ctxError(ctx, opCtx, nil), err)
	}
	return err
}

// connecting adds to ended, the error of an operation that its context
// ended while the pool was getting it a connection, what the pool was
// doing then — dialling (which step), waiting to dial again after a failed
// dial (and why it failed) — taken from poolErr, the pool's error: one
// whose state is the context's error and whose Cause says what was under
// way. Otherwise a TLS handshake that stalls, a server at its connection
// limit and a contended key all read "context deadline exceeded". In words
// only: ended alone says what the error matches (wrapping the dial's error
// would make a caller that gave up match ErrServerUnavailable).
func connecting(ended, poolErr error) error {
	var se *pool.ServerError
	if ended == nil || !errors.As(poolErr, &se) || se.Cause == nil ||
		!errors.Is(se.Err, context.Canceled) && !errors.Is(se.Err, context.DeadlineExceeded) {
		return ended
	}
	return &connectingError{ended: ended, during: trimPrefix(se.Cause.Error())}
}

// connectingError is ended, printed with what the pool was doing.
type connectingError struct {
	ended  error
	during string
}

func (e *connectingError) Error() string {
	return "dflock: " + trimPrefix(e.ended.Error()) + " (while connecting: " + e.during + ")"
}

func (e *connectingError) Unwrap() error { return e.ended }

// withCause is err, ctx's error, with the cancellation cause the caller
// gave (context.WithCancelCause, WithTimeoutCause) kept visible beside it.
func withCause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && c != err {
		return &bothError{domain: err, cause: c}
	}
	return err
}

// ctxCause is ctx's error with its cause (withCause), for a wait that ended
// with ctx.
func ctxCause(ctx context.Context) error { return withCause(ctx, ctx.Err()) }

// ctxError builds the error for an operation ended by opCtx (the operation's
// context, derived from the caller's ctx). notDone is the domain meaning of
// "the caller gave up" for this operation (ErrNotAcquired for acquires, nil
// for others).
func (c *Client) ctxError(ctx, opCtx context.Context, notDone error) error {
	cause := context.Cause(opCtx)
	switch {
	case errors.Is(cause, errAcquireTimeout):
		return ErrTimeout
	case ctx.Err() == nil && c.ctx.Err() != nil:
		// The caller's context is fine: the Client was closed under it.
		return ErrClosed
	}
	err := ctx.Err()
	if err == nil {
		err = opCtx.Err()
	}
	if err == nil { // neither ended: a caller's mistake, but not a nil cause
		return notDone
	}
	err = withCause(ctx, err)
	switch {
	case errors.Is(err, context.DeadlineExceeded) && notDone != nil:
		return &bothError{domain: ErrTimeout, cause: err}
	case notDone != nil:
		return &bothError{domain: notDone, cause: err}
	}
	return err
}

// closedNotAcquired passes on an acquire's result (v: the held lease or the
// ticket), making an error of one that Client.Close ended, or that came
// after it, match ErrNotAcquired as well as ErrClosed, as the error of one
// whose context ended does: the pool reports the Client's end as ErrClosed
// wherever it finds it (a wait, a dial, a closed pool). Every acquire goes
// through the Tracer's wrappers (trace.go), which apply it.
func closedNotAcquired[T any](v T, err error) (T, error) {
	if err != nil {
		err = notAcquiredIfClosed(err)
	}
	return v, err
}

// notAcquiredIfClosed is closedNotAcquired's error path, apart so that its
// errors.As target (which escapes) costs nothing on success.
func notAcquiredIfClosed(err error) error {
	var e *Error
	if !errors.Is(err, ErrClosed) || errors.Is(err, ErrNotAcquired) || !errors.As(err, &e) {
		return err
	}
	e.Err = &bothError{domain: ErrNotAcquired, cause: e.Err}
	return err
}

// replyError maps a refusing reply status to a sentinel.
func replyError(r wire.Reply) (word string, sentinel error) {
	switch r.Status {
	case wire.StatusTimeout:
		return "", ErrTimeout
	case wire.StatusErrAuth:
		return "error_auth", ErrAuth
	case wire.StatusErrMaxLocks:
		return "error_max_locks", ErrMaxLocks
	case wire.StatusErrMaxWaiters:
		return "error_max_waiters", ErrMaxWaiters
	case wire.StatusErrLimitMismatch:
		return "error_limit_mismatch", ErrLimitMismatch
	case wire.StatusErrLeaseExpired:
		return "error_lease_expired", ErrLeaseExpired
	case wire.StatusErrDraining:
		return "error_draining", ErrDraining
	case wire.StatusErrAlreadyEnqueued:
		return "error_already_enqueued", ErrRefused
	case wire.StatusErrNotEnqueued:
		return "error_not_enqueued", ErrRefused
	case wire.StatusErrNotLeader:
		return "error_not_leader", ErrRefused
	case wire.StatusError:
		return "error", ErrRefused
	}
	if r.Word != "" {
		return wire.DisplayWord(r.Word), ErrRefused
	}
	return "", &wire.ProtocolError{Line: r.Status.String(), Reason: "unexpected reply status"}
}

// connectingIn is connecting for ferr, an *Error whose Err a failure made
// from the pool's error poolErr (see connecting).
func connectingIn(ferr, poolErr error) error {
	if e, ok := ferr.(*Error); ok && e.Err != poolErr {
		e.Err = connecting(e.Err, poolErr)
	}
	return ferr
}
