package dflockotel

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// appTracer is "a program with a Tracer of its own" that "calls both from
// one that it installs" (Instrumentation.Tracer's doc): its own span
// nested in the Instrumentation's, ended in reverse order.
type appTracer struct {
	inner dflock.Tracer
	app   trace.Tracer
}

func (a appTracer) AcquireStart(ctx context.Context, info dflock.AcquireInfo) context.Context {
	ctx = a.inner.AcquireStart(ctx, info)
	ctx, _ = a.app.Start(ctx, "app.acquire."+info.Op)
	return ctx
}

func (a appTracer) AcquireEnd(ctx context.Context, info dflock.AcquireInfo, res dflock.AcquireResult) {
	trace.SpanFromContext(ctx).End() // the app's span
	a.inner.AcquireEnd(ctx, info, res)
}

func (a appTracer) ReleaseStart(ctx context.Context, info dflock.LeaseInfo) context.Context {
	return a.inner.ReleaseStart(ctx, info)
}

func (a appTracer) ReleaseEnd(ctx context.Context, info dflock.LeaseInfo, err error) {
	a.inner.ReleaseEnd(ctx, info, err)
}

// The Instrumentation ends the span it started, not the context's current
// one: composed as its doc suggests, with the application's span beneath
// its own, it used to leave its dflock.TryLock span unended (never
// exported) and stamp its outcome on the application's span.
func TestComposedTracerEndsItsOwnSpan(t *testing.T) {
	t.Parallel()
	srv := testutil.NewServer(t, testutil.Config{})
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	mp := sdkmetric.NewMeterProvider()
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	in, err := New(WithTracerProvider(tp), WithMeterProvider(mp))
	require.NoError(t, err)
	c, err := dflock.New([]string{srv.Addr()},
		dflock.WithHooks(in.Hooks()),
		dflock.WithTracer(appTracer{inner: in.Tracer(), app: tp.Tracer("app")}))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	ctx := testCtx(t)

	l, err := c.TryLock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))

	var names []string
	for _, s := range spans.Ended() {
		names = append(names, s.Name())
	}
	assert.Contains(t, names, "dflock.TryLock", "the Instrumentation's span was never ended")
	for _, s := range spans.Ended() {
		if s.Name() == "app.acquire.trylock" {
			_, ok := spanValue(s, keyOutcome)
			assert.False(t, ok, "the Instrumentation wrote its outcome on the application's span")
		}
	}
}

// Observe's doc and the README: "Figures of several Clients with equal
// attributes add up". Two Clients of one server, one lease each.
func TestFiguresOfTwoClientsAddUp(t *testing.T) {
	t.Parallel()
	srv := testutil.NewServer(t, testutil.Config{})
	in, h := newMetered(t)
	ctx := testCtx(t)
	for _, key := range []string{"a", "b"} {
		c, err := dflock.New([]string{srv.Addr()}, in.Options()...)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		stop, err := in.Observe(c)
		require.NoError(t, err)
		t.Cleanup(stop)
		_, err = c.TryLock(ctx, key)
		require.NoError(t, err)
	}
	rm := h.collect(t)
	v, ok := intValue(rm, "dflock.client.lease.count", serverKVs(t, srv.Addr())...)
	require.True(t, ok)
	assert.Equal(t, int64(2), v, "leases held by the two Clients")
}
