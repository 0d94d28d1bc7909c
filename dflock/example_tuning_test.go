package dflock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// eventually polls cond until it holds or five seconds pass: the pool does
// its housekeeping (dialling lanes, closing idle connections) in the
// background.
func eventually(cond func() bool) {
	for deadline := time.Now().Add(5 * time.Second); !cond() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
}

// The wait pool holds a connection for every blocking acquire in progress,
// every queued ticket and every lease granted after waiting. At the cap, a
// further waiter waits for a connection until its context ends; locks that
// nobody contends go through the control lane and are not held back.
func ExampleWithMaxConnsPerServer() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr}, dflock.WithMaxConnsPerServer(1))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	holder, err := c.Lock(ctx, "report")
	if err != nil {
		log.Fatal(err)
	}
	defer holder.Release(ctx)
	// The queued ticket takes the only wait-pool connection.
	t, err := c.Enqueue(ctx, "report")
	if err != nil {
		log.Fatal(err)
	}
	defer t.Cancel()
	fmt.Println("wait-pool connections in use:", c.Snapshot().Servers[0].Conns.InUse)

	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = c.Lock(short, "report")
	fmt.Println("second waiter gave up:", errors.Is(err, context.DeadlineExceeded))

	other, err := c.TryLock(ctx, "invoices")
	fmt.Println("uncontended lock granted:", err == nil)
	if err == nil {
		_ = other.Release(ctx)
	}
	// Output:
	// wait-pool connections in use: 1
	// second waiter gave up: true
	// uncontended lock granted: true
}

// A burst of contended locks opens wait-pool connections; once the burst
// is over, those beyond WithMaxIdleConnsPerServer are closed within a
// keepalive interval. With 0 none is kept: each wait dials afresh.
func ExampleWithMaxIdleConnsPerServer() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr},
		dflock.WithMaxIdleConnsPerServer(0), dflock.WithKeepAlive(200*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	// A ticket's lease is held on a wait-pool connection of its own.
	t, err := c.Enqueue(ctx, "export")
	if err != nil {
		log.Fatal(err)
	}
	l, err := t.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("pinned by the lease:", c.Snapshot().Servers[0].Conns.Pinned)
	if err := l.Release(ctx); err != nil {
		log.Fatal(err)
	}

	idle := func() int { return c.Snapshot().Servers[0].Conns.Idle }
	eventually(func() bool { return idle() == 0 })
	fmt.Println("idle connections kept:", idle())
	// Output:
	// pinned by the lease: 1
	// idle connections kept: 0
}

// An idle wait-pool connection is closed once it has been idle for
// WithMaxConnIdleTime (within a keepalive interval after that), even when
// the idle cap would keep it.
func ExampleWithMaxConnIdleTime() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr},
		dflock.WithMaxConnIdleTime(100*time.Millisecond), dflock.WithKeepAlive(200*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	t, err := c.Enqueue(ctx, "export")
	if err != nil {
		log.Fatal(err)
	}
	l, err := t.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if err := l.Release(ctx); err != nil {
		log.Fatal(err)
	}

	idle := func() int { return c.Snapshot().Servers[0].Conns.Idle }
	eventually(func() bool { return idle() == 0 })
	fmt.Println("idle connections after the idle time:", idle())

	st, err := c.Stats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("closed for idleness:", st.Servers[0].Pool.IdleClosed)
	// Output:
	// idle connections after the idle time: 0
	// closed for idleness: 1
}

// The control lane carries every goroutine's try-acquires, renewals and
// releases, pipelined over a few connections per server; more lanes spread
// a heavy load over more sockets.
func ExampleWithLaneConns() {
	addr, stop := startServer()
	defer stop()

	_, err := dflock.New([]string{addr}, dflock.WithLaneConns(dflock.MaxLaneConns+1))
	fmt.Println("too many lanes refused:", errors.Is(err, dflock.ErrInvalidArgument))

	c, err := dflock.New([]string{addr}, dflock.WithLaneConns(4))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	// The lane connections are dialled at the first call that needs one.
	l, err := c.TryLock(ctx, "orders:42")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)
	lanes := func() int { return c.Snapshot().Servers[0].Conns.Lane }
	eventually(func() bool { return lanes() == 4 })
	fmt.Println("lane connections:", lanes())
	// Output:
	// too many lanes refused: true
	// lane connections: 4
}

