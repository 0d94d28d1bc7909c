package dflock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// The caller's context is user code the Client calls while it holds shared
// state: the in-flight count Close waits for, a connection's read turn, a
// grant not yet handed over, a wait-pool connection, a ticket's state. A
// context whose methods panic (a typed nil, a buggy Value), recovered by
// the caller's middleware, or call runtime.Goexit, must leave none of it
// behind. These tests make the k-th call of a context's methods on the
// calling goroutine fail, for k = 1, 2, … until the call no longer reaches
// call k, and after each check that nothing was left behind.

var errFaultyCtx = errors.New("faulty context")

// faultyCtx fails every call of its methods from the k-th on, counting only
// those made on the goroutine gid (another goroutine's calls are the
// context package's propagation, not the caller's code).
type faultyCtx struct {
	context.Context
	gid    uint64
	k      int64
	n      atomic.Int64
	goexit bool
	hit    atomic.Bool
	where  string // the stack at the failing call
}

func (f *faultyCtx) fault() {
	if goroutineID() != f.gid || f.n.Add(1) < f.k {
		return
	}
	if f.hit.CompareAndSwap(false, true) {
		f.where = string(debug.Stack())
	}
	if f.goexit {
		runtime.Goexit()
	}
	panic(errFaultyCtx)
}

func (f *faultyCtx) Deadline() (time.Time, bool) { f.fault(); return f.Context.Deadline() }
func (f *faultyCtx) Done() <-chan struct{}       { f.fault(); return f.Context.Done() }
func (f *faultyCtx) Err() error                  { f.fault(); return f.Context.Err() }
func (f *faultyCtx) Value(key any) any           { f.fault(); return f.Context.Value(key) }

func goroutineID() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	id, _ := strconv.ParseUint(string(b[:bytes.IndexByte(b, ' ')]), 10, 64)
	return id
}

// attempt runs op on a goroutine of its own with a context whose k-th call
// fails, and reports whether the call was reached. A panic other than the
// context's fails the test.
func attempt(t *testing.T, base context.Context, k int64, goexit bool, op func(ctx context.Context)) (hit bool, where string) {
	t.Helper()
	done := make(chan any, 1)
	var ctx *faultyCtx
	go func() {
		exited := true
		defer func() {
			if exited {
				done <- recover()
			}
		}()
		ctx = &faultyCtx{Context: base, gid: goroutineID(), k: k, goexit: goexit}
		op(ctx)
		exited = false
		done <- nil
	}()
	select {
	case p := <-done:
		if p != nil && p != errFaultyCtx {
			t.Fatalf("k=%d: the call panicked with %v, not the context's panic", k, p)
		}
	case <-time.After(15 * time.Second):
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Fatalf("k=%d: the call did not return within 15s; goroutines:\n%s", k, b.String())
	}
	return ctx.hit.Load(), ctx.where
}

// faultCase is one operation run with a faulty context, on a Client whose
// lane has one connection, beside a lock held on it.
type faultCase struct {
	name string
	// setup runs before each attempt, with good contexts; op is the call
	// under test (whatever it acquires, it releases with a good context
	// before it returns); cleanup runs after the checks.
	setup   func(t *testing.T, f *faultFixture)
	op      func(f *faultFixture, ctx context.Context)
	cleanup func(t *testing.T, f *faultFixture)
}

type faultFixture struct {
	srv   *testutil.Server
	c     *Client
	other *Client // holds "k" for the contended cases
	held  *Lock   // other's
	tk    *Ticket
	l     *Lock // the handle a case releases under test
	sub   *Subscription
}

func (f *faultFixture) holdK(t *testing.T) {
	t.Helper()
	l, err := f.other.Lock(testCtx(t), "k")
	require.NoError(t, err)
	f.held = l
}

// releaseWhenWaited releases other's hold of "k" once the server shows a
// waiter for it, or the attempt has ended (done).
func (f *faultFixture) releaseWhenWaited(done <-chan struct{}) {
	go func() {
		for lockWaiters(f.srv, "k") == 0 {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
		_ = f.held.Release(context.Background())
	}()
}

// releaseHeldAfter releases other's hold of "k" after d, unless the
// returned stop is called first.
func (f *faultFixture) releaseHeldAfter(d time.Duration) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(d):
			_ = f.held.Release(context.Background())
		}
	}()
	return func() { close(done) }
}

// cancelTicket cancels f.tk after a faulty Wait: it must return.
func cancelTicket(t *testing.T, f *faultFixture) {
	done := make(chan error, 1)
	go func() { done <- f.tk.Cancel() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Ticket.Cancel after the faulty Wait did not return within 5s")
	}
}

func releaseIfHeld[H interface{ Release(context.Context) error }](h H, err error) {
	if err == nil {
		_ = h.Release(context.Background())
	}
}

