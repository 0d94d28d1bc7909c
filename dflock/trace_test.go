package dflock

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// span is one Start/End pair seen by recTracer.
type span struct {
	id, parent int64 // parent: the span whose context the Start got (0: none)
	kind       string
	info       AcquireInfo // acquire spans
	lease      LeaseInfo   // release spans: the lease at Start
	res        AcquireResult
	err        error // release spans
	ends       int
	startG     uint64 // goroutine of Start
	endG       uint64
}

type spanKey struct{}

// recTracer records every pair and checks that each Start gets one End, on
// the same goroutine, with the context Start returned.
type recTracer struct {
	mu     sync.Mutex
	next   int64
	spans  []*span
	errors []string
}

func (r *recTracer) start(ctx context.Context, s *span) context.Context {
	s.startG = goid()
	if p, ok := ctx.Value(spanKey{}).(*span); ok {
		s.parent = p.id
	}
	r.mu.Lock()
	r.next++
	s.id = r.next
	r.spans = append(r.spans, s)
	r.mu.Unlock()
	return context.WithValue(ctx, spanKey{}, s)
}

func (r *recTracer) end(ctx context.Context, kind string, f func(s *span)) {
	s, ok := ctx.Value(spanKey{}).(*span)
	r.mu.Lock()
	defer r.mu.Unlock()
	if !ok || s.kind != kind {
		r.errors = append(r.errors, kind+" End without its Start's context")
		return
	}
	s.ends++
	s.endG = goid()
	f(s)
}

func (r *recTracer) AcquireStart(ctx context.Context, info AcquireInfo) context.Context {
	return r.start(ctx, &span{kind: "acquire", info: info})
}

func (r *recTracer) AcquireEnd(ctx context.Context, info AcquireInfo, res AcquireResult) {
	r.end(ctx, "acquire", func(s *span) {
		if s.info != info {
			r.errors = append(r.errors, "AcquireEnd info differs from AcquireStart's")
		}
		s.res = res
	})
}

func (r *recTracer) ReleaseStart(ctx context.Context, info LeaseInfo) context.Context {
	return r.start(ctx, &span{kind: "release", lease: info})
}

func (r *recTracer) ReleaseEnd(ctx context.Context, info LeaseInfo, err error) {
	r.end(ctx, "release", func(s *span) { s.err = err })
}

// take returns the spans recorded so far and forgets them, failing t if a
// pair was unbalanced or ran off the caller's goroutine.
func (r *recTracer) take(t *testing.T) []*span {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	require.Empty(t, r.errors)
	for _, s := range r.spans {
		require.Equal(t, 1, s.ends, "span %d (%s %s) ended %d times", s.id, s.kind, s.info.Op, s.ends)
		require.Equal(t, s.startG, s.endG, "span %d ended on another goroutine", s.id)
	}
	out := r.spans
	r.spans = nil
	return out
}

func tracedClient(t *testing.T, addrs []string, opts ...Option) (*Client, *recTracer) {
	rt := &recTracer{}
	return newClient(t, addrs, append(opts, WithTracer(rt))...), rt
}

func TestTracerLaneGrantAndRelease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c, rt := tracedClient(t, []string{srv.Addr()})
	ctx := testCtx(t)

	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	me := goid()
	require.NoError(t, l.Release(ctx))
	require.NoError(t, l.Release(ctx)) // idempotent, still one pair per call

	sp := rt.take(t)
	require.Len(t, sp, 3)
	a := sp[0]
	assert.Equal(t, AcquireInfo{Op: "lock", Key: "k", Server: srv.Addr()}, a.info)
	assert.Equal(t, me, a.startG, "tracer called off the caller's goroutine")
	assert.Equal(t, Granted, a.res.Outcome)
	assert.Equal(t, PathLane, a.res.Path)
	assert.Zero(t, a.res.Waited)
	assert.Positive(t, a.res.Duration)
	assert.NoError(t, a.res.Err)
	assert.Equal(t, LeaseInfo{Key: "k", Token: l.Token(), Server: srv.Addr(), TTL: l.TTL()}, a.res.Lease)
	for _, r := range sp[1:] {
		assert.Equal(t, "release", r.kind)
		assert.Equal(t, a.res.Lease, r.lease)
		assert.NoError(t, r.err)
		assert.Equal(t, me, r.startG)
	}
}

