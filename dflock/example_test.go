package dflock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// startServer runs an in-process dflockd for the examples; in production
// the Client points at real servers.
func startServer() (addr string, stop func()) {
	srv, stop := startServerWith(testutil.Config{})
	return srv.Addr(), stop
}

// startServerWith is startServer with a configuration of the example's own.
func startServerWith(cfg testutil.Config) (srv *testutil.Server, stop func()) {
	srv, err := testutil.Start(cfg)
	if err != nil {
		log.Fatal(err)
	}
	return srv, func() { _ = srv.Close() }
}

func ExampleClient_Lock() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	l, err := c.Lock(ctx, "orders:42", dflock.AcquireTimeout(10*time.Second), dflock.LeaseTTL(30*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("holding", l.Key(), "with a lease of", l.TTL())

	// Another holder cannot have it meanwhile.
	_, err = c.TryLock(ctx, "orders:42")
	fmt.Println("second TryLock:", errors.Is(err, dflock.ErrNotAcquired))

	if err := l.Release(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("released:", errors.Is(l.Err(), dflock.ErrReleased))
	// Output:
	// holding orders:42 with a lease of 30s
	// second TryLock: true
	// released: true
}

func ExampleClient_WithLock() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	err = c.WithLock(context.Background(), "nightly-report", func(ctx context.Context) error {
		// ctx is cancelled if the lease is lost: pass it to everything
		// that must stop when this process no longer holds the lock.
		fmt.Println("generating the report")
		return nil
	})
	fmt.Println("done:", err)
	// Output:
	// generating the report
	// done: <nil>
}

func ExampleClient_Semaphore() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	// At most two concurrent holders of "encoder".
	a, err := c.Semaphore(ctx, "encoder", 2)
	if err != nil {
		log.Fatal(err)
	}
	b, err := c.Semaphore(ctx, "encoder", 2)
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.TrySemaphore(ctx, "encoder", 2)
	fmt.Println("third slot:", errors.Is(err, dflock.ErrNotAcquired))

	_ = a.Release(ctx)
	third, err := c.TrySemaphore(ctx, "encoder", 2)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("after a release:", third.Key(), "slot of", third.Limit())
	_ = b.Release(ctx)
	_ = third.Release(ctx)
	// Output:
	// third slot: true
	// after a release: encoder slot of 2
}

func ExampleClient_EnqueueSemaphore() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	// One build slot, taken.
	busy, err := c.Semaphore(ctx, "builder", 1)
	if err != nil {
		log.Fatal(err)
	}

	// Queue for a slot now, collect it later.
	t, err := c.EnqueueSemaphore(ctx, "builder", 1)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("acquired at enqueue:", t.Acquired())

	_ = busy.Release(ctx)
	s, err := t.Wait(ctx, dflock.AcquireTimeout(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("got a slot of", s.Key())
	_ = s.Release(ctx)
	// Output:
	// acquired at enqueue: false
	// got a slot of builder
}

func ExampleClient_Enqueue() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	holder, err := c.Lock(ctx, "migration")
	if err != nil {
		log.Fatal(err)
	}

	// Take a place in the queue now, wait for the lock later.
	t, err := c.Enqueue(ctx, "migration")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("acquired at enqueue:", t.Acquired())

	// ... prepare the work ...
	_ = holder.Release(ctx)

	l, err := t.Wait(ctx, dflock.AcquireTimeout(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("got", l.Key())
	_ = l.Release(ctx)
	// Output:
	// acquired at enqueue: false
	// got migration
}
