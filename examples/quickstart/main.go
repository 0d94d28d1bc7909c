// Quickstart: a lock, a semaphore and WithLock on one shared Client.
//
//	go run ./examples/quickstart                          # embedded server
//	DFLOCK_SERVERS=127.0.0.1:6388 go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/examples/internal/demo"
)

func main() {
	if err := run(); err != nil {
		log.Printf("quickstart: %v", err)
		os.Exit(1)
	}
}

func run() error {
	servers, stop, err := demo.Servers(1)
	if err != nil {
		return err
	}
	defer stop()

	// One Client per process, shared by every goroutine.
	c, err := dflock.New(servers)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// 1. A lock: exclusive, with a lease the Client renews until Release.
	l, err := c.Lock(ctx, "quickstart:report", dflock.AcquireTimeout(5*time.Second), dflock.LeaseTTL(10*time.Second))
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	fmt.Printf("lock:      holding %q on %s (lease %v)\n", l.Key(), l.Server(), l.TTL())
	if _, err := c.TryLock(ctx, "quickstart:report"); errors.Is(err, dflock.ErrNotAcquired) {
		fmt.Println("lock:      a second TryLock is refused while it is held")
	}
	if err := l.Release(ctx); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	fmt.Println("lock:      released")

	// 2. A semaphore: at most 3 of 10 workers inside at once.
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.WithSemaphore(ctx, "quickstart:crawler", 3, func(ctx context.Context) error {
				n := inside.Add(1)
				defer inside.Add(-1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(20 * time.Millisecond) // the work
				return nil
			}, dflock.AcquireTimeout(10*time.Second))
			if err != nil {
				errs <- fmt.Errorf("worker %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	fmt.Printf("semaphore: 10 workers, limit 3, at most %d inside at once\n", most.Load())

	// 3. WithLock: 8 goroutines increment a shared counter under one lock
	// with a read-sleep-write that would lose updates without it (atomic
	// only to keep the race detector quiet: the lock is what orders them).
	// fn's context is cancelled if the lease is ever lost.
	var counter atomic.Int32
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.WithLock(ctx, "quickstart:counter", func(ctx context.Context) error {
				v := counter.Load()
				time.Sleep(time.Millisecond)
				counter.Store(v + 1)
				return ctx.Err()
			}, dflock.AcquireTimeout(10*time.Second))
			if err != nil {
				log.Printf("withlock: %v", err)
			}
		}()
	}
	wg.Wait()
	fmt.Printf("withlock:  8 increments under the lock, counter = %d\n", counter.Load())

	st, err := c.Stats(ctx)
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	fmt.Printf("stats:     %d acquired, %d released, %d lost\n", st.Client.Acquired, st.Client.Released, st.Client.Lost)
	return nil
}
