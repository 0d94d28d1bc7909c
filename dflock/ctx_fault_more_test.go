package dflock

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Operations and paths TestFaultyContextLeavesNothingBehind's
// matrix does not reach.

// extra per-fixture state of the cases below (faultCases are shared by
// parallel subtests).
var moreState sync.Map // *faultFixture -> *moreFix

type moreFix struct {
	held2   *Lock      // other's hold of "k2"
	blocker chan error // c's Lock("k2") parked on the only wait-pool connection
	stk     *SemaphoreTicket
	sem     *Semaphore // other's hold of the semaphore "s" (limit 1)
}

func mf(f *faultFixture) *moreFix {
	v, _ := moreState.LoadOrStore(f, &moreFix{})
	return v.(*moreFix)
}

func moreFaultCases() []struct {
	fc   faultCase
	opts []Option
} {
	noop := func(*testing.T, *faultFixture) {}
	releaseHeld := func(t *testing.T, f *faultFixture) {
		if f.held != nil {
			_ = f.held.Release(testCtx(t))
			f.held = nil
		}
	}
	holdSem := func(t *testing.T, f *faultFixture) {
		s, err := f.other.Semaphore(testCtx(t), "s", 1)
		require.NoError(t, err)
		mf(f).sem = s
	}
	releaseSem := func(t *testing.T, f *faultFixture) {
		if m := mf(f); m.sem != nil {
			_ = m.sem.Release(testCtx(t))
			m.sem = nil
		}
	}
	releaseSemWhenWaited := func(f *faultFixture, done <-chan struct{}) {
		s := mf(f).sem
		go func() {
			for semWaiters(f.srv, "s") == 0 {
				select {
				case <-done:
					return
				case <-time.After(time.Millisecond):
				}
			}
			_ = s.Release(context.Background())
		}()
	}
	// makeHot makes "k" a hot key of c: a lane try that found it held.
	makeHot := func(t *testing.T, f *faultFixture) {
		f.holdK(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		_, err := f.c.Lock(ctx, "k")
		require.Error(t, err)
		require.NoError(t, f.held.Release(testCtx(t)))
		f.held = nil
	}
	type mc = struct {
		fc   faultCase
		opts []Option
	}
	return []mc{
		{fc: faultCase{name: "TrySemaphore", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			releaseIfHeld(f.c.TrySemaphore(ctx, "s", 2))
		}}},
		{fc: faultCase{name: "TryLockTimeout0", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			releaseIfHeld(f.c.TryLock(ctx, "k", AcquireTimeout(0)))
		}}},
		{fc: faultCase{name: "LockTimeoutFree", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			releaseIfHeld(f.c.Lock(ctx, "k", AcquireTimeout(10*time.Second)))
		}}},
		{fc: faultCase{name: "SemaphoreTimeoutContended", setup: holdSem, cleanup: releaseSem,
			op: func(f *faultFixture, ctx context.Context) {
				done := make(chan struct{})
				defer close(done)
				releaseSemWhenWaited(f, done)
				releaseIfHeld(f.c.Semaphore(ctx, "s", 1, AcquireTimeout(10*time.Second)))
			}}},
		{fc: faultCase{name: "WithSemaphore", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			_ = f.c.WithSemaphore(ctx, "s", 2, func(context.Context) error { return nil })
		}}},
		{fc: faultCase{name: "WithLockContended", setup: func(t *testing.T, f *faultFixture) { f.holdK(t) }, cleanup: releaseHeld,
			op: func(f *faultFixture, ctx context.Context) {
				done := make(chan struct{})
				defer close(done)
				f.releaseWhenWaited(done)
				_ = f.c.WithLock(ctx, "k", func(context.Context) error { return nil })
			}}},
		{fc: faultCase{name: "LockHotKey", setup: makeHot, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			releaseIfHeld(f.c.Lock(ctx, "k"))
		}}},
		{fc: faultCase{name: "EnqueueSemContendedWait",
			setup: func(t *testing.T, f *faultFixture) {
				holdSem(t, f)
				tk, err := f.c.EnqueueSemaphore(testCtx(t), "s", 1)
				require.NoError(t, err)
				mf(f).stk = tk
				releaseSem(t, f)
			},
			op: func(f *faultFixture, ctx context.Context) { releaseIfHeld(mf(f).stk.Wait(ctx)) },
			cleanup: func(t *testing.T, f *faultFixture) {
				done := make(chan error, 1)
				go func() { done <- mf(f).stk.Cancel() }()
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					t.Fatal("SemaphoreTicket.Cancel after the faulty Wait did not return within 5s")
				}
			}}},
		{fc: faultCase{name: "EnqueueSem", setup: noop, cleanup: noop, op: func(f *faultFixture, ctx context.Context) {
			tk, err := f.c.EnqueueSemaphore(ctx, "s", 2)
			if err == nil {
				_ = tk.Cancel()
			}
		}}},
		{fc: faultCase{name: "TicketWaitGrantedAtEnqueue",
			setup: func(t *testing.T, f *faultFixture) {
				tk, err := f.c.Enqueue(testCtx(t), "k")
				require.NoError(t, err)
				f.tk = tk
			},
			op:      func(f *faultFixture, ctx context.Context) { releaseIfHeld(f.tk.Wait(ctx)) },
			cleanup: cancelTicket}},
		{fc: faultCase{name: "TicketWaitTimeout",
			setup: func(t *testing.T, f *faultFixture) {
				f.holdK(t)
				tk, err := f.c.Enqueue(testCtx(t), "k")
				require.NoError(t, err)
				f.tk = tk
			},
			op: func(f *faultFixture, ctx context.Context) {
				defer f.releaseHeldAfter(50 * time.Millisecond)()
				releaseIfHeld(f.tk.Wait(ctx, AcquireTimeout(10*time.Second)))
			},
			cleanup: func(t *testing.T, f *faultFixture) {
				cancelTicket(t, f)
				releaseHeld(t, f)
			}}},
		// The wait pool at its cap of 1, taken by c's own blocked Lock("k2"):
		// Lock("k") waits for a connection, trying the lane meanwhile.
		{opts: []Option{WithMaxConnsPerServer(1)}, fc: faultCase{name: "LockWaitPoolFull",
			setup: func(t *testing.T, f *faultFixture) {
				f.holdK(t)
				l2, err := f.other.Lock(testCtx(t), "k2")
				require.NoError(t, err)
				m := mf(f)
				m.held2 = l2
				m.blocker = make(chan error, 1)
				go func() {
					l, err := f.c.Lock(context.Background(), "k2")
					if err == nil {
						err = l.Release(context.Background())
					}
					m.blocker <- err
				}()
				require.Eventually(t, func() bool { return lockWaiters(f.srv, "k2") == 1 }, 5*time.Second, time.Millisecond)
			},
			op: func(f *faultFixture, ctx context.Context) {
				defer f.releaseHeldAfter(150 * time.Millisecond)()
				releaseIfHeld(f.c.Lock(ctx, "k"))
			},
			cleanup: func(t *testing.T, f *faultFixture) {
				releaseHeld(t, f)
				m := mf(f)
				require.NoError(t, m.held2.Release(testCtx(t)))
				select {
				case err := <-m.blocker:
					require.NoError(t, err)
				case <-time.After(5 * time.Second):
					t.Fatal("the blocker's Lock(k2) did not end")
				}
			}}},
	}
}

func TestFaultyContextMore(t *testing.T) {
	t.Parallel()
	for _, mc := range moreFaultCases() {
		runFaultMatrix(t, mc.fc, mc.opts...)
	}
}
