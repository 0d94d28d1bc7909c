package dflockotel

import (
	"bufio"
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// testTimeout bounds each test's waits: a ceiling for a stuck test, never
// a timing assertion.
const testTimeout = 30 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// harness is one testutil server, one instrumented Client and the
// in-memory reader and recorder that the Instrumentation reports to.
type harness struct {
	srv    *testutil.Server
	c      *dflock.Client
	in     *Instrumentation
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
}

func newHarness(t *testing.T, opts []Option, clientOpts ...dflock.Option) *harness {
	t.Helper()
	h := &harness{
		srv:    testutil.NewServer(t, testutil.Config{}),
		reader: sdkmetric.NewManualReader(),
		spans:  tracetest.NewSpanRecorder(),
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	t.Cleanup(func() {
		_ = mp.Shutdown(context.Background())
		_ = tp.Shutdown(context.Background())
	})
	in, err := New(append([]Option{WithMeterProvider(mp), WithTracerProvider(tp)}, opts...)...)
	require.NoError(t, err)
	h.in = in
	c, err := dflock.New([]string{h.srv.Addr()}, append(in.Options(), clientOpts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	h.c = c
	stop, err := in.Observe(c)
	require.NoError(t, err)
	t.Cleanup(stop)
	return h
}

// newMetered returns an Instrumentation with a meter provider of its own
// and a harness that collects its metrics, for tests that build and observe
// their Clients themselves.
func newMetered(t *testing.T) (*Instrumentation, *harness) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	in, err := New(WithMeterProvider(mp))
	require.NoError(t, err)
	return in, &harness{reader: reader}
}

func (h *harness) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, h.reader.Collect(context.Background(), &rm))
	return rm
}

// metricNamed returns the metric called name, or false.
func metricNamed(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// has reports whether set holds every one of kvs.
func has(set attribute.Set, kvs ...attribute.KeyValue) bool {
	for _, kv := range kvs {
		v, ok := set.Value(kv.Key)
		if !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// histogramPoints returns the points of the float histogram name whose
// attributes hold kvs.
func histogramPoints(rm metricdata.ResourceMetrics, name string, kvs ...attribute.KeyValue) []metricdata.HistogramDataPoint[float64] {
	m, ok := metricNamed(rm, name)
	if !ok {
		return nil
	}
	var out []metricdata.HistogramDataPoint[float64]
	for _, p := range m.Data.(metricdata.Histogram[float64]).DataPoints {
		if has(p.Attributes, kvs...) {
			out = append(out, p)
		}
	}
	return out
}

// intValue returns the value of the int64 sum or gauge name at the point
// whose attributes hold kvs, and whether there is exactly one such point.
func intValue(rm metricdata.ResourceMetrics, name string, kvs ...attribute.KeyValue) (int64, bool) {
	m, ok := metricNamed(rm, name)
	if !ok {
		return 0, false
	}
	var pts []metricdata.DataPoint[int64]
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		pts = d.DataPoints
	case metricdata.Gauge[int64]:
		pts = d.DataPoints
	}
	var v int64
	n := 0
	for _, p := range pts {
		if has(p.Attributes, kvs...) {
			v = p.Value
			n++
		}
	}
	return v, n == 1
}

// awaitMetric collects until cond holds for a collection, or fails the
// test when ctx ends. Figures that hooks record arrive from the Client's
// callback goroutine some time after the event.
func (h *harness) awaitMetric(t *testing.T, ctx context.Context, what string, cond func(metricdata.ResourceMetrics) bool) metricdata.ResourceMetrics {
	t.Helper()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		rm := h.collect(t)
		if cond(rm) {
			return rm
		}
		select {
		case <-ctx.Done():
			t.Fatalf("never collected %s", what)
		case <-tick.C:
		}
	}
}

// spansNamed returns the ended spans called name, in the order they ended.
func (h *harness) spansNamed(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range h.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func spanAttrs(s sdktrace.ReadOnlySpan) attribute.Set { return attribute.NewSet(s.Attributes()...) }

func spanValue(s sdktrace.ReadOnlySpan, key attribute.Key) (attribute.Value, bool) {
	set := spanAttrs(s)
	return set.Value(key)
}

// awaitWaiters waits until the server shows n waiters for the lock key.
func awaitWaiters(t *testing.T, ctx context.Context, srv *testutil.Server, key string, n int) {
	t.Helper()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, l := range srv.Stats().Locks {
			if l.Key == key && l.Waiters == n {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the server never showed %d waiter(s) for %q", n, key)
		case <-tick.C:
		}
	}
}

// releaseBehindClientsBack releases key with token on a connection of its
// own, as any holder of the token may: the Client's next renewal of it is
// then refused and the lease is lost.
func releaseBehindClientsBack(t *testing.T, addr, key, token string) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer nc.Close()
	_, err = nc.Write([]byte("r\n" + key + "\n" + token + "\n"))
	require.NoError(t, err)
	line, err := bufio.NewReader(nc).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ok\n", line)
}
