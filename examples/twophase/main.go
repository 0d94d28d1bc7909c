// Two-phase acquire: join a lock's queue now (Enqueue), do other work while
// waiting in line, then Wait for the grant. The place in the FIFO is taken at
// Enqueue time, not at Wait time.
//
//	go run ./examples/twophase
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/examples/internal/demo"
)

func main() {
	if err := run(); err != nil {
		log.Printf("twophase: %v", err)
		os.Exit(1)
	}
}

func run() error {
	servers, stop, err := demo.Servers(1)
	if err != nil {
		return err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, err := dflock.New(servers)
	if err != nil {
		return err
	}
	defer c.Close()

	// Someone holds the lock for a moment.
	holder, err := c.Lock(ctx, "twophase:deploy")
	if err != nil {
		return err
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = holder.Release(context.Background())
	}()

	// Phase 1: take a place in the queue. Acquired reports a fast-path grant.
	t, err := c.Enqueue(ctx, "twophase:deploy", dflock.LeaseTTL(10*time.Second))
	if err != nil {
		return err
	}
	fmt.Printf("enqueued on %s, acquired at once: %v\n", t.Server(), t.Acquired())

	// Other work while in line.
	fmt.Println("preparing the deploy while waiting in line...")

	// Phase 2: wait for the grant (Cancel would give up the place instead).
	start := time.Now()
	l, err := t.Wait(ctx, dflock.AcquireTimeout(5*time.Second))
	if err != nil {
		return err
	}
	fmt.Printf("granted after %v of waiting, lease %v\n", time.Since(start).Round(100*time.Millisecond), l.TTL())
	if err := l.Release(ctx); err != nil {
		return err
	}

	// An uncontended enqueue is granted at once.
	t2, err := c.Enqueue(ctx, "twophase:deploy")
	if err != nil {
		return err
	}
	fmt.Printf("uncontended enqueue acquired at once: %v\n", t2.Acquired())
	l2, err := t2.Wait(ctx)
	if err != nil {
		return err
	}
	return l2.Release(ctx)
}
