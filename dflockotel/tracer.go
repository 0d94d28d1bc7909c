package dflockotel

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/wire"
)

// Tracer returns the dflock.Tracer that Options installs: a span for every
// acquire and release, and the acquire and wait histograms. A program
// with a Tracer of its own calls both from one that it installs, passing
// each End the context its Start returned (or one derived from it): the
// End calls end the span that this Tracer's Start began, whatever spans the
// program started beneath it.
func (in *Instrumentation) Tracer() dflock.Tracer { return (*tracer)(in) }

type tracer Instrumentation

// spanNames maps AcquireInfo.Op (lock first, semaphore second) to the name
// of the span: the method the program called.
var spanNames = map[string][2]string{
	"lock":          {"dflock.Lock", "dflock.Lock"},
	"trylock":       {"dflock.TryLock", "dflock.TryLock"},
	"semaphore":     {"dflock.Semaphore", "dflock.Semaphore"},
	"trysemaphore":  {"dflock.TrySemaphore", "dflock.TrySemaphore"},
	"enqueue":       {"dflock.Enqueue", "dflock.EnqueueSemaphore"},
	"wait":          {"dflock.Ticket.Wait", "dflock.SemaphoreTicket.Wait"},
	"withlock":      {"dflock.WithLock", "dflock.WithLock"},
	"withsemaphore": {"dflock.WithSemaphore", "dflock.WithSemaphore"},
}

func spanName(op string, semaphore bool) string {
	i := 0
	if semaphore {
		i = 1
	}
	if n, ok := spanNames[op]; ok {
		return n[i]
	}
	return "dflock." + op
}

// scoped reports whether op is WithLock or WithSemaphore, whose span covers
// the acquire, the function and the release. Their inner acquire is
// reported on its own, so the acquire histograms leave them out.
func scoped(op string) bool { return op == "withlock" || op == "withsemaphore" }

