package dflock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// A queued ticket that is no longer wanted gives its place back with
// Cancel, so that the holder's release goes to the next waiter instead of
// to a place nobody will wait on.
func ExampleTicket_Cancel() {
	srv, stop := startServerWith(testutil.Config{})
	defer stop()

	c, err := dflock.New([]string{srv.Addr()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	holder, err := c.Lock(ctx, "report")
	if err != nil {
		log.Fatal(err)
	}
	t, err := c.Enqueue(ctx, "report")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("queued:", waitersOf(srv, "report"))

	// The work the place was taken for was called off.
	if err := t.Cancel(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("queued after Cancel:", waitersOf(srv, "report"))
	_, err = t.Wait(ctx)
	fmt.Println("Wait after Cancel:", errors.Is(err, dflock.ErrTicketDone))
	_ = holder.Release(ctx)
	// Output:
	// queued: 1
	// queued after Cancel: 0
	// Wait after Cancel: true
}

// waitersOf is the number of waiters the server shows for the lock key.
func waitersOf(srv *testutil.Server, key string) int {
	for _, l := range srv.Stats().Locks {
		if l.Key == key {
			return l.Waiters
		}
	}
	return 0
}

// Servers run with a shorter --read-timeout than dflockd's 23 s default
// close a connection that sends nothing for that long, and with it the
// leases it holds. Declare it: the Client then keeps every connection and
// lease busier than that (a keepalive of at most half of it), and counts
// a lease lost within it when the network goes silent. A keepalive longer
// than half the read timeout is refused by New.
func ExampleWithServerReadTimeout() {
	const readTimeout = 2 * time.Second
	srv, stop := startServerWith(testutil.Config{ReadTimeout: readTimeout})
	defer stop()

	_, err := dflock.New([]string{srv.Addr()},
		dflock.WithServerReadTimeout(readTimeout), dflock.WithKeepAlive(2*time.Second))
	fmt.Println("keepalive above half the read timeout refused:", errors.Is(err, dflock.ErrInvalidArgument))

	c, err := dflock.New([]string{srv.Addr()},
		dflock.WithServerReadTimeout(readTimeout), dflock.WithKeepAlive(readTimeout/4))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	// A lease longer than the read timeout stays held: it is renewed well
	// within the read timeout, and the renewals keep its connection open.
	l, err := c.Lock(ctx, "nightly", dflock.LeaseTTL(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	time.Sleep(2 * readTimeout)
	fmt.Println("held after two read timeouts:", l.Err() == nil)
	_ = l.Release(ctx)
	// Output:
	// keepalive above half the read timeout refused: true
	// held after two read timeouts: true
}

// WithDialer opens the TCP connections (TLS and auth still apply on top):
// here to count them. The dialer must return once ctx ends.
func ExampleWithDialer() {
	addr, stop := startServer()
	defer stop()

	var dials atomic.Int64
	var d net.Dialer
	c, err := dflock.New([]string{addr}, dflock.WithDialer(func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return d.DialContext(ctx, network, addr)
	}))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	l, err := c.Lock(context.Background(), "k")
	if err != nil {
		log.Fatal(err)
	}
	_ = l.Release(context.Background())
	fmt.Println("dialled through the custom dialer:", dials.Load() > 0)
	// Output:
	// dialled through the custom dialer: true
}
