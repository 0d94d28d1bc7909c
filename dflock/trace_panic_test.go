package dflock

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// panicTracer is a Tracer with a bug: the calls named by panicIn panic
// ("AcquireStart", "AcquireEnd", "ReleaseStart", "ReleaseEnd"), for the
// acquires whose Op is op ("" for every one; the release calls panic
// whatever op). It records the AcquireResult of every outer "withlock".
type panicTracer struct {
	mu    sync.Mutex
	in    map[string]bool
	op    string
	outer []AcquireResult
}

// panicIn sets the calls that panic (none: stop panicking).
func (t *panicTracer) panicIn(op string, calls ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.op, t.in = op, make(map[string]bool)
	for _, c := range calls {
		t.in[c] = true
	}
}

func (t *panicTracer) maybePanic(call, op string) {
	t.mu.Lock()
	p := t.in[call] && (t.op == "" || op == "" || op == t.op)
	t.mu.Unlock()
	if p {
		panic("tracer bug in " + call)
	}
}

func (t *panicTracer) AcquireStart(ctx context.Context, i AcquireInfo) context.Context {
	t.maybePanic("AcquireStart", i.Op)
	return ctx
}

func (t *panicTracer) AcquireEnd(_ context.Context, i AcquireInfo, res AcquireResult) {
	if i.Op == "withlock" {
		t.mu.Lock()
		t.outer = append(t.outer, res)
		t.mu.Unlock()
	}
	t.maybePanic("AcquireEnd", i.Op)
}

func (t *panicTracer) ReleaseStart(ctx context.Context, _ LeaseInfo) context.Context {
	t.maybePanic("ReleaseStart", "")
	return ctx
}

func (t *panicTracer) ReleaseEnd(context.Context, LeaseInfo, error) { t.maybePanic("ReleaseEnd", "") }

// recovered runs f and swallows its panic, as net/http does for a handler.
func recovered(f func()) (panicked bool) {
	defer func() {
		if recover() != nil {
			panicked = true
		}
	}()
	f()
	return false
}

// A Tracer whose AcquireEnd panics after the lock was granted: the caller
// never gets a handle (so cannot Release), yet the lease stays tracked and
// renewed for ever — the key is held by nobody until the process exits.
func TestTracerPanickingInAcquireEndLeavesNoLockHeld(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	tr := &panicTracer{}
	c := newClient(t, []string{srv.Addr()}, WithTracer(tr))
	ctx := testCtx(t)

	tr.panicIn("", "AcquireEnd")
	require.True(t, recovered(func() { _, _ = c.Lock(ctx, "k") }), "the tracer's panic reaches the caller")
	tr.panicIn("")

	// Nobody holds a handle to the lock; it should not be held.
	assert.Zero(t, c.Snapshot().Held, "a lease nobody has a handle to is still tracked (renewed for ever)")
	assert.False(t, lockHeld(srv, "k"), "the lock is held on the server by nobody")
}

// WithLock under a Tracer whose inner AcquireEnd panics: fn never runs and
// the lock is never released.
func TestTracerPanickingInWithLocksAcquireEndLeavesNoLockHeld(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	tr := &panicTracer{}
	c := newClient(t, []string{srv.Addr()}, WithTracer(tr))
	ctx := testCtx(t)

	tr.panicIn("", "AcquireEnd")
	ran := false
	require.True(t, recovered(func() {
		_ = c.WithLock(ctx, "w", func(context.Context) error { ran = true; return nil })
	}))
	tr.panicIn("")
	assert.False(t, ran)
	assert.Zero(t, c.Snapshot().Held, "WithLock's lock is still held after the panic")
	assert.False(t, lockHeld(srv, "w"), "WithLock's lock is held on the server by nobody")
}

// A Tracer whose ReleaseStart panics during the release WithLock performs:
// the release is never sent, the caller has no handle to retry it, and the
// lease stays tracked and renewed for ever.
func TestTracerPanickingInReleaseStartStillReleases(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	tr := &panicTracer{}
	c := newClient(t, []string{srv.Addr()}, WithTracer(tr))
	ctx := testCtx(t)

	tr.panicIn("", "ReleaseStart")
	require.True(t, recovered(func() {
		_ = c.WithLock(ctx, "r", func(context.Context) error { return nil })
	}))
	tr.panicIn("")
	assert.Zero(t, c.Snapshot().Held, "WithLock's release panicked in the Tracer and the lease is still renewed")
	assert.False(t, lockHeld(srv, "r"), "the lock is held on the server by nobody")
}

// WithHooks documents that several sets "all run, in option order, so that
// an adapter's hooks compose with the application's", and Hooks that a
// panicking hook "does not end the program ... and the next call runs". A
// panic in the first set's hook, however, skips the second set's hook for
// that event: a library's metrics hook silently loses every event whose
// application hook panics.
func TestPanickingHookDoesNotSkipTheNextSetsHook(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	var second atomic.Int64
	c := newClient(t, []string{srv.Addr()},
		WithHooks(Hooks{OnDial: func(DialInfo) { panic("application hook bug") }}),
		WithHooks(Hooks{OnDial: func(DialInfo) { second.Add(1) }}), // e.g. dflockotel's dial histogram
	)
	l, err := c.Lock(testCtx(t), "k") // dials the lane
	require.NoError(t, err)
	require.NoError(t, l.Release(testCtx(t)))
	require.NoError(t, c.Close()) // runs every queued hook
	assert.Positive(t, second.Load(), "the second set's OnDial never ran: the first set's panic skipped it")
}

// An Enqueue whose AcquireEnd panics leaves the caller without its
// ticket: its place in the queue is given back, so the key passes to no
// one when its holder releases it.
func TestTracerPanickingInEnqueuesAcquireEndGivesThePlaceBack(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	tr := &panicTracer{}
	c := newClient(t, []string{srv.Addr()}, WithTracer(tr))
	ctx := testCtx(t)

	holder, err := c.Lock(ctx, "q")
	require.NoError(t, err)
	tr.panicIn("", "AcquireEnd")
	require.True(t, recovered(func() { _, _ = c.Enqueue(ctx, "q") }), "the tracer's panic reaches the caller")
	tr.panicIn("")
	require.NoError(t, holder.Release(ctx))

	other := newClient(t, []string{srv.Addr()})
	l, err := other.TryLock(ctx, "q")
	require.NoError(t, err, "the key went to the ticket nobody has")
	require.NoError(t, l.Release(ctx))
}

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
			tr := &panicTracer{}
			if tc.inStart {
				tr.panicIn("lock", "AcquireStart")
			} else {
				tr.panicIn("lock", "AcquireEnd")
			}
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

// fn returns normally; the Tracer's own release call panics. The outer
// withlock AcquireEnd must not say "fn panicked".
func TestWithLockWhoseReleaseTracerCallPanicsDoesNotBlameFn(t *testing.T) {
	for _, tc := range []struct {
		name           string
		inStart, inEnd bool
	}{{"ReleaseStart", true, false}, {"ReleaseEnd", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, testutil.Config{})
			tr := &panicTracer{}
			if tc.inStart {
				tr.panicIn("", "ReleaseStart")
			} else {
				tr.panicIn("", "ReleaseEnd")
			}
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