// releaseAgain releases f.l after the faulty Release: it must return (the
// first one's outcome, or its own).
func releaseAgain(t *testing.T, f *faultFixture) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = f.l.Release(ctx)
	require.NoError(t, ctx.Err(), "a Release after the faulty one did not return")
}

func faultCases() []faultCase {
	noop := func(*testing.T, *faultFixture) {}
	releaseHeld := func(t *testing.T, f *faultFixture) {
		if f.held != nil {
			_ = f.held.Release(testCtx(t))
			f.held = nil
		}
	}
	return []faultCase{
		{name: "TryLock", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			releaseIfHeld(f.c.TryLock(ctx, "k"))
		}},
		{name: "Lock", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			releaseIfHeld(f.c.Lock(ctx, "k"))
		}},
		{name: "LockContended", setup: func(t *testing.T, f *faultFixture) { f.holdK(t) }, cleanup: releaseHeld,
			op: func(f *faultFixture, ctx context.Context) {
				done := make(chan struct{})
				defer close(done)
				f.releaseWhenWaited(done)
				releaseIfHeld(f.c.Lock(ctx, "k"))
			}},
		{name: "LockTimeoutContended", setup: func(t *testing.T, f *faultFixture) { f.holdK(t) }, cleanup: releaseHeld,
			op: func(f *faultFixture, ctx context.Context) {
				done := make(chan struct{})
				defer close(done)
				f.releaseWhenWaited(done)
				releaseIfHeld(f.c.Lock(ctx, "k", AcquireTimeout(10*time.Second)))
			}},
		{name: "Semaphore", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			releaseIfHeld(f.c.Semaphore(ctx, "s", 2))
		}},
		{name: "WithLock", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			_ = f.c.WithLock(ctx, "k", func(context.Context) error { return nil })
		}},
		{name: "Enqueue", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			tk, err := f.c.Enqueue(ctx, "k")
			if err == nil {
				_ = tk.Cancel()
			}
		}},
		{name: "EnqueueContended", setup: func(t *testing.T, f *faultFixture) { f.holdK(t) }, cleanup: releaseHeld,
			op: func(f *faultFixture, ctx context.Context) {
				tk, err := f.c.Enqueue(ctx, "k")
				if err == nil {
					_ = tk.Cancel()
				}
			}},
		{name: "TicketWait",
			setup: func(t *testing.T, f *faultFixture) {
				f.holdK(t)
				tk, err := f.c.Enqueue(testCtx(t), "k")
				require.NoError(t, err)
				f.tk = tk
				require.NoError(t, f.held.Release(testCtx(t)))
				f.held = nil
			},
			op: func(f *faultFixture, ctx context.Context) {
				releaseIfHeld(f.tk.Wait(ctx))
			},
			cleanup: cancelTicket},
		{name: "ReleaseLane",
			setup: func(t *testing.T, f *faultFixture) {
				l, err := f.c.TryLock(testCtx(t), "k")
				require.NoError(t, err)
				f.l = l
			},
			op:      func(f *faultFixture, ctx context.Context) { _ = f.l.Release(ctx) },
			cleanup: releaseAgain},
		{name: "ReleasePinned",
			setup: func(t *testing.T, f *faultFixture) {
				f.holdK(t)
				done := make(chan struct{})
				defer close(done)
				f.releaseWhenWaited(done)
				l, err := f.c.Lock(testCtx(t), "k")
				require.NoError(t, err)
				f.held, f.l = nil, l
			},
			op:      func(f *faultFixture, ctx context.Context) { _ = f.l.Release(ctx) },
			cleanup: releaseAgain},
		{name: "Renew",
			setup: func(t *testing.T, f *faultFixture) {
				l, err := f.c.TryLock(testCtx(t), "k")
				require.NoError(t, err)
				f.l = l
			},
			op:      func(f *faultFixture, ctx context.Context) { _ = f.l.Renew(ctx) },
			cleanup: func(t *testing.T, f *faultFixture) { require.NoError(t, f.l.Release(testCtx(t))) }},
		{name: "Emit", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			_, _ = f.c.Emit(ctx, "ch", "p")
		}},
		{name: "EmitLong", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			_, _ = f.c.Emit(ctx, "ch", strings.Repeat("p", 300))
		}},
		{name: "Listen", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			if sub, err := f.c.Listen(ctx, "ch"); err == nil {
				_ = sub.Close()
			}
		}},
		{name: "Next",
			setup: func(t *testing.T, f *faultFixture) {
				sub, err := f.c.Listen(testCtx(t), "ch")
				require.NoError(t, err)
				f.sub = sub
				_, err = f.c.Emit(testCtx(t), "ch", "p")
				require.NoError(t, err)
			},
			op:      func(f *faultFixture, ctx context.Context) { _, _ = f.sub.Next(ctx) },
			cleanup: func(t *testing.T, f *faultFixture) { require.NoError(t, f.sub.Close()) }},
		{name: "Stats", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			_, _ = f.c.Stats(ctx)
		}},
	}
}

