package dflock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/dflock-sdk/go/dflock"
)

func ExampleClient_Listen() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Every signal on a channel under "orders." reaches this subscription.
	sub, err := c.Listen(ctx, "orders.>")
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()

	for _, ch := range []string{"orders.created", "orders.paid", "invoices.sent"} {
		if _, err := c.Emit(ctx, ch, "id=42"); err != nil {
			log.Fatal(err)
		}
	}
	for range 2 {
		sig, err := sub.Next(ctx)
		if errors.Is(err, dflock.ErrSignalGap) {
			continue // a listener connection broke: signals may have been missed
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(sig.Channel, sig.Payload)
	}
	// Output:
	// orders.created id=42
	// orders.paid id=42
}

func ExampleClient_Emit() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	n, err := c.Emit(ctx, "jobs.new", "job-1")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("receivers before anyone listens:", n)

	// Two workers in a queue group share the work: each signal goes to one.
	w1, err := c.Listen(ctx, "jobs.>", dflock.Group("workers"))
	if err != nil {
		log.Fatal(err)
	}
	defer w1.Close()
	w2, err := c.Listen(ctx, "jobs.>", dflock.Group("workers"))
	if err != nil {
		log.Fatal(err)
	}
	defer w2.Close()

	for i := 1; i <= 4; i++ {
		if n, err = c.Emit(ctx, "jobs.new", fmt.Sprintf("job-%d", i)); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println("receivers of the last job:", n)
	got := 0
	for got < 4 {
		select {
		case sig := <-w1.C():
			fmt.Println("worker 1:", sig.Payload)
		case sig := <-w2.C():
			fmt.Println("worker 2:", sig.Payload)
		}
		got++
	}
	// Unordered output:
	// receivers before anyone listens: 0
	// receivers of the last job: 1
	// worker 1: job-1
	// worker 2: job-2
	// worker 1: job-3
	// worker 2: job-4
}
