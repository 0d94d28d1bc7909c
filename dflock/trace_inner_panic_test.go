package dflock

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// innerPanicTracer panics in the AcquireStart (or AcquireEnd) of the inner
// "lock" of a WithLock, and records the outer "withlock" AcquireEnd.
type innerPanicTracer struct {
	inStart, inEnd bool
	mu             sync.Mutex
	outer          []AcquireResult
}

func (t *innerPanicTracer) AcquireStart(ctx context.Context, i AcquireInfo) context.Context {
	if i.Op == "lock" && t.inStart {
		panic("tracer bug in AcquireStart")
	}
	return ctx
}
func (t *innerPanicTracer) AcquireEnd(_ context.Context, i AcquireInfo, res AcquireResult) {
	if i.Op == "withlock" {
		t.mu.Lock()
		t.outer = append(t.outer, res)
		t.mu.Unlock()
	}
	if i.Op == "lock" && t.inEnd {
		panic("tracer bug in AcquireEnd")
	}
}
func (*innerPanicTracer) ReleaseStart(ctx context.Context, _ LeaseInfo) context.Context { return ctx }
func (*innerPanicTracer) ReleaseEnd(context.Context, LeaseInfo, error)                  {}

// A WithLock whose inner acquire's Tracer call panics never acquires (or
// gives back) the lock and never runs fn, yet the outer "withlock"
// AcquireEnd reports Outcome Granted ("the lock was acquired and fn ran")
// with Err "fn panicked": the zero AcquireResult of the inner acquire that
// never returned.
func TestWithLockWhoseInnerTracerCallPanicsIsNotReportedGranted(t *testing.T) {
	for _, tc := range []struct {
		name           string
		inStart, inEnd bool
	}{{"AcquireStart", true, false}, {"AcquireEnd", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, testutil.Config{})
			tr := &innerPanicTracer{inStart: tc.inStart, inEnd: tc.inEnd}
			c := newClient(t, []string{srv.Addr()}, WithTracer(tr))
			ctx := testCtx(t)
			ran := false
			require.True(t, recovered(func() {
				_ = c.WithLock(ctx, "k", func(context.Context) error { ran = true; return nil })
			}))
			require.False(t, ran, "fn never ran")
			require.Len(t, tr.outer, 1)
			res := tr.outer[0]
			t.Logf("outer withlock AcquireEnd: outcome %v path %v err %v", res.Outcome, res.Path, res.Err)
			assert.NotEqual(t, Granted, res.Outcome, "the lock was not acquired and fn did not run")
			assert.NotErrorIs(t, res.Err, errFnPanicked, "fn did not panic")
			assert.ErrorIs(t, res.Err, errAcquirePanicked)
			assert.False(t, lockHeld(srv, "k"), "the grant is given back")
		})
	}
}
