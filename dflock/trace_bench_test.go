package dflock

import (
	"context"
	"testing"
)

// noopTracer is a Tracer that records nothing: the cost of the calls
// themselves, not of what a real tracer does in them.
type noopTracer struct{}

func (noopTracer) AcquireStart(ctx context.Context, _ AcquireInfo) context.Context { return ctx }
func (noopTracer) AcquireEnd(context.Context, AcquireInfo, AcquireResult)          {}
func (noopTracer) ReleaseStart(ctx context.Context, _ LeaseInfo) context.Context   { return ctx }
func (noopTracer) ReleaseEnd(context.Context, LeaseInfo, error)                    {}

// benchTracedLockRelease measures one uncontended Lock+Release from one
// goroutine, the path whose allocations the tracer check must not raise.
func benchTracedLockRelease(b *testing.B, opts ...Option) {
	srv := benchServers(b, 1)[0]
	c := newClient(b, []string{srv.Addr()}, opts...)
	ctx := context.Background()
	l, err := c.Lock(ctx, "warm") // dial the lane outside the measurement
	if err != nil {
		b.Fatal(err)
	}
	if err := l.Release(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		l, err := c.Lock(ctx, "k")
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTracerUnset is Lock+Release without a Tracer (nor Hooks): it
// must allocate exactly as much as before tracing existed.
func BenchmarkTracerUnset(b *testing.B) { benchTracedLockRelease(b) }

// BenchmarkTracerNoop is the same with a Tracer that does nothing, for
// comparison: what installing one costs before it does any work.
func BenchmarkTracerNoop(b *testing.B) { benchTracedLockRelease(b, WithTracer(noopTracer{})) }
