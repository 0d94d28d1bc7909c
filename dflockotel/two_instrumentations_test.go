package dflockotel

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// fanOut is "a program with a Tracer of its own" whose own Tracer is a
// second Instrumentation (two backends, say): it calls both, each End
// with the context its Start returned, ending in reverse order.
type fanOut struct{ a, b dflock.Tracer }

func (f fanOut) AcquireStart(ctx context.Context, info dflock.AcquireInfo) context.Context {
	ctx = f.a.AcquireStart(ctx, info)
	return f.b.AcquireStart(ctx, info)
}

func (f fanOut) AcquireEnd(ctx context.Context, info dflock.AcquireInfo, res dflock.AcquireResult) {
	f.b.AcquireEnd(ctx, info, res)
	f.a.AcquireEnd(ctx, info, res)
}

func (f fanOut) ReleaseStart(ctx context.Context, info dflock.LeaseInfo) context.Context {
	ctx = f.a.ReleaseStart(ctx, info)
	return f.b.ReleaseStart(ctx, info)
}

func (f fanOut) ReleaseEnd(ctx context.Context, info dflock.LeaseInfo, err error) {
	f.b.ReleaseEnd(ctx, info, err)
	f.a.ReleaseEnd(ctx, info, err)
}

// Two Instrumentations composed: each must end the span its own Start
// began. With one key for every Instrumentation the second
// Start's value hides the first's, and the first's End ends the second's
// span (again) while its own is never ended (never exported).
func TestTwoInstrumentationsEachEndTheirSpan(t *testing.T) {
	t.Parallel()
	srv := testutil.NewServer(t, testutil.Config{})
	recA, recB := tracetest.NewSpanRecorder(), tracetest.NewSpanRecorder()
	tpA := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recA))
	tpB := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recB))
	mp := sdkmetric.NewMeterProvider()
	t.Cleanup(func() {
		_ = tpA.Shutdown(context.Background())
		_ = tpB.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	inA, err := New(WithTracerProvider(tpA), WithMeterProvider(mp))
	require.NoError(t, err)
	inB, err := New(WithTracerProvider(tpB), WithMeterProvider(mp))
	require.NoError(t, err)
	c, err := dflock.New([]string{srv.Addr()}, dflock.WithTracer(fanOut{a: inA.Tracer(), b: inB.Tracer()}))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	ctx := testCtx(t)

	l, err := c.TryLock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))

	for name, rec := range map[string]*tracetest.SpanRecorder{"A": recA, "B": recB} {
		var ended []string
		for _, s := range rec.Ended() {
			ended = append(ended, s.Name())
		}
		assert.Len(t, rec.Started(), 2, "Instrumentation %s: spans started", name)
		assert.ElementsMatch(t, []string{"dflock.TryLock", "dflock.Lock.Release"}, ended,
			"Instrumentation %s: spans ended (a started span never ended is never exported)", name)
	}
}
