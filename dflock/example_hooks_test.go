package dflock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// Hooks of several WithHooks options add up: a metrics adapter's and the
// application's both run, in option order, on the Client's callback
// goroutine. Close waits for the calls still queued, so what they recorded
// is complete once it returns.
func ExampleHooks() {
	addr, stop := startServer()
	defer stop()

	var mu sync.Mutex
	var calls []string
	record := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, s)
	}
	metrics := dflock.Hooks{OnDial: func(d dflock.DialInfo) { record("metrics: " + d.Role) }}
	app := dflock.Hooks{OnDial: func(d dflock.DialInfo) { record("app: " + d.Role) }}

	// One lane connection, dialled by the first call.
	c, err := dflock.New([]string{addr}, dflock.WithLaneConns(1),
		dflock.WithHooks(metrics), dflock.WithHooks(app))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	l, err := c.TryLock(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	_ = l.Release(ctx)
	c.Close()

	mu.Lock()
	defer mu.Unlock()
	for _, s := range calls {
		fmt.Println(s)
	}
	// Output:
	// metrics: lane
	// app: lane
}

// OnDial reports every dial with the role of the connection: the control
// lane, the wait pool, a signal listener, or a Client.Stats query.
func ExampleHooks_onDial() {
	addr, stop := startServer()
	defer stop()

	var mu sync.Mutex
	roles := map[string]bool{}
	c, err := dflock.New([]string{addr}, dflock.WithHooks(dflock.Hooks{
		OnDial: func(d dflock.DialInfo) {
			if d.Err != nil {
				return // a failed dial (or one that Close cut short)
			}
			mu.Lock()
			defer mu.Unlock()
			roles[d.Role] = true
		},
	}))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	l, err := c.Lock(ctx, "orders:42") // the control lane
	if err != nil {
		log.Fatal(err)
	}
	t, err := c.Enqueue(ctx, "orders:42") // a wait-pool connection
	if err != nil {
		log.Fatal(err)
	}
	sub, err := c.Listen(ctx, "orders.>") // a listener connection
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.Stats(ctx); err != nil { // a query connection
		log.Fatal(err)
	}
	_ = sub.Close()
	_ = t.Cancel()
	_ = l.Release(ctx)
	c.Close() // waits for the hook calls still queued

	mu.Lock()
	defer mu.Unlock()
	for _, role := range slices.Sorted(maps.Keys(roles)) {
		fmt.Println("dialled:", role)
	}
	// Output:
	// dialled: lane
	// dialled: listener
	// dialled: query
	// dialled: wait
}

// OnConnBroken reports connections that break, and those that Close ends,
// whose error matches ErrClosed: a graceful Close can be told from a
// broken network.
func ExampleHooks_onConnBroken() {
	srv, stop := startServerWith(testutil.Config{})
	defer stop()

	// The hook reports the first end of each kind.
	ends := make(chan string, 2)
	var closed, broke sync.Once
	hooks := dflock.Hooks{
		OnConnBroken: func(server string, err error) {
			if errors.Is(err, dflock.ErrClosed) {
				closed.Do(func() { ends <- "ended by Close" })
				return
			}
			broke.Do(func() { ends <- fmt.Sprint("broke, on the server: ", server == srv.Addr()) })
		},
	}
	ctx := context.Background()
	connect := func(key string) *dflock.Client {
		c, err := dflock.New([]string{srv.Addr()}, dflock.WithHooks(hooks))
		if err != nil {
			log.Fatal(err)
		}
		if _, err := c.TryLock(ctx, key); err != nil {
			log.Fatal(err)
		}
		return c
	}

	c := connect("orders:1")
	c.Close()
	fmt.Println(<-ends)

	c = connect("orders:2")
	defer c.Close()
	srv.DropConnections()
	fmt.Println(<-ends)
	// Output:
	// ended by Close
	// broke, on the server: true
}

// OnRenewalBatch reports each batch of renewals once its answers are in:
// a place to measure the renewal round trip, or to count refusals.
func ExampleHooks_onRenewalBatch() {
	addr, stop := startServer()
	defer stop()

	batches := make(chan dflock.RenewalBatchInfo, 1)
	c, err := dflock.New([]string{addr}, dflock.WithHooks(dflock.Hooks{
		OnRenewalBatch: func(b dflock.RenewalBatchInfo) {
			select {
			case batches <- b:
			default:
			}
		},
	}))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	// A 1 s lease is renewed about every half second.
	l, err := c.Lock(ctx, "orders:42", dflock.LeaseTTL(time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)
	b := <-batches
	fmt.Println("server:", b.Server == addr)
	fmt.Printf("size %d, renewed %d, refused %d, err %v\n", b.Size, b.Renewed, b.Refused, b.Err)
	// Output:
	// server: true
	// size 1, renewed 1, refused 0, err <nil>
}

// OnSignalDropped reports a subscription whose consumer fell behind: its
// buffer is full and further signals are being dropped.
func ExampleHooks_onSignalDropped() {
	addr, stop := startServer()
	defer stop()

	dropping := make(chan dflock.SignalDropInfo, 1)
	c, err := dflock.New([]string{addr}, dflock.WithHooks(dflock.Hooks{
		OnSignalDropped: func(info dflock.SignalDropInfo) {
			select {
			case dropping <- info:
			default:
			}
		},
	}))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	sub, err := c.Listen(ctx, "jobs.>", dflock.Group("workers"), dflock.Buffer(1))
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	for i := range 3 {
		if _, err := c.Emit(ctx, "jobs.new", fmt.Sprint("job-", i)); err != nil {
			log.Fatal(err)
		}
	}
	info := <-dropping
	fmt.Printf("%s (group %s) is dropping signals: %v\n", info.Pattern, info.Group, info.Dropped > 0)
	// Output:
	// jobs.> (group workers) is dropping signals: true
}

// OnSignalGap reports every gap: a listener connection broke, so a
// subscription may have missed signals. The subscription reports it too
// (see GapError); the hook suits metrics and alerts.
func ExampleHooks_onSignalGap() {
	srv, stop := startServerWith(testutil.Config{})
	defer stop()

	gaps := make(chan dflock.SignalGapInfo, 1)
	c, err := dflock.New([]string{srv.Addr()}, dflock.WithHooks(dflock.Hooks{
		OnSignalGap: func(info dflock.SignalGapInfo) {
			select {
			case gaps <- info:
			default:
			}
		},
	}))
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
	srv.DropConnections()

	info := <-gaps
	fmt.Println("pattern:", info.Pattern, "group:", info.Group == "")
	fmt.Println("server:", info.Server == srv.Addr())
	fmt.Println("matches ErrSignalGap:", errors.Is(info.Err, dflock.ErrSignalGap))
	_, err = sub.Next(ctx)
	fmt.Println("Next reports it too:", errors.Is(err, dflock.ErrSignalGap))
	// Output:
	// pattern: orders.> group: true
	// server: true
	// matches ErrSignalGap: true
	// Next reports it too: true
}