func (t *tracer) AcquireStart(ctx context.Context, info dflock.AcquireInfo) context.Context {
	kind := trace.SpanKindClient
	if scoped(info.Op) {
		// The span covers the program's function; its acquire and
		// release are the client spans beneath it.
		kind = trace.SpanKindInternal
	}
	base := t.sets.get(info.Server).base // server and WithAttributes
	attrs := make([]attribute.KeyValue, 0, len(base)+3)
	attrs = append(attrs, keyOperation.String(info.Op))
	attrs = append(attrs, base...)
	if t.keyAttr {
		attrs = append(attrs, keyKey.String(info.Key))
	}
	if info.Semaphore {
		attrs = append(attrs, keyLimit.Int(info.Limit))
	}
	ctx, span := t.tracer.Start(ctx, spanName(info.Op, info.Semaphore),
		trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
	return t.withOwnSpan(ctx, span)
}

// ownSpanKey holds, in the context AcquireStart and ReleaseStart return, the
// span they started. The End calls end that span, not the context's current
// one: a Tracer that wraps this one may have started a span of its own
// beneath it, which would otherwise be taken for this one (and this one
// never ended).
// The key names its Instrumentation: a program may compose two (two
// backends), and each must find its own span.
type ownSpanKey struct{ t *tracer }

func (t *tracer) withOwnSpan(ctx context.Context, span trace.Span) context.Context {
	return context.WithValue(ctx, ownSpanKey{t}, span)
}

func (t *tracer) ownSpan(ctx context.Context) trace.Span {
	if span, ok := ctx.Value(ownSpanKey{t}).(trace.Span); ok {
		return span
	}
	return trace.SpanFromContext(ctx)
}

func (t *tracer) AcquireEnd(ctx context.Context, info dflock.AcquireInfo, res dflock.AcquireResult) {
	outcome := keyOutcome.String(res.Outcome.String())
	path := keyPath.String(res.Path.String())
	failed := res.Err != nil && !expectedRefusal(res)
	var errType attribute.KeyValue
	if failed {
		errType = errorType(res.Err)
	}
	if !scoped(info.Op) {
		base := t.sets.get(info.Server).base
		mattrs := make([]attribute.KeyValue, 0, len(base)+4)
		mattrs = append(mattrs, base...)
		mattrs = append(mattrs, keyOperation.String(info.Op), outcome, path)
		if failed {
			mattrs = append(mattrs, errType)
		}
		set := metric.WithAttributeSet(attribute.NewSet(mattrs...))
		t.acquireDuration.Record(ctx, res.Duration.Seconds(), set)
		if res.Waited > 0 { // not a ticket granted at once, though pinned
			t.waitDuration.Record(ctx, res.Waited.Seconds(), set)
		}
	}

	span := t.ownSpan(ctx)
	defer span.End() // recording or not, as the API asks
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(outcome, path)
	if res.Waited > 0 {
		span.SetAttributes(keyWaited.Float64(res.Waited.Seconds()))
	}
	if res.Outcome == dflock.Granted && res.Lease.TTL > 0 {
		span.SetAttributes(keyTTL.Float64(res.Lease.TTL.Seconds()))
	}
	if failed {
		span.SetAttributes(errType)
		msg := t.recordError(span, res.Err, info.Key)
		desc := res.Outcome.String()
		if res.Outcome == dflock.Granted {
			// A scoped call whose lock was granted failed in the
			// program's function (or in the release after it).
			desc = msg
		}
		span.SetStatus(codes.Error, desc)
	}
}

// recordError records err on span as span.RecordError does, and returns
// the message it recorded. With WithKeyAttribute(false) the key is
// replaced by <key> wherever dflock's errors show it: quoted whole (Error,
// the loss errors), or quoted and cut (an invalid key's ArgError,
// wire.QuoteValue). Text of the program's own (fn's error) is left as it
// is: replacing the raw key anywhere would garble it, and the server's
// address, for a short key.
func (t *tracer) recordError(span trace.Span, err error, key string) string {
	msg := err.Error()
	if t.keyAttr || key == "" {
		span.RecordError(err)
		return msg
	}
	out := strings.ReplaceAll(msg, strconv.Quote(key), `"<key>"`)
	if cut := wire.QuoteValue(key); cut != strconv.Quote(key) {
		out = strings.ReplaceAll(out, cut, `"<key>"...`)
	}
	if out == msg {
		span.RecordError(err)
		return msg
	}
	span.AddEvent(semconv.ExceptionEventName, trace.WithAttributes(
		semconv.ExceptionType(exceptionType(err)), semconv.ExceptionMessage(out)))
	return out
}

// exceptionType names err's type as span.RecordError does.
func exceptionType(err error) string {
	t := reflect.TypeOf(err)
	if t.PkgPath() == "" && t.Name() == "" {
		return t.String()
	}
	return t.PkgPath() + "." + t.Name()
}

// expectedRefusal reports whether res is a try that found the key held: an
// answer the program asked for, not a failure, so the span keeps status
// Unset. A try the server refused with an error (a limit, a mismatch) is a
// failure, and so is a grant whose lease lapsed before the caller had it
// (a ticket's Wait, a late grant): it too is "not acquired", but no
// program asked for it.
func expectedRefusal(res dflock.AcquireResult) bool {
	return res.Outcome == dflock.Refused && errors.Is(res.Err, dflock.ErrNotAcquired) &&
		!errors.Is(res.Err, dflock.ErrLeaseExpired)
}

func (t *tracer) ReleaseStart(ctx context.Context, info dflock.LeaseInfo) context.Context {
	name := "dflock.Lock.Release"
	if info.Semaphore {
		name = "dflock.Semaphore.Release"
	}
	base := t.sets.get(info.Server).base
	attrs := make([]attribute.KeyValue, 0, len(base)+2)
	attrs = append(attrs, keyOperation.String("release"))
	attrs = append(attrs, base...)
	if t.keyAttr {
		attrs = append(attrs, keyKey.String(info.Key))
	}
	ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return t.withOwnSpan(ctx, span)
}

func (t *tracer) ReleaseEnd(ctx context.Context, info dflock.LeaseInfo, err error) {
	span := t.ownSpan(ctx)
	if err != nil {
		span.SetAttributes(errorType(err))
		t.recordError(span, err, info.Key)
		span.SetStatus(codes.Error, "release failed")
	}
	span.End()
}

// Hooks returns the dflock.Hooks that Options installs: dial and renewal
// histograms and the count of broken connections. They run on the
// Client's callback goroutine, never on one that renews or reads.
func (in *Instrumentation) Hooks() dflock.Hooks {
	return dflock.Hooks{
		OnDial:         in.onDial,
		OnRenewalBatch: in.onRenewalBatch,
		OnConnBroken:   in.onConnBroken,
	}
}

func (in *Instrumentation) onDial(d dflock.DialInfo) {
	base := in.sets.get(d.Server).base
	attrs := make([]attribute.KeyValue, 0, len(base)+3)
	attrs = append(attrs, base...)
	attrs = append(attrs, keyConnRole.String(d.Role))
	outcome := dialOutcomes[0]
	if d.Err != nil {
		outcome = dialOutcomes[1]
		attrs = append(attrs, errorType(d.Err))
	}
	attrs = append(attrs, keyDialOutcome.String(outcome))
	in.dialDuration.Record(context.Background(), d.Duration.Seconds(), metric.WithAttributes(attrs...))
}

func (in *Instrumentation) onRenewalBatch(b dflock.RenewalBatchInfo) {
	set := metric.WithAttributeSet(in.sets.get(b.Server).plain)
	ctx := context.Background()
	in.renewalSize.Record(ctx, int64(b.Size), set)
	// A batch without an answer has no round trip to speak of; its
	// renewals show as unanswered in dflock.client.renewals.
	if b.Err == nil {
		in.renewalDuration.Record(ctx, b.Latency.Seconds(), set)
	}
}

// onConnBroken counts the connections that broke or were destroyed, not
// those Client.Close closes: a graceful Close (every deploy) is not a burst
// of broken connections to alert on.
func (in *Instrumentation) onConnBroken(server string, err error) {
	if errors.Is(err, dflock.ErrClosed) {
		return
	}
	in.connBroken.Add(context.Background(), 1, metric.WithAttributeSet(in.sets.get(server).plain))
}
