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

// Stress under -race: many WithLock/WithSemaphore calls, connection drops,
// then Close while functions run. fn's ctx is always cancelled once
// WithLock has returned, and its cause never changes after that.
func TestWithLockDropsAndCloseStress(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c, err := New([]string{srv.Addr()}, WithLeaseTTL(2*time.Second), WithDialTimeout(300*time.Millisecond))
	require.NoError(t, err)
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = c.Close()
		}
	})
	var bad atomic.Int64
	var mu sync.Mutex
	var ex []string
	note := func(f string, a ...any) {
		bad.Add(1)
		mu.Lock()
		if len(ex) < 5 {
			ex = append(ex, fmt.Sprintf(f, a...))
		}
		mu.Unlock()
	}
	causes := map[string]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 10 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				var fctx context.Context
				fn := func(ctx context.Context) error {
					fctx = ctx
					select {
					case <-ctx.Done():
					case <-time.After(time.Duration(rand.IntN(20)) * time.Millisecond):
					}
					return nil
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				var err error
				if g%3 == 0 {
					err = c.WithSemaphore(ctx, fmt.Sprintf("rv-s%d", g%2), 2, fn)
				} else {
					err = c.WithLock(ctx, fmt.Sprintf("rv-l%d", g%4), fn)
				}
				cancel()
				if fctx == nil {
					if errors.Is(err, ErrClosed) {
						return
					}
					time.Sleep(time.Millisecond)
					continue
				}
				if fctx.Err() == nil {
					note("fn's ctx live after WithLock returned (err %v)", err)
				}
				c1 := context.Cause(fctx)
				time.Sleep(time.Millisecond)
				if c2 := context.Cause(fctx); c2 != c1 {
					note("cause changed after return: %v -> %v", c1, c2)
				}
				mu.Lock()
				switch {
				case errors.Is(c1, ErrLockLost):
					causes["lost"]++
				case errors.Is(c1, ErrReleased):
					causes["released"]++
				case errors.Is(c1, ErrClosed):
					causes["closed"]++
				default:
					causes[fmt.Sprint(c1)]++
				}
				mu.Unlock()
			}
		})
	}
	for i := range 20 {
		time.Sleep(time.Duration(20+rand.IntN(80)) * time.Millisecond)
		if i%2 == 0 {
			srv.DropConnections()
		}
	}
	require.NoError(t, c.Close())
	closed = true
	close(stop)
	wg.Wait()
	t.Logf("causes: %v", causes)
	require.Zero(t, bad.Load(), "%v", ex)
	require.Eventually(t, func() bool { return heldTotal(srv) == 0 }, 5*time.Second, 20*time.Millisecond)
}

// Close while a WithLock's function runs releases the lock under it: the
// function's ctx is cancelled with a cause matching ErrClosed (the godoc),
// not the scheduler's internal ErrReleased.
func TestWithLockCloseWhileFnRunsCancelsWithErrClosed(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	c, err := New([]string{srv.Addr()})
	require.NoError(t, err)
	in := make(chan struct{})
	var cause error
	var heldWhenCancelled bool
	done := make(chan error, 1)
	go func() {
		done <- c.WithLock(context.Background(), "rv-close", func(ctx context.Context) error {
			close(in)
			<-ctx.Done()
			cause = context.Cause(ctx)
			heldWhenCancelled = lockHeld(srv, "rv-close")
			return ctx.Err()
		})
	}()
	<-in
	require.NoError(t, c.Close())
	err = <-done
	t.Logf("fn ctx cause: %v; held on server when fn woke: %v; WithLock returned: %v", cause, heldWhenCancelled, err)
	require.True(t, errors.Is(cause, ErrClosed) || errors.Is(cause, ErrLockLost),
		"fn's ctx was cancelled by Close with cause %v, which matches neither ErrClosed nor ErrLockLost", cause)
}
