package dflockotel

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/wire"
)

// errorTypes are the values of error.type for dflock's errors, in the
// order they are matched: one error often matches several sentinels (a
// timed-out or cancelled acquire matches dflock.ErrNotAcquired, a lease
// lost to an error_draining reply matches ErrDraining), and the first
// listed names it. The list is the one the package doc gives.
var errorTypes = [...]struct {
	err  error
	name string
}{
	{dflock.ErrLockLost, "lock_lost"},
	{dflock.ErrLeaseExpired, "lease_expired"},
	{dflock.ErrTimeout, "timeout"},
	{context.DeadlineExceeded, "timeout"}, // a deadline outside an acquire (Release)
	{context.Canceled, "canceled"},
	{dflock.ErrClosed, "closed"},
	{dflock.ErrTicketDone, "ticket_done"},
	{dflock.ErrInvalidArgument, "invalid_argument"},
	{dflock.ErrAuth, "auth"},
	{dflock.ErrServerUnavailable, "server_unavailable"},
	{wire.ErrConnBroken, "connection_broken"}, // one the client broke itself
	{dflock.ErrDraining, "draining"},
	{dflock.ErrMaxLocks, "max_locks"},
	{dflock.ErrMaxWaiters, "max_waiters"},
	{dflock.ErrLimitMismatch, "limit_mismatch"},
	{dflock.ErrNotSupported, "not_supported"},
	{dflock.ErrRefused, "refused"},
	{dflock.ErrNotAcquired, "not_acquired"},
}

// errorType returns error.type for err, a failed operation's error: the
// name of the first of dflock's errors it matches, or else what
// semconv.ErrorType makes of it, the error's type name. That is for the
// program's own error failing a WithLock, which no metric records, so the
// metrics' error.type stays within the list and a type or two.
func errorType(err error) attribute.KeyValue {
	for _, e := range errorTypes {
		if errors.Is(err, e.err) {
			return semconv.ErrorTypeKey.String(e.name)
		}
	}
	return semconv.ErrorType(err)
}
