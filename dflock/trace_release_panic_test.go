package dflock

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// releasePanicTracer panics in the ReleaseStart or ReleaseEnd of the
// release inside a WithLock, and records the outer "withlock" AcquireEnd.
type releasePanicTracer struct {
	inStart, inEnd bool
	mu             sync.Mutex
	outer          []AcquireResult
}

func (t *releasePanicTracer) AcquireStart(ctx context.Context, _ AcquireInfo) context.Context {
	return ctx
}
func (t *releasePanicTracer) AcquireEnd(_ context.Context, i AcquireInfo, res AcquireResult) {
	if i.Op == "withlock" {
		t.mu.Lock()
		t.outer = append(t.outer, res)
		t.mu.Unlock()
	}
}
func (t *releasePanicTracer) ReleaseStart(ctx context.Context, _ LeaseInfo) context.Context {
	if t.inStart {
		panic("tracer bug in ReleaseStart")
	}
	return ctx
}
func (t *releasePanicTracer) ReleaseEnd(context.Context, LeaseInfo, error) {
	if t.inEnd {
		panic("tracer bug in ReleaseEnd")
	}
}

// fn returns normally; the Tracer's own release call panics. The outer
// withlock AcquireEnd must not say "fn panicked".
func TestWithLockWhoseReleaseTracerCallPanicsDoesNotBlameFn(t *testing.T) {
	for _, tc := range []struct {
		name           string
		inStart, inEnd bool
	}{{"ReleaseStart", true, false}, {"ReleaseEnd", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, testutil.Config{})
			tr := &releasePanicTracer{inStart: tc.inStart, inEnd: tc.inEnd}
			c := newClient(t, []string{srv.Addr()}, WithTracer(tr))
			ctx := testCtx(t)
			fnPanicked := true
			require.True(t, recovered(func() {
				_ = c.WithLock(ctx, "k", func(context.Context) error { fnPanicked = false; return nil })
			}))
			require.False(t, fnPanicked, "fn returned normally")
			require.Len(t, tr.outer, 1)
			res := tr.outer[0]
			t.Logf("outer withlock AcquireEnd: outcome %v err %v", res.Outcome, res.Err)
			assert.False(t, lockHeld(srv, "k"), "released all the same")
			assert.NotErrorIs(t, res.Err, errFnPanicked, "fn did not panic: the Tracer's release call did")
			assert.ErrorIs(t, res.Err, errReleasePanicked)
		})
	}
}
