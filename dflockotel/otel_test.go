package dflockotel

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/dflock-sdk/go/dflock"
)

func serverKVs(t *testing.T, addr string) []attribute.KeyValue {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	p, err := strconv.Atoi(port)
	require.NoError(t, err)
	return []attribute.KeyValue{keyServerAddress.String(host), keyServerPort.Int(p)}
}

func TestLockOnTheLaneRecordsAClientSpanAndTheAcquireHistogram(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := testCtx(t)

	l, err := h.c.Lock(ctx, "orders:1")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))

	srv := serverKVs(t, h.srv.Addr())
	spans := h.spansNamed("dflock.Lock")
	require.Len(t, spans, 1)
	s := spans[0]
	assert.Equal(t, trace.SpanKindClient, s.SpanKind())
	assert.Equal(t, codes.Unset, s.Status().Code)
	assert.True(t, has(spanAttrs(s), append(srv,
		keyOperation.String("lock"),
		keyKey.String("orders:1"),
		keyOutcome.String("granted"),
		keyPath.String("lane"),
	)...), "attributes: %v", s.Attributes())
	_, waited := spanValue(s, keyWaited)
	assert.False(t, waited, "a grant on the lane did not wait")

	rel := h.spansNamed("dflock.Lock.Release")
	require.Len(t, rel, 1)
	assert.Equal(t, trace.SpanKindClient, rel[0].SpanKind())
	assert.Equal(t, codes.Unset, rel[0].Status().Code)
	assert.True(t, has(spanAttrs(rel[0]), append(srv, keyKey.String("orders:1"))...))

	rm := h.collect(t)
	pts := histogramPoints(rm, "dflock.client.acquire.duration", append(srv,
		keyOperation.String("lock"), keyOutcome.String("granted"), keyPath.String("lane"))...)
	require.Len(t, pts, 1)
	assert.Equal(t, uint64(1), pts[0].Count)
	assert.Positive(t, pts[0].Sum)
	assert.Empty(t, histogramPoints(rm, "dflock.client.acquire.wait.duration"), "nothing waited")
}

func TestLockAfterWaitingRecordsTheWait(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := testCtx(t)
	srv := serverKVs(t, h.srv.Addr())

	first, err := h.c.Lock(ctx, "k")
	require.NoError(t, err)
	type result struct {
		l   *dflock.Lock
		err error
	}
	got := make(chan result, 1)
	go func() {
		l, err := h.c.Lock(ctx, "k")
		got <- result{l, err}
	}()
	awaitWaiters(t, ctx, h.srv, "k", 1)

	// While it waits, the observed instruments show it.
	rm := h.collect(t)
	v, ok := intValue(rm, "dflock.client.acquire.waiting", srv...)
	require.True(t, ok)
	assert.Equal(t, int64(1), v)

	require.NoError(t, first.Release(ctx))
	var second result
	select {
	case second = <-got:
	case <-ctx.Done():
		t.Fatal("the second Lock was never granted")
	}
	require.NoError(t, second.err)
	defer func() { require.NoError(t, second.l.Release(ctx)) }()

	spans := h.spansNamed("dflock.Lock")
	require.Len(t, spans, 2)
	s := spans[1]
	assert.True(t, has(spanAttrs(s), keyOutcome.String("granted"), keyPath.String("waitpool")), "attributes: %v", s.Attributes())
	w, ok := spanValue(s, keyWaited)
	require.True(t, ok, "a grant after waiting carries the wait")
	assert.Positive(t, w.AsFloat64())

	rm = h.collect(t)
	waits := histogramPoints(rm, "dflock.client.acquire.wait.duration", append(srv,
		keyOperation.String("lock"), keyOutcome.String("granted"), keyPath.String("waitpool"))...)
	require.Len(t, waits, 1)
	assert.Equal(t, uint64(1), waits[0].Count)
	assert.Positive(t, waits[0].Sum)
	assert.Len(t, histogramPoints(rm, "dflock.client.acquire.duration", keyPath.String("waitpool")), 1)
	assert.Len(t, histogramPoints(rm, "dflock.client.acquire.duration", keyPath.String("lane")), 1)

	// The lease granted after waiting pins its wait-pool connection.
	v, ok = intValue(rm, "dflock.client.connection.count", append(srv, keyConnRole.String("wait"), keyConnState.String("pinned"))...)
	require.True(t, ok)
	assert.Equal(t, int64(1), v)
	v, ok = intValue(rm, "dflock.client.acquire.waiting", srv...)
	require.True(t, ok)
	assert.Zero(t, v)
}

