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

// A gap is a *GapError: Server says which listener connection broke. A
// consumer that takes the gap while the server is still out of reach gets
// a second one, Resumed, once the subscription listens there again: the
// signals emitted in between are lost too, so that is the moment to
// resynchronise (reread the state the signals announce changes of).
func ExampleGapError() {
	srv, stop := startServerWith(testutil.Config{})
	defer stop()

	c, err := dflock.New([]string{srv.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	sub, err := c.Listen(ctx, "orders.>")
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()

	// The server goes away: the listener connection breaks.
	if err := srv.Stop(); err != nil {
		log.Fatal(err)
	}
	var gap *dflock.GapError
	_, err = sub.Next(ctx)
	if errors.As(err, &gap) {
		fmt.Println("gap on the server:", gap.Server == srv.Addr(), "resumed:", gap.Resumed)
	}

	// It comes back; the Client listens there again by itself.
	if err := srv.Restart(); err != nil {
		log.Fatal(err)
	}
	_, err = sub.Next(ctx)
	if errors.As(err, &gap) {
		fmt.Println("gap on the server:", gap.Server == srv.Addr(), "resumed:", gap.Resumed)
	}

	// Signals emitted from now on are delivered.
	if _, err := c.Emit(ctx, "orders.paid", "id=42"); err != nil {
		log.Fatal(err)
	}
	sig, err := sub.Next(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(sig.Channel, sig.Payload)
	// Output:
	// gap on the server: true resumed: false
	// gap on the server: true resumed: true
	// orders.paid id=42
}

// Pattern and Group return what the subscription was made with: useful
// where subscriptions are handed around, in logs and metrics say.
func ExampleSubscription_Pattern() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	subs := make([]*dflock.Subscription, 0, 2)
	for _, pattern := range []string{"orders.*", "invoices.>"} {
		sub, err := c.Listen(ctx, pattern)
		if err != nil {
			log.Fatal(err)
		}
		defer sub.Close()
		subs = append(subs, sub)
	}
	for _, sub := range subs {
		fmt.Println("listening on", sub.Pattern())
	}
	// Output:
	// listening on orders.*
	// listening on invoices.>
}

// Group is the queue group a subscription belongs to, or "" for a plain
// subscription, which gets every signal.
func ExampleSubscription_Group() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	worker, err := c.Listen(ctx, "jobs.>", dflock.Group("workers"))
	if err != nil {
		log.Fatal(err)
	}
	defer worker.Close()
	audit, err := c.Listen(ctx, "jobs.>")
	if err != nil {
		log.Fatal(err)
	}
	defer audit.Close()

	for _, sub := range []*dflock.Subscription{worker, audit} {
		if g := sub.Group(); g != "" {
			fmt.Printf("%s: one member of group %q\n", sub.Pattern(), g)
		} else {
			fmt.Printf("%s: every signal\n", sub.Pattern())
		}
	}
	// Output:
	// jobs.>: one member of group "workers"
	// jobs.>: every signal
}
