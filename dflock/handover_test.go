package dflock

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A grant that came long after its request is confirmed by a renewal
// first; if that renewal is answered only after the lease's life, counted
// from its send, has run out, the lease is lost by the client's own clock
// before Lock can return it. Lock then fails (not acquired, lock lost)
// instead of handing over a Lock already lost, which its caller would
// believe held for a moment after the server's lease had ended (found by
// the chaos soak, where a blackhole held the confirming renewal's answer).
func TestLockWhoseConfirmingRenewalAnswersTooLateIsNotHandedOver(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		traced bool
		with   bool // WithLock, whose fn must not run
	}{
		{"Lock", false, false},
		{"Lock traced", true, false},
		{"WithLock", false, true},
		{"WithLock traced", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var renewals atomic.Int64
			addr := testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
				out := "ok\n"
				switch f[0] {
				case "l":
					time.Sleep(400 * time.Millisecond) // > a quarter of the lease: confirmed
					out = "ok 0123456789abcdef0123456789abcdef 1\n"
				case "n":
					renewals.Add(1)
					time.Sleep(1500 * time.Millisecond) // past the 1 s lease's life
					out = "ok 1\n"
				}
				_, err := nc.Write([]byte(out))
				return err == nil
			})
			rt := &recTracer{}
			lostReported := make(chan error, 1)
			opts := []Option{WithHooks(Hooks{OnLeaseLost: func(_ LeaseInfo, err error) { lostReported <- err }})}
			if tc.traced {
				opts = append(opts, WithTracer(rt))
			}
			c := newClient(t, []string{addr}, opts...)
			var err error
			if tc.with {
				err = c.WithLock(testCtx(t), "k", func(ctx context.Context) error {
					t.Errorf("fn ran with a lease already lost (cause %v)", context.Cause(ctx))
					return nil
				}, LeaseTTL(time.Second))
			} else {
				var l *Lock
				l, err = c.Lock(testCtx(t), "k", LeaseTTL(time.Second))
				if err == nil {
					lerr := l.Err()
					_ = l.Release(context.Background())
					t.Fatalf("Lock handed over a lock already lost (%d renewal(s) sent): %v", renewals.Load(), lerr)
				}
			}
			require.ErrorIs(t, err, ErrNotAcquired)
			require.ErrorIs(t, err, ErrLockLost)
			var e *Error
			require.ErrorAs(t, err, &e)
			require.Equal(t, "lock", e.Op, "the error names the acquire, as its other errors do")
			require.Positive(t, renewals.Load(), "the grant was not confirmed")
			require.Eventually(t, func() bool {
				s := c.Snapshot()
				return s.Lost == 1 && s.Acquired == s.Released+s.Lost
			}, testTimeout, time.Millisecond, "the lease lost at hand-over is not counted lost: %+v", c.Snapshot())
			select { // as Hooks.OnLeaseLost documents
			case lerr := <-lostReported:
				require.ErrorIs(t, lerr, ErrLockLost)
			case <-time.After(testTimeout):
				t.Fatal("OnLeaseLost was not called for the lease lost at hand-over")
			}
			if tc.traced {
				// Every span (WithLock's and its inner lock's) records the
				// failure the caller got, not a grant.
				spans := rt.take(t)
				require.NotEmpty(t, spans)
				for _, s := range spans {
					require.Equal(t, "acquire", s.kind)
					require.Equal(t, Failed, s.res.Outcome, "span %s", s.info.Op)
					require.ErrorIs(t, s.res.Err, ErrLockLost, "span %s", s.info.Op)
				}
			}
		})
	}
}

// A ticket granted at Enqueue is tracked at Enqueue but handed over only by
// a later Wait. A Wait that comes after the lease's loss deadline has
// passed, but before the scheduler's round has declared it lost (the
// scheduler goroutine is late: a stalled process, GC, CPU starvation), must
// not hand over a lease the client itself counts as past its life
// (docs/leases.md, rule 3). (Found by review: Lease.Overdue had been
// decided once, at tracking.)
//
// Deterministic: the Wait runs in a timer of the shared ManualClock that
// falls due before the scheduler's own timer, so the clock has already
// moved past the deadline (client's and server's: the server lease has run
// out too) while the scheduler has not been poked yet.
func TestTicketGrantedAtEnqueueAndWaitedPastItsDeadlineIsNotHandedOver(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	srv := newServer(t, testutil.Config{Clock: clk})
	c := newClient(t, addrsOf(srv), withClock(clk))
	ctx := testCtx(t)

	const ttl = 2 * time.Second // loss deadline 1.8 s after the enqueue
	tk, err := c.Enqueue(ctx, "k", LeaseTTL(ttl))
	require.NoError(t, err)
	require.True(t, tk.Acquired())

	type result struct {
		l       *Lock
		err     error
		lerr    error
		elapsed time.Duration
	}
	start := clk.Now()
	res := make(chan result, 1)
	clk.AfterFunc(time.Nanosecond, func() { // due before the scheduler's renewal timer
		l, err := tk.Wait(ctx)
		r := result{l: l, err: err, elapsed: clk.Now().Sub(start)}
		if l != nil {
			r.lerr = l.Err()
		}
		res <- r
	})
	clk.Advance(ttl + time.Second)
	r := <-res
	if r.err == nil {
		t.Cleanup(func() { _ = r.l.Release(context.Background()) })
		t.Fatalf("Wait handed over a lease %v after its enqueue (TTL %v, loss deadline %v): Err() at hand-over %v",
			r.elapsed, ttl, ttl-ttl/10, r.lerr)
	}
	require.ErrorIs(t, r.err, ErrNotAcquired)
	require.ErrorIs(t, r.err, ErrLockLost)
	// Said as such, although the Lease's own Err ends it by the clock.
	require.ErrorIs(t, r.err, errLostAtHandOver)
}

// A ticket granted at Enqueue whose lease the scheduler has already declared
// lost (its connection dropped): Wait fails as it does for one past its
// deadline, matching both ErrNotAcquired and ErrLockLost (found by review:
// ErrLockLost alone).
func TestWaitOfAGrantedTicketWhoseLeaseWasLostIsNotAcquired(t *testing.T) {
	t.Parallel()
	c, tk, ctx := grantedTicketOnDroppedConn(t)
	require.True(t, waitFor(ctx, testTimeout, func() bool { return c.Snapshot().Lost == 1 }), "lease not lost")
	l, err := tk.Wait(ctx)
	require.Nil(t, l)
	require.ErrorIs(t, err, ErrLockLost)
	require.ErrorIs(t, err, ErrNotAcquired)
}