func TestObservedLeasesConnectionsAndServerState(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := testCtx(t)
	srv := serverKVs(t, h.srv.Addr())

	a, err := h.c.TryLock(ctx, "a")
	require.NoError(t, err)
	b, err := h.c.TrySemaphore(ctx, "b", 3)
	require.NoError(t, err)

	rm := h.collect(t)
	v, ok := intValue(rm, "dflock.client.lease.count", srv...)
	require.True(t, ok)
	assert.Equal(t, int64(2), v)
	v, ok = intValue(rm, "dflock.client.server.up", srv...)
	require.True(t, ok)
	assert.Equal(t, int64(1), v)
	lane, ok := intValue(rm, "dflock.client.connection.count", append(srv, keyConnRole.String("lane"))...)
	require.True(t, ok)
	assert.Positive(t, lane, "the tries went over the control lane")
	m, ok := metricNamed(rm, "dflock.client.connection.count")
	require.True(t, ok)
	for _, set := range pointAttrs(m.Data) {
		role, hasRole := set.Value(keyConnRole)
		state, hasState := set.Value(keyConnState)
		lingering := state.AsString() == "lingering"
		assert.Equal(t, role.AsString() == "wait" || lingering, hasState, "only wait-pool and lingering connections have a state: %v", set.ToSlice())
		assert.Equal(t, !lingering, hasRole, "every connection but a lingering one has a role: %v", set.ToSlice())
	}
	for _, kind := range connKinds {
		_, ok := intValue(rm, "dflock.client.connection.count", append(srv, kind...)...)
		assert.True(t, ok, "%v is reported, zero or not", kind)
	}
	dials, ok := intValue(rm, "dflock.client.connection.dials", append(srv, keyDialOutcome.String("success"))...)
	require.True(t, ok)
	assert.Equal(t, lane, dials, "every open lane connection was dialled once")
	failures, ok := intValue(rm, "dflock.client.connection.dials", append(srv, keyDialOutcome.String("failure"))...)
	require.True(t, ok)
	assert.Zero(t, failures)

	require.NoError(t, a.Release(ctx))
	require.NoError(t, b.Release(ctx))
	v, ok = intValue(h.collect(t), "dflock.client.lease.count", srv...)
	require.True(t, ok)
	assert.Zero(t, v)

	// The dials also reach the dial histogram, through the hooks.
	h.awaitMetric(t, ctx, "a lane dial", func(rm metricdata.ResourceMetrics) bool {
		return len(histogramPoints(rm, "dflock.client.connection.dial.duration", append(srv,
			keyConnRole.String("lane"), keyDialOutcome.String("success"))...)) == 1
	})
}