func TestTracerWaitPoolGrant(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c, rt := tracedClient(t, []string{srv.Addr()})
	ctx := testCtx(t)
	holder, err := c.Lock(ctx, "k")
	require.NoError(t, err)

	got := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, "k")
		assert.NoError(t, err)
		got <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "k") == 1 }, testTimeout, time.Millisecond)
	// Whatever the clock's resolution, the waiter has now waited for at
	// least one round trip of the release below.
	require.NoError(t, holder.Release(ctx))
	l := recv(t, ctx, got, "the grant")
	require.NotNil(t, l)
	require.NoError(t, l.Release(ctx))

	sp := rt.take(t)
	var w *span
	for _, s := range sp {
		if s.kind == "acquire" && s.res.Path == PathWaitPool {
			w = s
		}
	}
	require.NotNil(t, w, "no acquire granted on the wait pool")
	assert.Equal(t, Granted, w.res.Outcome)
	assert.Positive(t, w.res.Waited)
	assert.LessOrEqual(t, w.res.Waited, w.res.Duration)
	assert.Equal(t, l.Token(), w.res.Lease.Token)
}

func TestTracerOutcomes(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c, rt := tracedClient(t, []string{srv.Addr()})
	ctx := testCtx(t)
	holder, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	defer holder.Release(ctx)
	rt.take(t)

	t.Run("refused try", func(t *testing.T) {
		_, err := c.TryLock(ctx, "k")
		require.ErrorIs(t, err, ErrNotAcquired)
		sp := rt.take(t)
		require.Len(t, sp, 1)
		assert.Equal(t, "trylock", sp[0].info.Op)
		assert.Equal(t, Refused, sp[0].res.Outcome)
		assert.Equal(t, PathNone, sp[0].res.Path)
		assert.Equal(t, err, sp[0].res.Err)
	})
	t.Run("timed out", func(t *testing.T) {
		// Long enough for the lane try (which the timeout bounds too) to
		// be answered under load, so that the timeout ends the wait: 20 ms
		// once ran out on the lane, with no wait to report.
		_, err := c.Lock(ctx, "k", AcquireTimeout(250*time.Millisecond))
		require.ErrorIs(t, err, ErrTimeout)
		sp := rt.take(t)
		require.Len(t, sp, 1)
		assert.Equal(t, TimedOut, sp[0].res.Outcome)
		assert.Equal(t, PathWaitPool, sp[0].res.Path)
		assert.Positive(t, sp[0].res.Waited)
	})
	t.Run("cancelled", func(t *testing.T) {
		full, err := c.Semaphore(ctx, "s", 1)
		require.NoError(t, err)
		defer full.Release(ctx)
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := c.Semaphore(cctx, "s", 1)
			done <- err
		}()
		require.Eventually(t, func() bool { return semWaiters(srv, "s") == 1 }, testTimeout, time.Millisecond, "no waiter")
		cancel()
		require.ErrorIs(t, recv(t, ctx, done, "the cancelled call"), context.Canceled)
		var acq []*span
		for _, s := range rt.take(t) {
			if s.info.Op == "semaphore" && s.info.Key == "s" {
				acq = append(acq, s)
			}
		}
		require.NotEmpty(t, acq)
		last := acq[len(acq)-1]
		assert.Equal(t, Cancelled, last.res.Outcome)
		assert.Equal(t, PathWaitPool, last.res.Path)
		assert.True(t, last.info.Semaphore)
		assert.Equal(t, 1, last.info.Limit)
	})
}

func TestTracerFailedOnDeadServer(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	addr := srv.Addr()
	require.NoError(t, srv.Close())
	c, rt := tracedClient(t, []string{addr})
	_, err := c.Lock(testCtx(t), "k")
	require.ErrorIs(t, err, ErrServerUnavailable)
	sp := rt.take(t)
	require.Len(t, sp, 1)
	assert.Equal(t, Failed, sp[0].res.Outcome)
	assert.Equal(t, PathNone, sp[0].res.Path)
	assert.ErrorIs(t, sp[0].res.Err, ErrServerUnavailable)
}

