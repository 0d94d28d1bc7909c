package dflock

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// panicTracer panics in AcquireEnd (when panicAcquireEnd is set) or in
// ReleaseStart (when panicReleaseStart is set): user code with a bug.
type panicTracer struct {
	panicAcquireEnd   atomic.Bool
	panicReleaseStart atomic.Bool
}

func (*panicTracer) AcquireStart(ctx context.Context, _ AcquireInfo) context.Context { return ctx }
func (t *panicTracer) AcquireEnd(context.Context, AcquireInfo, AcquireResult) {
	if t.panicAcquireEnd.Load() {
		panic("tracer bug")
	}
}
func (t *panicTracer) ReleaseStart(ctx context.Context, _ LeaseInfo) context.Context {
	if t.panicReleaseStart.Load() {
		panic("tracer bug")
	}
	return ctx
}
func (*panicTracer) ReleaseEnd(context.Context, LeaseInfo, error) {}

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

	tr.panicAcquireEnd.Store(true)
	require.True(t, recovered(func() { _, _ = c.Lock(ctx, "k") }), "the tracer's panic reaches the caller")
	tr.panicAcquireEnd.Store(false)

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

	tr.panicAcquireEnd.Store(true)
	ran := false
	require.True(t, recovered(func() {
		_ = c.WithLock(ctx, "w", func(context.Context) error { ran = true; return nil })
	}))
	tr.panicAcquireEnd.Store(false)
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

	tr.panicReleaseStart.Store(true)
	require.True(t, recovered(func() {
		_ = c.WithLock(ctx, "r", func(context.Context) error { return nil })
	}))
	tr.panicReleaseStart.Store(false)
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
	tr.panicAcquireEnd.Store(true)
	require.True(t, recovered(func() { _, _ = c.Enqueue(ctx, "q") }), "the tracer's panic reaches the caller")
	tr.panicAcquireEnd.Store(false)
	require.NoError(t, holder.Release(ctx))

	other := newClient(t, []string{srv.Addr()})
	l, err := other.TryLock(ctx, "q")
	require.NoError(t, err, "the key went to the ticket nobody has")
	require.NoError(t, l.Release(ctx))
}
