package dflockotel

import (
	"context"
	"runtime"
	"testing"
	"weak"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

func manualMeter(t *testing.T, temp metricdata.Temporality) (*sdkmetric.ManualReader, *Instrumentation) {
	reader := sdkmetric.NewManualReader(sdkmetric.WithTemporalitySelector(
		func(sdkmetric.InstrumentKind) metricdata.Temporality { return temp }))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	in, err := New(WithMeterProvider(mp))
	require.NoError(t, err)
	return reader, in
}

// A stop function that ran does not keep its Client reachable: a program
// that keeps the stop functions of replaced Clients (in a struct, a slice
// of cleanups) must not keep every stopped, closed Client in memory.
func TestStoppedClientCanBeCollected(t *testing.T) {
	srv := testutil.NewServer(t, testutil.Config{})
	_, in := manualMeter(t, metricdata.CumulativeTemporality)
	var wp weak.Pointer[dflock.Client]
	stop := func() func() {
		c, err := dflock.New([]string{srv.Addr()}, in.Options()...)
		require.NoError(t, err)
		stop, err := in.Observe(c)
		require.NoError(t, err)
		stop()
		require.NoError(t, c.Close())
		wp = weak.Make(c)
		return stop
	}()
	for i := 0; i < 20 && wp.Value() != nil; i++ {
		runtime.GC()
	}
	collected := wp.Value() == nil
	runtime.KeepAlive(stop)
	assert.True(t, collected, "a stopped and closed Client stays reachable through its stop function")
}

// An Instrumentation the program has dropped (its Clients stopped and
// closed) is not kept by a MeterProvider that outlives it, such as the
// global one: its callback goes with it.
func TestDroppedInstrumentationIsCollected(t *testing.T) {
	srv := testutil.NewServer(t, testutil.Config{})
	reader, in := manualMeter(t, metricdata.CumulativeTemporality)
	c, err := dflock.New([]string{srv.Addr()}, in.Options()...)
	require.NoError(t, err)
	stop, err := in.Observe(c)
	require.NoError(t, err)
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(t.Context(), &rm))
	require.NotEmpty(t, rm.ScopeMetrics, "the callback reports while the Instrumentation lives")
	stop()
	require.NoError(t, c.Close())
	wp := weak.Make(in)
	in, c, stop = nil, nil, nil
	for i := 0; i < 20 && wp.Value() != nil; i++ {
		runtime.GC()
	}
	assert.Nil(t, wp.Value(), "the MeterProvider keeps the dropped Instrumentation")
	// Collections go on without it.
	require.NoError(t, reader.Collect(t.Context(), &rm))
}