func TestALostLeaseIsCounted(t *testing.T) {
	t.Parallel()
	// Renewals every ~50 ms of a 1 s lease: the refusal comes soon.
	h := newHarness(t, nil, dflock.WithRenewRatio(0.05))
	ctx := testCtx(t)
	srv := serverKVs(t, h.srv.Addr())

	l, err := h.c.TryLock(ctx, "lost", dflock.LeaseTTL(time.Second))
	require.NoError(t, err)
	losses, ok := intValue(h.collect(t), "dflock.client.lease.losses", srv...)
	require.True(t, ok)
	require.Zero(t, losses)

	releaseBehindClientsBack(t, h.srv.Addr(), "lost", l.Token())
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("the lease was not lost after its renewal was refused")
	}
	rm := h.awaitMetric(t, ctx, "the loss", func(rm metricdata.ResourceMetrics) bool {
		v, _ := intValue(rm, "dflock.client.lease.losses", srv...)
		return v == 1
	})
	refused, ok := intValue(rm, "dflock.client.renewals", append(srv, keyRenewalOutcome.String("refused"))...)
	require.True(t, ok)
	assert.Equal(t, int64(1), refused)
	held, ok := intValue(rm, "dflock.client.lease.count", srv...)
	require.True(t, ok)
	assert.Zero(t, held)

	// The renewal batches before the refusal were answered: their round
	// trips reach the renewal histogram through the hooks.
	h.awaitMetric(t, ctx, "a renewal batch", func(rm metricdata.ResourceMetrics) bool {
		pts := histogramPoints(rm, "dflock.client.renewal.duration", srv...)
		return len(pts) == 1 && pts[0].Count > 0
	})
}

func TestARefusedTryIsNotAnErrorButATimeoutIs(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := testCtx(t)

	l, err := h.c.TryLock(ctx, "busy")
	require.NoError(t, err)
	defer func() { require.NoError(t, l.Release(ctx)) }()

	_, err = h.c.TryLock(ctx, "busy")
	require.ErrorIs(t, err, dflock.ErrNotAcquired)
	// Long enough for the wait-pool dial to end before it: dflock reports
	// a deadline that passes between that dial and the wait request as a
	// bare context.DeadlineExceeded, not ErrTimeout (Client.waitAcquire).
	_, err = h.c.Lock(ctx, "busy", dflock.AcquireTimeout(250*time.Millisecond))
	require.ErrorIs(t, err, dflock.ErrTimeout)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = h.c.Lock(cctx, "busy")
	require.ErrorIs(t, err, context.Canceled)

	tries := h.spansNamed("dflock.TryLock")
	require.Len(t, tries, 2)
	refused := tries[1]
	assert.True(t, has(spanAttrs(refused), keyOutcome.String("refused")))
	assert.Equal(t, codes.Unset, refused.Status().Code, "a held key is an answer, not a failure")

	locks := h.spansNamed("dflock.Lock")
	require.Len(t, locks, 2)
	assert.True(t, has(spanAttrs(locks[0]), keyOutcome.String("timed_out")))
	assert.Equal(t, codes.Error, locks[0].Status().Code)
	assert.True(t, has(spanAttrs(locks[1]), keyOutcome.String("cancelled")))
	assert.Equal(t, codes.Error, locks[1].Status().Code)

	rm := h.collect(t)
	for _, o := range []string{"refused", "timed_out", "cancelled"} {
		assert.Len(t, histogramPoints(rm, "dflock.client.acquire.duration", keyOutcome.String(o)), 1, "outcome %s", o)
	}
}

func TestWithLockSpanIsTheParentOfItsAcquireAndRelease(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := testCtx(t)

	errFn := errors.New("the job failed")
	err := h.c.WithLock(ctx, "job", func(ctx context.Context) error {
		assert.True(t, trace.SpanContextFromContext(ctx).IsValid(), "fn runs inside a span")
		return errFn
	})
	require.ErrorIs(t, err, errFn)

	outer := h.spansNamed("dflock.WithLock")
	require.Len(t, outer, 1)
	assert.Equal(t, trace.SpanKindInternal, outer[0].SpanKind())
	assert.Equal(t, codes.Error, outer[0].Status().Code, "fn's error fails the span")
	assert.Contains(t, outer[0].Status().Description, "the job failed", "the status says what failed, not that the lock was granted")
	id := outer[0].SpanContext().SpanID()
	for _, name := range []string{"dflock.Lock", "dflock.Lock.Release"} {
		inner := h.spansNamed(name)
		require.Len(t, inner, 1, name)
		assert.Equal(t, id, inner[0].Parent().SpanID(), "%s is a child of WithLock", name)
	}

	// The acquire histogram counts the inner acquire once, not WithLock.
	rm := h.collect(t)
	assert.Empty(t, histogramPoints(rm, "dflock.client.acquire.duration", keyOperation.String("withlock")))
	assert.Len(t, histogramPoints(rm, "dflock.client.acquire.duration", keyOperation.String("lock")), 1)
}