// TestFaultyContextLeavesNothingBehind runs every case at every k, with a
// panic and with runtime.Goexit. After each attempt: the Client's in-flight
// count drains (else Close would hang), no lease is held on the server or in
// the Client by nobody, no wait-pool connection is left out of the pool,
// the lane still answers (another caller's TryLock), and a lock held
// throughout on the same lane connection is not lost. Then Close returns.
// The faulty context wraps one that never ends, one that can be cancelled,
// or one with a deadline: each takes the Client down other paths.
func TestFaultyContextLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	for _, fc := range faultCases() {
		runFaultMatrix(t, fc)
	}
}

// runFaultMatrix runs fc (on a Client with opts) as subtests, with a panic
// and with runtime.Goexit, over each kind of context the faulty one wraps.
func runFaultMatrix(t *testing.T, fc faultCase, opts ...Option) {
	cancellable := func(t *testing.T) context.Context {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		return ctx
	}
	bases := []struct {
		name string
		ctx  func(t *testing.T) context.Context
		opts []Option
	}{
		{"background", func(*testing.T) context.Context { return context.Background() }, nil},
		{"cancel", cancellable, nil},
		{"deadline", func(t *testing.T) context.Context { return testCtx(t) }, nil},
		// A Tracer takes the acquires and releases through traced paths.
		{"traced", cancellable, []Option{WithTracer(noopTracer{})}},
	}
	for _, base := range bases {
		for _, goexit := range []bool{false, true} {
			name := fc.name + "/" + base.name + "/panic"
			if goexit {
				name = fc.name + "/" + base.name + "/goexit"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				runFaultCase(t, fc, base.ctx(t), goexit, append(append([]Option{}, opts...), base.opts...)...)
			})
		}
	}
}

func runFaultCase(t *testing.T, fc faultCase, base context.Context, goexit bool, opts ...Option) {
	srv := newServer(t, testutil.Config{})
	c, err := New([]string{srv.Addr()}, append([]Option{WithLaneConns(1), WithLeaseTTL(30 * time.Second)}, opts...)...)
	require.NoError(t, err)
	closed := false
	defer func() {
		if !closed {
			// A failed check: Close may hang (that may be the failure).
			go func() { _ = c.Close() }()
		}
	}()
	f := &faultFixture{srv: srv, c: c, other: newClient(t, []string{srv.Addr()})}
	bystander, err := c.TryLock(testCtx(t), "bystander")
	require.NoError(t, err)

	for k := int64(1); ; k++ {
		require.Less(t, k, int64(200), "the call never stopped reaching call k")
		fc.setup(t, f)
		hit, where := attempt(t, base, k, goexit, func(ctx context.Context) { fc.op(f, ctx) })
		t.Logf("k=%d failed the call at:\n%s", k, where)
		fc.cleanup(t, f)
		checkNothingLeft(t, f, bystander, fmt.Sprintf("k=%d", k))
		if !hit {
			break
		}
	}
	require.NoError(t, bystander.Err(), "the lock held beside the faulty calls")
	require.NoError(t, bystander.Release(testCtx(t)))
	closeDone := make(chan struct{})
	go func() {
		_ = c.Close()
		close(closeDone)
	}()
	select {
	case <-closeDone:
		closed = true
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10s")
	}
	require.Zero(t, heldTotal(srv), "leases held on the server after Close")
}

func checkNothingLeft(t *testing.T, f *faultFixture, bystander *Lock, at string) {
	t.Helper()
	c := f.c
	// Whatever was given back is given back in the background: poll.
	var why string
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := c.Snapshot()
		srvHeld := heldTotal(f.srv)
		switch {
		case c.inflight.Load() != 0:
			why = fmt.Sprintf("%d calls still in flight (Close would wait for them)", c.inflight.Load())
		case s.Held != 1:
			why = fmt.Sprintf("the Client tracks %d leases, not just the bystander", s.Held)
		case srvHeld != 1:
			why = fmt.Sprintf("the server holds %d leases, not just the bystander", srvHeld)
		case s.Servers[0].Conns.InUse != 0 || s.Servers[0].Conns.Pinned != 0:
			why = fmt.Sprintf("wait-pool connections left out: %+v", s.Servers[0].Conns)
		case s.Servers[0].WaitsInFlight != 0:
			why = fmt.Sprintf("%d waits still counted", s.Servers[0].WaitsInFlight)
		default:
			why = ""
		}
		if why == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	require.Empty(t, why, at)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := c.TryLock(ctx, "probe")
	require.NoError(t, err, "%s: another caller's TryLock on the lane", at)
	require.NoError(t, l.Release(ctx), at)
	require.NoError(t, bystander.Err(), "%s: the lock held beside the faulty call", at)
}
