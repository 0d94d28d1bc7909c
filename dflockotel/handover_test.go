package dflockotel

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// A scripted server: a lock granted late (so the grant is confirmed by a
// renewal) whose confirming renewal is answered after the lease's life:
// the grant is lost at hand-over.
func lateConfirmServer(t *testing.T) string {
	return testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
		var out string
		switch f[0] {
		case "l":
			time.Sleep(600 * time.Millisecond)
			out = "ok tok1 1"
		case "n":
			time.Sleep(1300 * time.Millisecond)
			out = "ok 1"
		case "ping", "r":
			out = "ok"
		default:
			out = "error"
		}
		_, err := nc.Write([]byte(out + "\n"))
		return err == nil
	})
}

// A blocking Lock (and WithLock) whose grant is lost at hand-over returns
// an error matching ErrNotAcquired and ErrLockLost: its span is an error
// with outcome "failed", not a try's "refused" answer (found by review).
func TestLockLostAtHandOverIsAnErrorSpan(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	in, err := New(WithTracerProvider(tp), WithMeterProvider(noopmetric.NewMeterProvider()))
	require.NoError(t, err)
	addr := lateConfirmServer(t)
	c, err := dflock.New([]string{addr}, append(in.Options(), dflock.WithLeaseTTL(time.Second))...)
	require.NoError(t, err)
	defer c.Close()
	ctx := testCtx(t)
	_, err = c.Lock(ctx, "k")
	t.Logf("Lock: %v", err)
	require.ErrorIs(t, err, dflock.ErrNotAcquired)
	require.ErrorIs(t, err, dflock.ErrLockLost)
	var s sdktrace.ReadOnlySpan
	for _, x := range rec.Ended() {
		if x.Name() == "dflock.Lock" {
			s = x
		}
	}
	require.NotNil(t, s)
	out, _ := spanValue(s, keyOutcome)
	t.Logf("span status %v %q outcome %v", s.Status().Code, s.Status().Description, out.AsString())
	assert.Equal(t, codes.Error, s.Status().Code, "a blocking Lock that got no lock is a failure, not a try's answer")
	assert.NotEqual(t, "refused", out.AsString(), "no try found the key held, and the server refused nothing")

	// WithLock: its acquire fails the same way; fn never runs, and
	// WithLock returns the error, yet its span is not an error either.
	ran := false
	err = c.WithLock(ctx, "k2", func(context.Context) error { ran = true; return nil })
	require.ErrorIs(t, err, dflock.ErrLockLost)
	require.False(t, ran)
	var w sdktrace.ReadOnlySpan
	for _, x := range rec.Ended() {
		if x.Name() == "dflock.WithLock" {
			w = x
		}
	}
	require.NotNil(t, w)
	t.Logf("WithLock span status %v %q", w.Status().Code, w.Status().Description)
	assert.Equal(t, codes.Error, w.Status().Code, "WithLock returned an error and fn never ran")
}
