package dflock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync"

	"github.com/dflock-sdk/go/dflock"
)

// A metrics scraper reads Snapshot as often as it likes: it only reads the
// Client's own counters.
func ExampleClient_Snapshot() {
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
	s := c.Snapshot()
	srv := s.Servers[0]
	fmt.Println("up:", srv.Up)
	fmt.Println("held:", srv.LeasesHeld, "waiting:", srv.WaitsInFlight)
	// An uncontended lock is held on the shared control lane: no
	// connection of its own.
	fmt.Println("on the lane:", srv.Conns.Lane > 0, "pinned:", srv.Conns.Pinned)

	if err := l.Release(ctx); err != nil {
		log.Fatal(err)
	}
	s = c.Snapshot()
	fmt.Println("acquired:", s.Acquired, "released:", s.Released, "held:", s.Held)
	// Output:
	// up: true
	// held: 1 waiting: 0
	// on the lane: true pinned: 0
	// acquired: 1 released: 1 held: 0
}

// logTracer prints each acquire and release as it ends. A real Tracer
// starts a span in AcquireStart and returns the context carrying it.
type logTracer struct {
	mu sync.Mutex
}

func (t *logTracer) AcquireStart(ctx context.Context, info dflock.AcquireInfo) context.Context {
	return ctx
}

func (t *logTracer) AcquireEnd(ctx context.Context, info dflock.AcquireInfo, res dflock.AcquireResult) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Printf("%s %s: %s via %s\n", info.Op, info.Key, res.Outcome, res.Path)
}

func (t *logTracer) ReleaseStart(ctx context.Context, info dflock.LeaseInfo) context.Context {
	return ctx
}

func (t *logTracer) ReleaseEnd(ctx context.Context, info dflock.LeaseInfo, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Printf("release %s: err=%v\n", info.Key, err)
}

func ExampleWithTracer() {
	addr, stop := startServer()
	defer stop()

	c, err := dflock.New([]string{addr}, dflock.WithTracer(&logTracer{}))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	err = c.WithLock(ctx, "report", func(ctx context.Context) error {
		// The lock is held: a TryLock of the same key is refused.
		_, err := c.TryLock(ctx, "report")
		return err
	})
	fmt.Println("WithLock refused:", errors.Is(err, dflock.ErrNotAcquired))
	// Output:
	// lock report: granted via lane
	// trylock report: refused via none
	// release report: err=<nil>
	// withlock report: granted via lane
	// WithLock refused: true
}
