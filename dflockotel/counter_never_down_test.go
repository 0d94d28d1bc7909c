package dflockotel

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// The observed counters (dials, renewals, losses, ...) are monotonic sums
// of each observed Client's totals since New. A Client stopped (closed and
// its Observe stopped) must leave its totals in the sums: otherwise the
// counter goes down with the same start time, which a cumulative backend
// takes for a reset (Prometheus counts the whole remaining total as a new
// increase) and delta temporality exports as a negative delta.
func TestObservedCountersNeverGoDownWhenAClientStops(t *testing.T) {
	srv := testutil.NewServer(t, testutil.Config{})
	for _, temp := range []metricdata.Temporality{metricdata.CumulativeTemporality, metricdata.DeltaTemporality} {
		t.Run(temp.String(), func(t *testing.T) {
			reader := sdkmetric.NewManualReader(sdkmetric.WithTemporalitySelector(
				func(sdkmetric.InstrumentKind) metricdata.Temporality { return temp }))
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
			in, err := New(WithMeterProvider(mp))
			require.NoError(t, err)
			ctx := testCtx(t)
			var stops []func()
			var clients []*dflock.Client
			for _, key := range []string{"a", "b"} {
				c, err := dflock.New([]string{srv.Addr()}, in.Options()...)
				require.NoError(t, err)
				t.Cleanup(func() { _ = c.Close() })
				stop, err := in.Observe(c)
				require.NoError(t, err)
				t.Cleanup(stop)
				l, err := c.TryLock(ctx, key)
				require.NoError(t, err)
				require.NoError(t, l.Release(ctx))
				stops, clients = append(stops, stop), append(clients, c)
			}
			h := &harness{reader: reader}
			dials := func() metricdata.DataPoint[int64] {
				rm := h.collect(t)
				m, ok := metricNamed(rm, "dflock.client.connection.dials")
				require.True(t, ok)
				sum := m.Data.(metricdata.Sum[int64])
				require.True(t, sum.IsMonotonic)
				for _, p := range sum.DataPoints {
					if has(p.Attributes, append(serverKVs(t, srv.Addr()), keyDialOutcome.String("success"))...) {
						return p
					}
				}
				t.Fatal("no dials point")
				return metricdata.DataPoint[int64]{}
			}
			before := dials()
			// One Client is done: closed and unregistered, as Observe's doc says.
			require.NoError(t, clients[1].Close())
			stops[1]()
			after := dials()
			t.Logf("%s: dials before %d (start %v), after %d (start %v)", temp, before.Value, before.StartTime, after.Value, after.StartTime)
			if temp == metricdata.DeltaTemporality {
				assert.GreaterOrEqual(t, after.Value, int64(0), "negative delta on a monotonic counter")
			} else {
				assert.False(t, after.Value < before.Value && after.StartTime.Equal(before.StartTime),
					"a monotonic cumulative counter went down without a reset: %d -> %d", before.Value, after.Value)
			}
		})
	}
}
