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

// The token is the server's name for one grant: opaque, different for
// every grant, and the one the hooks and the tracer report (LeaseInfo), so
// a log line written at acquire time can be matched with a later loss.
func ExampleLock_Token() {
	srv, stop := startServerWith(testutil.Config{})
	defer stop()

	lost := make(chan dflock.LeaseInfo, 1)
	c, err := dflock.New([]string{srv.Addr()}, dflock.WithHooks(dflock.Hooks{
		OnLeaseLost: func(info dflock.LeaseInfo, err error) {
			select {
			case lost <- info:
			default:
			}
		},
	}))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	first, err := c.Lock(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("has a token:", first.Token() != "")
	if err := first.Release(ctx); err != nil {
		log.Fatal(err)
	}

	l, err := c.Lock(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("a new grant, a new token:", l.Token() != first.Token())

	srv.DropConnections() // the lease is lost
	info := <-lost
	fmt.Println("the loss names this grant:", info.Key == l.Key() && info.Token == l.Token())
	// Output:
	// has a token: true
	// a new grant, a new token: true
	// the loss names this grant: true
}

// Every slot of a semaphore is a grant of its own, with its own token.
func ExampleSemaphore_Token() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	a, err := c.Semaphore(ctx, "encoder", 2)
	if err != nil {
		log.Fatal(err)
	}
	defer a.Release(ctx)
	b, err := c.Semaphore(ctx, "encoder", 2)
	if err != nil {
		log.Fatal(err)
	}
	defer b.Release(ctx)
	fmt.Println("two slots, two tokens:", a.Token() != "" && a.Token() != b.Token())
	// Output:
	// two slots, two tokens: true
}

// Servers returns the server list as given to New (DefaultServer when New
// was given none); New dials nothing, so it works with servers not up yet.
// With ServerFor it tells which server each key lives on.
func ExampleClient_Servers() {
	c, err := dflock.New([]string{"lock-1.internal:6388", "lock-2.internal:6388", "lock-3.internal:6388"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	for i, s := range c.Servers() {
		fmt.Println(i, s)
	}

	local, err := dflock.New(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer local.Close()
	fmt.Println("default:", local.Servers())
	// Output:
	// 0 lock-1.internal:6388
	// 1 lock-2.internal:6388
	// 2 lock-3.internal:6388
	// default: [127.0.0.1:6388]
}

// Renew renews a slot now and waits for the server's answer, as Lock.Renew
// does for a lock; a slot that was lost answers with ErrLockLost.
func ExampleSemaphore_Renew() {
	srv, stop := startServerWith(testutil.Config{})
	defer stop()

	c, err := dflock.New([]string{srv.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	s, err := c.Semaphore(ctx, "encoder", 2, dflock.LeaseTTL(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("renewed:", s.Renew(ctx) == nil)

	srv.DropConnections() // the server forgets the connection's slots
	<-s.Done()
	fmt.Println("lost:", errors.Is(s.Renew(ctx), dflock.ErrLockLost))
	// Output:
	// renewed: true
	// lost: true
}

// A queued SemaphoreTicket that is no longer wanted gives its place back
// with Cancel, as a Ticket does: the next free slot goes to the next
// waiter instead.
func ExampleSemaphoreTicket_Cancel() {
	srv, stop := startServerWith(testutil.Config{})
	defer stop()

	c, err := dflock.New([]string{srv.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	// Both slots taken.
	for range 2 {
		s, err := c.Semaphore(ctx, "encoder", 2)
		if err != nil {
			log.Fatal(err)
		}
		defer s.Release(ctx)
	}
	t, err := c.EnqueueSemaphore(ctx, "encoder", 2)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("queued:", semWaitersOf(srv, "encoder"))

	if err := t.Cancel(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("queued after Cancel:", semWaitersOf(srv, "encoder"))
	_, err = t.Wait(ctx)
	fmt.Println("Wait after Cancel:", errors.Is(err, dflock.ErrTicketDone))
	// Output:
	// queued: 1
	// queued after Cancel: 0
	// Wait after Cancel: true
}

// semWaitersOf is the number of waiters the server shows for the
// semaphore key (of limit 2 or more).
func semWaitersOf(srv *testutil.Server, key string) int {
	for _, s := range srv.Stats().Semaphores {
		if s.Key == key {
			return s.Waiters
		}
	}
	return 0
}
