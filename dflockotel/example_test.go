package dflockotel_test

import (
	"context"
	"fmt"
	"log"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/dflockotel"
	"github.com/dflock-sdk/go/testutil"
)

// A program passes the Instrumentation's options to dflock.New and
// observes the Client. Here an in-process server stands in for dflockd, and
// in-memory providers for the program's exporters (without
// WithMeterProvider and WithTracerProvider, the global ones are used).
func Example() {
	srv, err := testutil.Start(testutil.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())

	in, err := dflockotel.New(dflockotel.WithMeterProvider(mp), dflockotel.WithTracerProvider(tp))
	if err != nil {
		log.Fatal(err)
	}
	c, err := dflock.New([]string{srv.Addr()}, in.Options()...)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	stop, err := in.Observe(c)
	if err != nil {
		log.Fatal(err)
	}
	defer stop()

	ctx := context.Background()
	err = c.WithLock(ctx, "reports:daily", func(ctx context.Context) error {
		// ctx carries the dflock.WithLock span: spans started from it
		// nest beneath.
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(ctx, &rm); err != nil {
			return err
		}
		fmt.Println("leases held while fn runs:", sumOf(rm, "dflock.client.lease.count"))
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}

	for _, s := range spans.Ended() {
		fmt.Println("span:", s.Name())
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	fmt.Println("acquires measured:", histogramCount(rm, "dflock.client.acquire.duration"))
	fmt.Println("leases held after:", sumOf(rm, "dflock.client.lease.count"))
	// Output:
	// leases held while fn runs: 1
	// span: dflock.Lock
	// span: dflock.Lock.Release
	// span: dflock.WithLock
	// acquires measured: 1
	// leases held after: 0
}

// sumOf adds up the points of an int64 sum.
func sumOf(rm metricdata.ResourceMetrics, name string) int64 {
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, p := range s.DataPoints {
					n += p.Value
				}
			}
		}
	}
	return n
}

// histogramCount adds up the counts of a float64 histogram's points.
func histogramCount(rm metricdata.ResourceMetrics, name string) uint64 {
	var n uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.Histogram[float64]); ok && m.Name == name {
				for _, p := range h.DataPoints {
					n += p.Count
				}
			}
		}
	}
	return n
}