// WithLock is one pair around acquire, fn and release, with the inner
// acquire and release as its children — also when fn panics.
func TestTracerWithLockNestsAndBalancesOnPanic(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c, rt := tracedClient(t, []string{srv.Addr()})
	ctx := testCtx(t)

	fnErr := errors.New("fn failed")
	err := c.WithLock(ctx, "k", func(ctx context.Context) error {
		_, inSpan := ctx.Value(spanKey{}).(*span)
		assert.True(t, inSpan, "fn's context does not descend from the withlock span")
		return fnErr
	})
	require.ErrorIs(t, err, fnErr)
	checkWith := func(wantErr error) {
		sp := rt.take(t)
		require.Len(t, sp, 3)
		outer, inner, rel := sp[0], sp[1], sp[2]
		assert.Equal(t, "withlock", outer.info.Op)
		assert.Equal(t, "lock", inner.info.Op)
		assert.Equal(t, "release", rel.kind)
		assert.Equal(t, outer.id, inner.parent)
		assert.Equal(t, outer.id, rel.parent)
		assert.Equal(t, Granted, outer.res.Outcome)
		assert.Equal(t, PathLane, outer.res.Path)
		assert.Equal(t, inner.res.Lease, outer.res.Lease)
		assert.ErrorIs(t, outer.res.Err, wantErr)
		assert.GreaterOrEqual(t, outer.res.Duration, inner.res.Duration)
	}
	checkWith(fnErr)

	func() {
		defer func() { assert.Equal(t, "boom", recover()) }()
		_ = c.WithSemaphore(ctx, "s", 2, func(context.Context) error { panic("boom") })
	}()
	sp := rt.take(t)
	require.Len(t, sp, 3)
	assert.Equal(t, "withsemaphore", sp[0].info.Op)
	assert.Equal(t, "semaphore", sp[1].info.Op)
	assert.ErrorIs(t, sp[0].res.Err, errFnPanicked)
	assert.Equal(t, 0, semHolders(srv, "s"), "the slot was not released after the panic")

	// A WithLock that cannot acquire ends its pair with the acquire's outcome.
	holder, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	rt.take(t)
	err = c.WithLock(ctx, "k", func(context.Context) error { return nil }, AcquireTimeout(0))
	require.ErrorIs(t, err, ErrNotAcquired)
	sp = rt.take(t)
	require.Len(t, sp, 2)
	assert.Equal(t, Refused, sp[0].res.Outcome)
	assert.Equal(t, err, sp[0].res.Err)
	require.NoError(t, holder.Release(ctx))
}

func TestTracerTickets(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c, rt := tracedClient(t, []string{srv.Addr()})
	ctx := testCtx(t)

	// Granted at enqueue: Wait returns it at once.
	tk, err := c.EnqueueSemaphore(ctx, "s", 3)
	require.NoError(t, err)
	s, err := tk.Wait(ctx)
	require.NoError(t, err)
	sp := rt.take(t)
	require.Len(t, sp, 2)
	assert.Equal(t, AcquireInfo{Op: "enqueue", Key: "s", Server: srv.Addr(), Semaphore: true, Limit: 3}, sp[0].info)
	assert.Equal(t, PathWaitPool, sp[0].res.Path)
	assert.Equal(t, s.Token(), sp[0].res.Lease.Token)
	assert.Equal(t, "wait", sp[1].info.Op)
	assert.Equal(t, Granted, sp[1].res.Outcome)
	require.NoError(t, s.Release(ctx))
	rt.take(t)

	// Queued, then granted after waiting.
	holder, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	q, err := c.Enqueue(ctx, "k")
	require.NoError(t, err)
	require.False(t, q.Acquired())
	got := make(chan *Lock, 1)
	go func() {
		l, err := q.Wait(ctx)
		assert.NoError(t, err)
		got <- l
	}()
	require.Eventually(t, func() bool { return c.Snapshot().Servers[0].WaitsInFlight == 1 }, testTimeout, time.Millisecond)
	require.NoError(t, holder.Release(ctx))
	l := recv(t, ctx, got, "the grant")
	require.NotNil(t, l)
	require.NoError(t, l.Release(ctx))
	var wait *span
	for _, s := range rt.take(t) {
		if s.info.Op == "enqueue" {
			assert.Equal(t, Granted, s.res.Outcome)
			assert.Zero(t, s.res.Lease, "a queued ticket holds no lease yet")
		}
		if s.info.Op == "wait" {
			wait = s
		}
	}
	require.NotNil(t, wait)
	assert.Equal(t, Granted, wait.res.Outcome)
	assert.Equal(t, PathWaitPool, wait.res.Path)
	assert.Positive(t, wait.res.Waited)
	assert.Equal(t, l.Token(), wait.res.Lease.Token)
}

