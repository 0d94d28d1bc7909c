package testutil_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"testing"
	"time"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// NewServer is for tests: it starts a server and closes it when the test
// ends. (Outside a test, use Start.)
func ExampleNewServer() {
	_ = func(t *testing.T) { // func TestCheckout(t *testing.T)
		srv := testutil.NewServer(t, testutil.Config{})
		c, err := dflock.New([]string{srv.Addr()})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()

		l, err := c.Lock(t.Context(), "cart:7")
		if err != nil {
			t.Fatal(err)
		}
		if got := srv.Stats().Locks; len(got) != 1 || got[0].Key != "cart:7" {
			t.Errorf("server holds %v, want cart:7", got)
		}
		if err := l.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
}

// Start runs a server without a *testing.T (examples, benchmarks, a
// main program); Close stops it. Stats is the server's own view.
func ExampleStart() {
	srv, err := testutil.Start(testutil.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	c, err := dflock.New([]string{srv.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	l, err := c.Lock(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	for _, lk := range srv.Stats().Locks {
		fmt.Printf("server: %s held, %d waiting\n", lk.Key, lk.Waiters)
	}
	if err := l.Release(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("locks after release:", len(srv.Stats().Locks))
	// Output:
	// server: orders:42 held, 0 waiting
	// locks after release: 0
}

// Config sets the server's flags: here dflockd's --max-waiters, which
// refuses a waiter beyond the limit.
func ExampleConfig() {
	srv, err := testutil.Start(testutil.Config{MaxWaiters: 1})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	c, err := dflock.New([]string{srv.Addr()})
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
	first, err := c.Enqueue(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	defer first.Cancel()
	_, err = c.Enqueue(ctx, "orders:42")
	fmt.Println("second waiter refused:", errors.Is(err, dflock.ErrMaxWaiters))
	// Output:
	// second waiter refused: true
}

// Version picks the dflockd release to imitate: v1.10 has no signals, and
// the Client reports Listen as not supported.
func ExampleVersion() {
	srv, err := testutil.Start(testutil.Config{Version: testutil.V1_10})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	c, err := dflock.New([]string{srv.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err = c.Listen(ctx, "orders.>")
	fmt.Println("signals not supported:", errors.Is(err, dflock.ErrNotSupported))
	// Output:
	// signals not supported: true
}

// Stall pauses the server as SIGSTOP would: requests go unanswered until
// resume is called, then everything held is answered in order. A call
// bounded by its context gives up meanwhile.
func ExampleServer_Stall() {
	srv, err := testutil.Start(testutil.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	c, err := dflock.New([]string{srv.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	// Connect first: a stalled server does not complete handshakes either.
	warm, err := c.TryLock(ctx, "warm-up")
	if err != nil {
		log.Fatal(err)
	}
	_ = warm.Release(ctx)

	resume := srv.Stall(0)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = c.TryLock(short, "orders:42")
	cancel()
	fmt.Println("unanswered while stalled:", errors.Is(err, context.DeadlineExceeded))
	resume()

	// The server now grants the try it had not answered; the Client, which
	// gave up on it, releases that grant, and the key is free again.
	l, err := c.Lock(ctx, "orders:42", dflock.AcquireTimeout(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("granted after resume:", l.Key())
	_ = l.Release(ctx)
	// Output:
	// unanswered while stalled: true
	// granted after resume: orders:42
}

// A Proxy between client and server injects network faults. ResetAll
// aborts every connection it carries, as a crashed middlebox would: the
// lease held on one is lost, and new connections work.
func ExampleProxy_ResetAll() {
	srv, err := testutil.Start(testutil.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	p, err := testutil.NewProxy(srv.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	// One control-lane connection, dialled by the first call before it
	// returns: the reset then cuts no dial half-way through its handshake,
	// which would mark the server down for a while (calls failing fast
	// with ErrServerUnavailable until the Client's probe reaches it).
	c, err := dflock.New([]string{p.Addr()}, dflock.WithLaneConns(1))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	l, err := c.Lock(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	p.ResetAll()
	<-l.Done()
	fmt.Println("lease lost:", errors.Is(l.Err(), dflock.ErrLockLost))

	// The server released it when its side of the connection was reset.
	again, err := c.Lock(ctx, "orders:42", dflock.AcquireTimeout(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("locked again through the proxy:", again.Key())
	_ = again.Release(ctx)
	// Output:
	// lease lost: true
	// locked again through the proxy: orders:42
}

// Blackhole partitions the network silently: nothing is delivered, and
// nothing fails until someone's timeout runs out. A short partition costs
// the calls made during it, not the leases held across it.
func ExampleProxy_Blackhole() {
	srv, err := testutil.Start(testutil.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	p, err := testutil.NewProxy(srv.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	c, err := dflock.New([]string{p.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	l, err := c.Lock(ctx, "orders:42", dflock.LeaseTTL(30*time.Second))
	if err != nil {
		log.Fatal(err)
	}

	p.Blackhole(true)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = c.TryLock(short, "invoices:7")
	cancel()
	fmt.Println("call during the partition timed out:", errors.Is(err, context.DeadlineExceeded))
	p.Blackhole(false)

	fmt.Println("lease held across it:", l.Err() == nil)
	if err := l.Release(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("released cleanly")
	// Output:
	// call during the partition timed out: true
	// lease held across it: true
	// released cleanly
}

// Stop imitates a crash and Restart brings the server back on the same
// address, with none of its state: the lease held on it is lost (the
// Client sees its connection break) and the key is free on the restarted
// server.
func ExampleServer_Restart() {
	srv, err := testutil.Start(testutil.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	c, err := dflock.New([]string{srv.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	l, err := c.Lock(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("locks before the crash:", len(srv.Stats().Locks))

	if err := srv.Stop(); err != nil {
		log.Fatal(err)
	}
	<-l.Done()
	fmt.Println("lease lost:", errors.Is(l.Err(), dflock.ErrLockLost))

	if err := srv.Restart(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("locks after the restart:", len(srv.Stats().Locks))

	// A Client that dials the restarted server gets the key at once.
	c2, err := dflock.New([]string{srv.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c2.Close()
	again, err := c2.TryLock(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("locked again:", again.Key())
	_ = again.Release(ctx)
	// Output:
	// locks before the crash: 1
	// lease lost: true
	// locks after the restart: 0
	// locked again: orders:42
}

// A ManualClock makes the server's time pass only when the test says so: a
// lease runs out at once, without waiting for it. (The Client renews on its
// own, real, clock, which has not come to renew yet.)
func ExampleManualClock() {
	clk := testutil.NewManualClock(time.Unix(1_700_000_000, 0))
	srv, err := testutil.Start(testutil.Config{Clock: clk})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	c, err := dflock.New([]string{srv.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	if _, err := c.Lock(ctx, "orders:42", dflock.LeaseTTL(5*time.Second)); err != nil {
		log.Fatal(err)
	}
	for _, lk := range srv.Stats().Locks {
		fmt.Printf("server: %s expires in %v\n", lk.Key, lk.LeaseExpiresIn)
	}

	clk.Advance(6 * time.Second)
	// The sweeper runs on the server's goroutine once Advance has fired
	// its timer: await the effect.
	deadline := time.Now().Add(5 * time.Second)
	for len(srv.Stats().Locks) > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	fmt.Println("locks 6s later on the server's clock:", len(srv.Stats().Locks))
	// Output:
	// server: orders:42 expires in 5s
	// locks 6s later on the server's clock: 0
}