// A server's `stats` reply grows with its keys. A reply over the cap fails
// that server's entry (the others are still reported), with an error that
// matches wire.ErrLineTooLong and names the option to raise.
func ExampleWithMaxStatsReply() {
	addr, stop := startServer()
	defer stop()
	ctx := context.Background()

	_, err := dflock.New([]string{addr}, dflock.WithMaxStatsReply(1<<10))
	fmt.Println("a 1 KiB cap refused:", errors.Is(err, dflock.ErrInvalidArgument))

	c, err := dflock.New([]string{addr}, dflock.WithMaxStatsReply(64<<10))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// 300 keys of 200 bytes, each used once: the server lists them as idle
	// keys, over 64 KiB in all.
	for i := range 300 {
		l, err := c.TryLock(ctx, fmt.Sprintf("%03d-%s", i, strings.Repeat("x", 196)))
		if err != nil {
			log.Fatal(err)
		}
		if err := l.Release(ctx); err != nil {
			log.Fatal(err)
		}
	}
	st, err := c.Stats(ctx)
	fmt.Println("over the cap:", errors.Is(err, wire.ErrLineTooLong), st.Servers[0].State == nil)
	fmt.Println("names the option:", strings.Contains(err.Error(), "WithMaxStatsReply"))

	big, err := dflock.New([]string{addr}, dflock.WithMaxStatsReply(1<<20))
	if err != nil {
		log.Fatal(err)
	}
	defer big.Close()
	st, err = big.Stats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("idle keys with a 1 MiB cap:", len(st.Servers[0].State.IdleLocks))
	// Output:
	// a 1 KiB cap refused: true
	// over the cap: true true
	// names the option: true
	// idle keys with a 1 MiB cap: 300
}

// A lease is renewed after WithRenewRatio of its life: here a quarter of a
// 4 s lease, about a second after the grant, instead of after two seconds.
func ExampleWithRenewRatio() {
	addr, stop := startServer()
	defer stop()

	_, err := dflock.New([]string{addr}, dflock.WithRenewRatio(1))
	fmt.Println("ratio 1 refused:", errors.Is(err, dflock.ErrInvalidArgument))

	renewed := make(chan dflock.RenewalBatchInfo, 1)
	c, err := dflock.New([]string{addr}, dflock.WithRenewRatio(0.25),
		dflock.WithHooks(dflock.Hooks{OnRenewalBatch: func(b dflock.RenewalBatchInfo) {
			select {
			case renewed <- b:
			default:
			}
		}}))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	l, err := c.Lock(ctx, "orders:42", dflock.LeaseTTL(4*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	b := <-renewed
	fmt.Printf("renewals sent: %d, confirmed: %d\n", b.Size, b.Renewed)
	fmt.Println("still held:", l.Err() == nil)
	_ = l.Release(ctx)
	// Output:
	// ratio 1 refused: true
	// renewals sent: 1, confirmed: 1
	// still held: true
}

// The server hands each signal of a queue group to one member connection,
// round-robin. By default every local member of a group gets a connection
// of its own (up to DefaultGroupConns), so it counts as a member in
// another process would; with WithGroupConns(1) the local members share
// one connection, and the server sees them as a single member.
func ExampleWithGroupConns() {
	srv, stop := startServerWith(testutil.Config{})
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for group, opts := range map[string][]dflock.Option{
		"shared": {dflock.WithGroupConns(1)},
		"own":    nil, // DefaultGroupConns
	} {
		c, err := dflock.New([]string{srv.Addr()}, opts...)
		if err != nil {
			log.Fatal(err)
		}
		defer c.Close()
		for range 3 {
			sub, err := c.Listen(ctx, "jobs.>", dflock.Group(group))
			if err != nil {
				log.Fatal(err)
			}
			defer sub.Close()
		}
	}
	// Sorted by pattern, then group.
	for _, ch := range srv.Stats().SignalChannels {
		fmt.Printf("group %q of 3 members: %d on the server\n", ch.Group, ch.Listeners)
	}
	// Output:
	// group "own" of 3 members: 3 on the server
	// group "shared" of 3 members: 1 on the server
}