// Concurrent mixed traffic: every Start has exactly one End.
func TestTracerPairsBalancedUnderConcurrency(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c, rt := tracedClient(t, []string{srv.Addr()})
	ctx := testCtx(t)
	var wg sync.WaitGroup
	var ops atomic.Int64
	for g := range 8 {
		wg.Go(func() {
			for i := range 10 {
				key := "k" + strconv.Itoa(i%3)
				switch (g + i) % 3 {
				case 0:
					_ = c.WithLock(ctx, key, func(context.Context) error { return nil })
				case 1:
					if l, err := c.TryLock(ctx, key); err == nil {
						_ = l.Release(ctx)
					}
				case 2:
					if l, err := c.Lock(ctx, key, AcquireTimeout(5*time.Millisecond)); err == nil {
						_ = l.Release(ctx)
					}
				}
				ops.Add(1)
			}
		})
	}
	wg.Wait()
	sp := rt.take(t) // checks the balance
	assert.GreaterOrEqual(t, int64(len(sp)), ops.Load())
}

func TestHooksOnDialAndAdditive(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	var order []string
	var mu sync.Mutex
	dials := make(chan DialInfo, 16)
	c := newClient(t, []string{srv.Addr()},
		WithHooks(Hooks{OnDial: func(d DialInfo) {
			mu.Lock()
			order = append(order, "first")
			mu.Unlock()
			select {
			case dials <- d:
			default:
			}
		}}),
		WithHooks(Hooks{OnDial: func(DialInfo) { mu.Lock(); order = append(order, "second"); mu.Unlock() }}),
		WithLaneConns(1))
	ctx := testCtx(t)
	l, err := c.TryLock(ctx, "k")
	require.NoError(t, err)
	d := recv(t, ctx, dials, "the lane dial")
	assert.Equal(t, srv.Addr(), d.Server)
	assert.Equal(t, "lane", d.Role)
	assert.Positive(t, d.Duration)
	assert.NoError(t, d.Err)

	// A contended Lock dials a wait-pool connection.
	done := make(chan error, 1)
	go func() {
		l2, err := c.Lock(ctx, "k")
		if err == nil {
			err = l2.Release(ctx)
		}
		done <- err
	}()
	d = recv(t, ctx, dials, "the wait-pool dial")
	assert.Equal(t, "wait", d.Role)
	require.NoError(t, l.Release(ctx))
	require.NoError(t, recv(t, ctx, done, "the contended Lock"))

	// A failed dial reports its error.
	require.NoError(t, srv.Stop())
	_, err = c.Stats(ctx)
	require.Error(t, err)
	for d = recv(t, ctx, dials, "a failed dial"); d.Err == nil; d = recv(t, ctx, dials, "a failed dial") {
	}
	assert.Equal(t, "query", d.Role)
	require.NoError(t, c.Close()) // runs the queued hooks
	mu.Lock()
	defer mu.Unlock()
	require.GreaterOrEqual(t, len(order), 6)
	for i := 0; i+1 < len(order); i += 2 {
		assert.Equal(t, []string{"first", "second"}, order[i:i+2], "hook sets ran out of option order")
	}
}

// A Wait on a ticket already waited for is a program error: Failed, with an
// error that says so (and still matches ErrTicketDone). A Wait on a ticket
// cancelled before it is Cancelled.
func TestTracerSecondWaitFailsAndWaitAfterCancelIsCancelled(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c, rt := tracedClient(t, addrsOf(srv))
	ctx := testCtx(t)

	tk, err := c.Enqueue(ctx, "k")
	require.NoError(t, err)
	l, err := tk.Wait(ctx)
	require.NoError(t, err)
	_, err = tk.Wait(ctx)
	require.ErrorIs(t, err, ErrTicketDone)
	assert.Contains(t, err.Error(), "already waited for")
	sp := rt.take(t)
	last := sp[len(sp)-1]
	require.Equal(t, "wait", last.info.Op)
	assert.Equal(t, Failed, last.res.Outcome, "nothing was cancelled: %v", last.res.Err)
	require.NoError(t, l.Release(ctx))

	tk, err = c.Enqueue(ctx, "k2")
	require.NoError(t, err)
	require.NoError(t, tk.Cancel())
	_, err = tk.Wait(ctx)
	require.ErrorIs(t, err, ErrTicketDone)
	assert.NotContains(t, err.Error(), "already waited for")
	sp = rt.take(t)
	last = sp[len(sp)-1]
	require.Equal(t, "wait", last.info.Op)
	assert.Equal(t, Cancelled, last.res.Outcome, "%v", last.res.Err)
}