func TestKeysNeverReachMetricsAndLeaveSpansOnRequest(t *testing.T) {
	t.Parallel()
	h := newHarness(t, []Option{WithKeyAttribute(false), WithAttributes(attribute.String("tenant", "blue"))})
	ctx := testCtx(t)

	l, err := h.c.Lock(ctx, "user:alice@example.com")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))

	for _, s := range h.spans.Ended() {
		_, ok := spanValue(s, keyKey)
		assert.False(t, ok, "span %s carries the key", s.Name())
		assert.True(t, has(spanAttrs(s), attribute.String("tenant", "blue")), "span %s lacks WithAttributes", s.Name())
	}
	rm := h.collect(t)
	n := 0
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			for _, set := range pointAttrs(m.Data) {
				n++
				_, ok := set.Value(keyKey)
				assert.False(t, ok, "metric %s carries the key", m.Name)
				assert.True(t, has(set, attribute.String("tenant", "blue")), "metric %s lacks WithAttributes", m.Name)
			}
		}
	}
	assert.Positive(t, n)
}

func pointAttrs(d metricdata.Aggregation) []attribute.Set {
	var out []attribute.Set
	switch d := d.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Histogram[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	}
	return out
}

func TestObserveStopsReporting(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := testCtx(t)
	srv := serverKVs(t, h.srv.Addr())
	_, err := h.in.Observe(nil)
	require.ErrorIs(t, err, dflock.ErrInvalidArgument)

	l, err := h.c.TryLock(ctx, "k")
	require.NoError(t, err)
	defer func() { require.NoError(t, l.Release(ctx)) }()

	// Observed twice, the Client's figures add up: what happens to two
	// Clients with equal attributes.
	stop, err := h.in.Observe(h.c)
	require.NoError(t, err)
	v, ok := intValue(h.collect(t), "dflock.client.lease.count", srv...)
	require.True(t, ok)
	assert.Equal(t, int64(2), v)

	stop()
	stop() // idempotent
	v, ok = intValue(h.collect(t), "dflock.client.lease.count", srv...)
	require.True(t, ok)
	assert.Equal(t, int64(1), v, "only the harness's registration remains")
}

func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	_, err := New(nil)
	require.ErrorIs(t, err, dflock.ErrInvalidArgument)
	_, err = New(WithAttributes(attribute.KeyValue{}))
	require.ErrorIs(t, err, dflock.ErrInvalidArgument)
}

