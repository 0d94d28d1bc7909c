// Signals: pub/sub on dflockd — a wildcard subscriber across every server,
// a queue group of workers that share the work, and a slow consumer whose
// overflow is dropped and counted instead of stalling anyone.
//
//	go run ./examples/signals                             # embedded servers
//	DFLOCK_SERVERS=127.0.0.1:6388 go run ./examples/signals
//
// Signals exist in dflockd v1.11 to v1.16 only; against other versions
// Listen and Emit fail with an error matching dflock.ErrNotSupported.
// Delivery is at most once (docs/signals.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/examples/internal/demo"
)

func main() {
	if err := run(); err != nil {
		log.Printf("signals: %v", err)
		os.Exit(1)
	}
}

func run() error {
	servers, stop, err := demo.Servers(3)
	if err != nil {
		return err
	}
	defer stop()

	c, err := dflock.New(servers)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// 1. A wildcard pattern listens on every server: channels are placed on
	//    servers like lock keys, and this subscription merges them all.
	audit, err := c.Listen(ctx, "orders.>")
	if errors.Is(err, dflock.ErrNotSupported) {
		return fmt.Errorf("these servers have no signals (dflockd v1.11–v1.16 only): %w", err)
	}
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer audit.Close()

	// 2. A queue group: each signal goes to one of the three workers.
	var wg sync.WaitGroup
	var mu sync.Mutex
	handled := map[string]int{}
	var workers []*dflock.Subscription
	defer func() {
		for _, sub := range workers {
			_ = sub.Close() // ends the worker's range loop
		}
		wg.Wait()
	}()
	for w := 1; w <= 3; w++ {
		sub, err := c.Listen(ctx, "orders.*.paid", dflock.Group("billing"))
		if err != nil {
			return fmt.Errorf("listen (group): %w", err)
		}
		workers = append(workers, sub)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sig := range sub.C() { // closed by sub.Close
				if sig.Err != nil { // a gap: a listener connection broke and was re-established
					log.Printf("worker %d: %v", w, sig.Err)
					continue
				}
				mu.Lock()
				handled[fmt.Sprintf("worker %d", w)]++
				mu.Unlock()
			}
		}()
	}

	// 3. A slow consumer with a small buffer that nobody reads.
	slow, err := c.Listen(ctx, "orders.>", dflock.Buffer(4))
	if err != nil {
		return fmt.Errorf("listen (slow): %w", err)
	}
	defer slow.Close()

	const orders = 30
	for i := 1; i <= orders; i++ {
		ch := fmt.Sprintf("orders.%d.paid", i)
		if _, err := c.Emit(ctx, ch, fmt.Sprintf("amount=%d", 10*i)); err != nil {
			return fmt.Errorf("emit: %w", err)
		}
	}

	seen := 0
	for seen < orders {
		sig, err := audit.Next(ctx)
		if errors.Is(err, dflock.ErrSignalGap) {
			log.Printf("audit: %v", err)
			continue
		}
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		if seen < 3 {
			fmt.Printf("audit:   %s %s (server %s)\n", sig.Channel, sig.Payload, c.ServerFor(sig.Channel))
		}
		seen++
	}
	fmt.Printf("audit:   received all %d signals from %d servers\n", seen, len(servers))

	// Wait until the workers have handled every order, then stop them.
	for {
		mu.Lock()
		total := 0
		for _, n := range handled {
			total += n
		}
		mu.Unlock()
		if total == orders {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("workers handled %d of %d orders: %w", total, orders, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	mu.Lock()
	fmt.Printf("billing: %d orders shared by %d workers, each handled once\n", orders, len(handled))
	mu.Unlock()

	fmt.Printf("slow:    buffered %d, dropped %d (nobody read it; nobody else was slowed down)\n", len(slow.C()), slow.Dropped())
	return nil
}
