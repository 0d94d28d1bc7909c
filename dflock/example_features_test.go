package dflock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/shard"
	"github.com/dflock-sdk/go/testutil"
)

// Work that must not outlive the lock runs under the lock's Context: it is
// cancelled the moment the lease is lost, with ErrLockLost as its cause.
// Here the server drops every connection, which ends the lease.
func ExampleLock_Context() {
	srv, stop := startServerWith(testutil.Config{})
	defer stop()

	c, err := dflock.New([]string{srv.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	l, err := c.Lock(context.Background(), "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	work := func(ctx context.Context) error {
		// A long job passes ctx to every call it makes; here it waits.
		<-ctx.Done()
		return context.Cause(ctx)
	}
	srv.DropConnections()
	err = work(l.Context())
	fmt.Println("work stopped, lock lost:", errors.Is(err, dflock.ErrLockLost))
	// Output:
	// work stopped, lock lost: true
}

// WithSemaphore runs a function while it holds one of limit slots: here at
// most two of five workers run at once.
func ExampleClient_WithSemaphore() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			err := c.WithSemaphore(ctx, "exports", 2, func(ctx context.Context) error {
				n := inside.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(20 * time.Millisecond) // the export
				inside.Add(-1)
				return nil
			})
			if err != nil {
				log.Fatal(err)
			}
		})
	}
	wg.Wait()
	fmt.Println("at most two at once:", most.Load() <= 2)
	// Output:
	// at most two at once: true
}

// AcquireTimeout bounds the wait for a lock that someone else holds; the
// error then matches both ErrTimeout and ErrNotAcquired.
func ExampleAcquireTimeout() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	holder, err := c.Lock(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	defer holder.Release(ctx)

	_, err = c.Lock(ctx, "orders:42", dflock.AcquireTimeout(100*time.Millisecond))
	fmt.Println("timed out:", errors.Is(err, dflock.ErrTimeout))
	fmt.Println("not acquired:", errors.Is(err, dflock.ErrNotAcquired))
	// Output:
	// timed out: true
	// not acquired: true
}

// shard.CRC32 places keys as the official dflockd clients do, by the
// position of the server in the list, so that a Go service and, say, a
// Python one lock the same key on the same server. ServerFor tells which
// server a key lives on.
func ExampleWithSharding() {
	var addrs []string
	for range 3 {
		addr, stop := startServer()
		defer stop()
		addrs = append(addrs, addr)
	}

	c, err := dflock.New(addrs, dflock.WithSharding(shard.CRC32))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	for _, key := range []string{"orders:1", "orders:2", "invoices:1"} {
		fmt.Printf("%s is on server %d\n", key, slices.Index(addrs, c.ServerFor(key)))
	}
	// Output:
	// orders:1 is on server 2
	// orders:2 is on server 1
	// invoices:1 is on server 0
}

// A subscription buffers signals its consumer has not taken yet; when the
// buffer is full, newer signals are dropped and counted, so that a slow
// consumer never holds up the others.
func ExampleBuffer() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	sub, err := c.Listen(ctx, "jobs", dflock.Buffer(2))
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	for i := range 5 {
		if _, err := c.Emit(ctx, "jobs", fmt.Sprint("job-", i)); err != nil {
			log.Fatal(err)
		}
	}
	// Signals arrive on the subscription's own connection, a little after
	// Emit returns.
	for sub.Dropped() < 3 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	fmt.Println("dropped:", sub.Dropped())
	for range 2 {
		sig, err := sub.Next(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("got:", sig.Payload)
	}
	// Output:
	// dropped: 3
	// got: job-0
	// got: job-1
}

// Stats asks every server for its own view and adds the Client's
// counters; a server that cannot answer has its Err set, and the others
// are still reported.
func ExampleClient_Stats() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	l, err := c.Lock(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)

	st, err := c.Stats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("leases renewed by the Client:", st.Renew.Leases)
	for _, s := range st.Servers {
		for _, lk := range s.State.Locks {
			fmt.Printf("server holds %s (%d waiting)\n", lk.Key, lk.Waiters)
		}
	}
	// Output:
	// leases renewed by the Client: 1
	// server holds orders:42 (0 waiting)
}

// The Client renews every held lease on its own; Renew renews one now and
// waits for the server's answer — before a step that must not start on a
// lease that may already be gone, say. A lock that was lost answers with
// ErrLockLost.
func ExampleLock_Renew() {
	srv, stop := startServerWith(testutil.Config{})
	defer stop()

	c, err := dflock.New([]string{srv.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	l, err := c.Lock(ctx, "orders:42", dflock.LeaseTTL(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("renewed:", l.Renew(ctx) == nil)

	srv.DropConnections() // the server forgets the connection's leases
	<-l.Done()
	fmt.Println("lost:", errors.Is(l.Renew(ctx), dflock.ErrLockLost))
	// Output:
	// renewed: true
	// lost: true
}
