package dflock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// tokenSlot carries, through the ctx a WithLock's fn receives, the token
// of the lease it runs under (learnt by the Tracer from the inner acquire).
type tokenSlot struct{ tok string }

type reviewTokKey struct{}

type reviewTokTracer struct{}

func (reviewTokTracer) AcquireStart(ctx context.Context, info AcquireInfo) context.Context {
	if info.Op == "withlock" || info.Op == "withsemaphore" {
		return context.WithValue(ctx, reviewTokKey{}, &tokenSlot{})
	}
	return nil
}

func (reviewTokTracer) AcquireEnd(ctx context.Context, info AcquireInfo, res AcquireResult) {
	if (info.Op == "lock" || info.Op == "semaphore") && res.Outcome == Granted {
		if s, ok := ctx.Value(reviewTokKey{}).(*tokenSlot); ok {
			s.tok = res.Lease.Token
		}
	}
}

func (reviewTokTracer) ReleaseStart(ctx context.Context, _ LeaseInfo) context.Context { return nil }
func (reviewTokTracer) ReleaseEnd(context.Context, LeaseInfo, error)                  {}

// WithLock and WithSemaphore under faults (resets, blackholes, dropped
// connections): once OnLeaseLost has reported a lease lost, the function
// running under it never finds its ctx live; a function whose ctx was
// cancelled by a loss gets an error matching ErrLockLost from WithLock; and
// nothing is left held on the server at the end.
func TestWithLockNeverLiveAfterLossReported(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })

	var lost sync.Map // token → *atomic.Bool, set by OnLeaseLost
	flag := func(tok string) *atomic.Bool {
		v, _ := lost.LoadOrStore(tok, new(atomic.Bool))
		return v.(*atomic.Bool)
	}
	var hooks atomic.Int64
	c, err := New([]string{px.Addr()},
		WithLeaseTTL(time.Second),
		WithDialTimeout(300*time.Millisecond),
		WithTracer(reviewTokTracer{}),
		WithHooks(Hooks{OnLeaseLost: func(info LeaseInfo, _ error) {
			hooks.Add(1)
			flag(info.Token).Store(true)
		}}),
	)
	require.NoError(t, err)
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = c.Close()
		}
	})

	var (
		liveAfterLoss, unreported, fnRuns, fnLossCancelled atomic.Int64
		mu                                                 sync.Mutex
		examples                                           []string
	)
	note := func(s string) {
		mu.Lock()
		if len(examples) < 5 {
			examples = append(examples, s)
		}
		mu.Unlock()
	}
	fn := func(ctx context.Context) error {
		fnRuns.Add(1)
		slot, _ := ctx.Value(reviewTokKey{}).(*tokenSlot)
		if slot == nil || slot.tok == "" {
			note("fn ran with no token known")
			return nil
		}
		f := flag(slot.tok)
		end := time.Now().Add(time.Duration(rand.IntN(60)) * time.Millisecond)
		for time.Now().Before(end) {
			reported := f.Load()
			if reported && ctx.Err() == nil {
				liveAfterLoss.Add(1)
				note(fmt.Sprintf("token %s: ctx live after OnLeaseLost ran", slot.tok))
				return nil
			}
			if ctx.Err() != nil {
				break
			}
			time.Sleep(50 * time.Microsecond)
		}
		if errors.Is(context.Cause(ctx), ErrLockLost) {
			fnLossCancelled.Add(1)
			return errFnSawLoss
		}
		return nil
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 12 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				var err error
				if g%3 == 0 {
					err = c.WithSemaphore(ctx, fmt.Sprintf("rev13-s%d", g%2), 3, fn)
				} else {
					err = c.WithLock(ctx, fmt.Sprintf("rev13-l%d", g%3), fn)
				}
				cancel()
				if errors.Is(err, errFnSawLoss) && !errors.Is(err, ErrLockLost) {
					unreported.Add(1)
					note(fmt.Sprintf("fn saw a loss, WithLock returned %v", err))
				}
				if err != nil && !errors.Is(err, errFnSawLoss) {
					time.Sleep(time.Millisecond)
				}
			}
		})
	}

	// Faults for ~4 s, and on until some fn has seen a loss (up to 20 s:
	// on a loaded machine few fns run, and a loss may miss them all).
	deadline := time.Now().Add(4 * time.Second)
	longest := time.Now().Add(20 * time.Second)
	for i := 0; time.Now().Before(deadline) || fnLossCancelled.Load() == 0 && time.Now().Before(longest); i++ {
		time.Sleep(time.Duration(50+rand.IntN(150)) * time.Millisecond)
		switch i % 4 {
		case 0:
			px.ResetAll()
		case 1:
			srv.DropConnections()
		case 2:
			px.Blackhole(true)
			time.Sleep(1200 * time.Millisecond) // past the 1 s lease: lost by the client's clock
			px.Blackhole(false)
		case 3:
			px.Blackhole(true)
			time.Sleep(300 * time.Millisecond)
			px.ResetAll()
			px.Blackhole(false)
		}
	}
	close(stop)
	wg.Wait()

	// Every WithLock returned: nothing of this Client may stay held past the
	// leases' TTL (a lease lost by the clock may linger until it expires).
	require.Eventually(t, func() bool { return heldTotal(srv) == 0 }, 5*time.Second, 20*time.Millisecond,
		"still held on the server after every WithLock returned: %+v", srv.Stats())
	require.NoError(t, c.Close())
	closed = true
	require.Zero(t, heldTotal(srv))

	t.Logf("fn runs %d, fn cancelled by loss %d, OnLeaseLost calls %d", fnRuns.Load(), fnLossCancelled.Load(), hooks.Load())
	require.NotZero(t, fnLossCancelled.Load(), "no fn saw a loss: the test proves nothing")
	require.Zero(t, liveAfterLoss.Load(), "fn found its ctx live after OnLeaseLost reported its lease lost: %v", examples)
	require.Zero(t, unreported.Load(), "fn saw a loss but WithLock's error does not match ErrLockLost: %v", examples)
}

