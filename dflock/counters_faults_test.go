package dflock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// countingTracer counts pairs and outcomes.
type countingTracer struct {
	starts, ends atomic.Int64
	granted      atomic.Int64 // non-scoped, lease-carrying grants (handed over or not)
	notHanded    atomic.Int64 // of those, granted but ended before the call could return them
	badEnd       atomic.Value // string: a not-handed-over grant reported wrongly
	tokens       sync.Map     // distinct granted tokens
}

func (t *countingTracer) AcquireStart(ctx context.Context, _ AcquireInfo) context.Context {
	t.starts.Add(1)
	return ctx
}

func (t *countingTracer) AcquireEnd(_ context.Context, info AcquireInfo, res AcquireResult) {
	t.ends.Add(1)
	if info.Op == "withlock" || info.Op == "withsemaphore" || res.Lease.Token == "" {
		return
	}
	if _, dup := t.tokens.LoadOrStore(res.Lease.Server+"/"+res.Lease.Key+"/"+res.Lease.Token, true); !dup {
		t.granted.Add(1)
		if res.Outcome != Granted {
			t.notHanded.Add(1)
			// Lost (Failed) or released by Close (Cancelled), and not
			// acquired either way.
			lost := res.Outcome == Failed && errors.Is(res.Err, ErrLockLost)
			closed := res.Outcome == Cancelled && errors.Is(res.Err, ErrClosed)
			if !errors.Is(res.Err, ErrNotAcquired) || !lost && !closed {
				t.badEnd.Store(fmt.Sprintf("a grant not handed over reported as %v: %v", res.Outcome, res.Err))
			}
		}
	}
}
func (t *countingTracer) ReleaseStart(ctx context.Context, _ LeaseInfo) context.Context { return ctx }
func (t *countingTracer) ReleaseEnd(context.Context, LeaseInfo, error)                  {}

// Under connection faults every acquired lease ends exactly once, as a
// release or a loss: after Close, Acquired == Released + Lost, nothing is
// held or waiting, the Tracer saw as many grants as Snapshot counted, and
// OnLeaseLost ran once per counted loss. Counters never go down.
func TestCountersBalanceUnderFaults(t *testing.T) {
	t.Parallel()
	t.Run("close after", func(t *testing.T) { t.Parallel(); countersBalance(t, false) })
	t.Run("close midway", func(t *testing.T) { t.Parallel(); countersBalance(t, true) })
}

func countersBalance(t *testing.T, closeMidway bool) {
	srv := newServer(t, testutil.Config{})
	px, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })

	var lostHooks, dialOK, dialFail atomic.Int64
	tr := &countingTracer{}
	c, err := New([]string{px.Addr()}, WithTracer(tr), WithHooks(Hooks{
		OnLeaseLost: func(LeaseInfo, error) { lostHooks.Add(1) },
		OnDial: func(d DialInfo) {
			if d.Err == nil {
				dialOK.Add(1)
			} else {
				dialFail.Add(1)
			}
		},
	}))
	require.NoError(t, err)
	ctx := testCtx(t)

	stop := make(chan struct{})
	var monoErr atomic.Value
	var sampler sync.WaitGroup
	sampler.Go(func() {
		var prev Snapshot
		for {
			s := c.Snapshot()
			if s.Acquired < prev.Acquired || s.Released < prev.Released || s.Lost < prev.Lost {
				monoErr.Store(fmt.Sprintf("a counter went down: %+v -> %+v", prev, s))
			}
			prev = s
			select {
			case <-stop:
				return
			default:
				time.Sleep(100 * time.Microsecond)
			}
		}
	})

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			key := fmt.Sprintf("k%d", g%3)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				actx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				switch i % 5 {
				case 0:
					if l, err := c.Lock(actx, key); err == nil {
						time.Sleep(time.Millisecond)
						_ = l.Release(ctx)
					}
				case 1:
					if l, err := c.TryLock(actx, key); err == nil {
						_ = l.Release(ctx)
					}
				case 3:
					if tk, err := c.Enqueue(actx, key); err == nil {
						if l, err := tk.Wait(actx); err == nil {
							_ = l.Release(ctx)
						} else {
							_ = tk.Cancel()
						}
					}
				case 4:
					if s, err := c.Semaphore(actx, key+"s", 2); err == nil {
						time.Sleep(time.Millisecond)
						_ = s.Release(ctx)
					}
				case 2:
					_ = c.WithLock(actx, key, func(context.Context) error {
						time.Sleep(time.Millisecond)
						return nil
					})
				}
				cancel()
			}
		})
	}
	for i := range 10 {
		time.Sleep(60 * time.Millisecond)
		px.ResetAll()
		if i%3 == 0 {
			px.RefuseNew(true)
			time.Sleep(20 * time.Millisecond)
			px.RefuseNew(false)
		}
	}
	if closeMidway {
		require.NoError(t, c.Close()) // while the workers run
	}
	close(stop)
	wg.Wait()
	sampler.Wait()
	require.NoError(t, c.Close())

	s := c.Snapshot()
	t.Logf("after Close: %+v; tracer starts=%d ends=%d granted=%d (not handed over %d); OnLeaseLost=%d",
		s, tr.starts.Load(), tr.ends.Load(), tr.granted.Load(), tr.notHanded.Load(), lostHooks.Load())
	if v := monoErr.Load(); v != nil {
		t.Error(v)
	}
	require.Zero(t, s.CallbacksDropped)
	if v := tr.badEnd.Load(); v != nil {
		t.Error(v)
	}
	assert.Equal(t, tr.starts.Load(), tr.ends.Load(), "Tracer pairs")
	assert.Equal(t, s.Acquired, s.Released+s.Lost, "every lease ends once, released or lost")
	assert.Equal(t, tr.granted.Load(), s.Acquired, "grants the Tracer saw vs Acquired")
	assert.Equal(t, s.Lost, lostHooks.Load(), "OnLeaseLost once per loss")
	assert.Zero(t, s.Held)
	assert.Equal(t, s.Servers[0].Dials, dialOK.Load(), "OnDial successes vs Dials")
	assert.Equal(t, s.Servers[0].DialFailures, dialFail.Load(), "OnDial failures vs DialFailures")
	for _, sv := range s.Servers {
		assert.Zero(t, sv.LeasesHeld)
		assert.Zero(t, sv.WaitsInFlight)
		assert.Equal(t, ConnCounts{}, sv.Conns)
	}
}
