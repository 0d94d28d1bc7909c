package dflockotel

import (
	"context"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// discard is a SpanProcessor that drops every span: the spans are still
// sampled and recorded, which is the cost being measured.
type discard struct{}

func (discard) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (discard) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (discard) Shutdown(context.Context) error                  { return nil }
func (discard) ForceFlush(context.Context) error                { return nil }

// BenchmarkLockRelease compares an uncontended Lock+Release (control lane)
// without instrumentation and with it, spans sampled and metrics recorded.
func BenchmarkLockRelease(b *testing.B) {
	run := func(b *testing.B, opts ...dflock.Option) {
		srv := testutil.NewServer(b, testutil.Config{})
		c, err := dflock.New([]string{srv.Addr()}, opts...)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			l, err := c.Lock(ctx, "bench")
			if err != nil {
				b.Fatal(err)
			}
			if err := l.Release(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("otel=off", func(b *testing.B) { run(b) })
	b.Run("otel=on", func(b *testing.B) {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		defer mp.Shutdown(context.Background())
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(discard{}))
		defer tp.Shutdown(context.Background())
		in, err := New(WithMeterProvider(mp), WithTracerProvider(tp))
		if err != nil {
			b.Fatal(err)
		}
		run(b, in.Options()...)
	})
}