var errFnSawLoss = errors.New("review: fn saw its ctx cancelled by a loss")

// The same, deterministic enough: a WithLock's function (runHeld, as
// WithLock calls it) that waits for the Lock's Done to close must find its
// own ctx cancelled then (a context.AfterFunc on the lease's Context, which
// runs on a goroutine of its own, let Done, Err and OnLeaseLost say "lost"
// while fn's ctx was still live).
func TestWithLockCtxCancelledOnceDoneCloses(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	const rounds = 30
	live := 0
	for i := range rounds {
		var l *Lock
		var err error
		for try := 0; ; try++ { // the client may still be re-dialling
			if l, err = c.Lock(ctx, fmt.Sprintf("rev13-done-%d", i)); err == nil || try == 200 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		require.NoError(t, err)
		var sawLive bool
		dropped := make(chan struct{})
		err = runHeld(ctx, l.h, func(fctx context.Context) error {
			go func() { srv.DropConnections(); close(dropped) }() // the lane connection that owns the lease
			<-l.Done()
			require.ErrorIs(t, l.Err(), ErrLockLost)
			sawLive = fctx.Err() == nil
			<-fctx.Done() // it does come, later
			return nil
		})
		<-dropped
		require.ErrorIs(t, err, ErrLockLost)
		if sawLive {
			live++
		}
	}
	require.Zero(t, live, "%d of %d functions found their ctx live once Done had closed and Err matched ErrLockLost", live, rounds)
}

// WithLock's function context sees a loss by the clock at its first check
// after a freeze, as Lock.Context does: its Err ends a lease past its loss
// deadline (fnContext). It was cancelled only once something else ended
// the lease (found by review).
func TestWithLockFunctionContextSeesALossPastTheDeadlineAtOnce(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Clock: clk})
	c := newClient(t, addrsOf(srv), withClock(clk))
	ctx := testCtx(t)
	res := make(chan error, 1)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- c.WithLock(ctx, "k", func(fctx context.Context) error {
			clk.AfterFunc(time.Nanosecond, func() { res <- fctx.Err() }) // due before the scheduler's timer
			close(ready)
			<-fctx.Done()
			return nil
		}, LeaseTTL(2*time.Second))
	}()
	<-ready
	clk.Advance(3 * time.Second) // frozen past the lease's life
	fnErr := <-res
	werr := <-done
	t.Logf("fn's ctx.Err() right after the freeze: %v; WithLock returned: %v", fnErr, werr)
	if fnErr == nil {
		t.Fatal("fn's context still live right after the freeze, past the lease's loss deadline (Lock.Context().Err() would say lost)")
	}
}