func TestADownServerFailsTheSpanAndCountsTheDialFailure(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := testCtx(t)
	srv := serverKVs(t, h.srv.Addr())
	require.NoError(t, h.srv.Stop())

	_, err := h.c.Lock(ctx, "k")
	require.Error(t, err)

	locks := h.spansNamed("dflock.Lock")
	require.Len(t, locks, 1)
	assert.True(t, has(spanAttrs(locks[0]), keyOutcome.String("failed")), "attributes: %v", locks[0].Attributes())
	assert.Equal(t, codes.Error, locks[0].Status().Code)
	assert.True(t, has(spanAttrs(locks[0]), semconv.ErrorTypeKey.String("server_unavailable")), "attributes: %v", locks[0].Attributes())
	require.NotEmpty(t, locks[0].Events(), "the error is recorded on the span")
	assert.Equal(t, "exception", locks[0].Events()[0].Name)

	rm := h.collect(t)
	up, ok := intValue(rm, "dflock.client.server.up", srv...)
	require.True(t, ok)
	assert.Zero(t, up)
	failures, ok := intValue(rm, "dflock.client.connection.dials", append(srv, keyDialOutcome.String("failure"))...)
	require.True(t, ok)
	assert.Positive(t, failures)
	assert.Len(t, histogramPoints(rm, "dflock.client.acquire.duration", keyOutcome.String("failed"), semconv.ErrorTypeKey.String("server_unavailable")), 1)
	h.awaitMetric(t, ctx, "the failed dial", func(rm metricdata.ResourceMetrics) bool {
		return len(histogramPoints(rm, "dflock.client.connection.dial.duration", append(srv,
			keyDialOutcome.String("failure"), semconv.ErrorTypeKey.String("server_unavailable"))...)) == 1
	})
}

func TestTicketsAndSemaphoresAreNamedAfterTheirMethods(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := testCtx(t)

	tk, err := h.c.EnqueueSemaphore(ctx, "pool", 2)
	require.NoError(t, err)
	s, err := tk.Wait(ctx)
	require.NoError(t, err)
	require.NoError(t, s.Release(ctx))

	for _, name := range []string{"dflock.EnqueueSemaphore", "dflock.SemaphoreTicket.Wait"} {
		spans := h.spansNamed(name)
		require.Len(t, spans, 1, name)
		assert.True(t, has(spanAttrs(spans[0]), keyKey.String("pool"), keyLimit.Int(2)), "%s attributes: %v", name, spans[0].Attributes())
		assert.Equal(t, codes.Unset, spans[0].Status().Code)
	}
	wait := h.spansNamed("dflock.SemaphoreTicket.Wait")[0]
	ttl, ok := spanValue(wait, keyTTL)
	require.True(t, ok, "a grant carries its lease's TTL")
	assert.Positive(t, ttl.AsFloat64())
	require.Len(t, h.spansNamed("dflock.Semaphore.Release"), 1)

	rm := h.collect(t)
	for _, op := range []string{"enqueue", "wait"} {
		assert.Len(t, histogramPoints(rm, "dflock.client.acquire.duration", keyOperation.String(op), keyOutcome.String("granted")), 1, op)
	}
}

func TestTheApplicationsHooksRunBesideTheInstrumentations(t *testing.T) {
	t.Parallel()
	dialed := make(chan dflock.DialInfo, 16)
	h := newHarness(t, nil, dflock.WithHooks(dflock.Hooks{OnDial: func(d dflock.DialInfo) { dialed <- d }}))
	ctx := testCtx(t)
	srv := serverKVs(t, h.srv.Addr())

	l, err := h.c.TryLock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
	select {
	case d := <-dialed:
		assert.Equal(t, "lane", d.Role)
	case <-ctx.Done():
		t.Fatal("the application's OnDial was not called")
	}
	h.awaitMetric(t, ctx, "the dial in the histogram", func(rm metricdata.ResourceMetrics) bool {
		return len(histogramPoints(rm, "dflock.client.connection.dial.duration", append(srv, keyConnRole.String("lane"))...)) == 1
	})
}

func TestABrokenConnectionIsCountedAndItsLeasesLost(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := testCtx(t)
	srv := serverKVs(t, h.srv.Addr())

	l, err := h.c.TryLock(ctx, "k")
	require.NoError(t, err)
	h.srv.DropConnections()
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("the lease outlived its connection")
	}
	h.awaitMetric(t, ctx, "the broken connection and the loss", func(rm metricdata.ResourceMetrics) bool {
		broken, _ := intValue(rm, "dflock.client.connection.broken", srv...)
		lost, _ := intValue(rm, "dflock.client.lease.losses", srv...)
		return broken >= 1 && lost == 1
	})
}
