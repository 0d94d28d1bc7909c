// Sharded: one Client over three servers. Each key lives on exactly one
// server (consistent hashing by default); a down server's keys fail fast and
// are never re-routed, while keys on the other servers keep working.
//
//	go run ./examples/sharded                             # three embedded servers
//	DFLOCK_SERVERS=h1:6388,h2:6388,h3:6388 go run ./examples/sharded
package main

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log"
	"os"
	"time"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/examples/internal/demo"
	"github.com/dflock-sdk/go/shard"
)

func main() {
	if err := run(); err != nil {
		log.Printf("sharded: %v", err)
		os.Exit(1)
	}
}

var keys = []string{"orders:1", "orders:2", "orders:3", "users:17", "users:42", "invoices:9"}

func run() error {
	servers, stop, err := demo.Servers(3)
	if err != nil {
		return err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := placement(ctx, servers); err != nil {
		return err
	}
	if err := crcPlacement(servers); err != nil {
		return err
	}
	return downServer(ctx, servers)
}

// placement locks every key through one Client and shows where each went and
// what that costs in connections.
func placement(ctx context.Context, servers []string) error {
	c, err := dflock.New(servers) // shard.Ring is the default
	if err != nil {
		return err
	}
	defer c.Close()

	fmt.Printf("\n1. One Client, %d servers: each key is locked on the server that owns it.\n", len(servers))
	var held []*dflock.Lock
	defer func() {
		for _, l := range held {
			_ = l.Release(context.Background())
		}
	}()
	perServer := map[string]int{}
	for _, k := range keys {
		l, err := c.TryLock(ctx, k)
		if err != nil {
			return fmt.Errorf("trylock %q: %w", k, err)
		}
		held = append(held, l)
		perServer[l.Server()]++
		fmt.Printf("   %-11s → %s\n", k, l.Server())
	}

	// The pool counts are the Client's own, taken before Stats asks the
	// servers: Stats uses a short-lived connection per server of its own,
	// which the servers' counts below include.
	st, err := c.Stats(ctx)
	if err != nil {
		return err
	}
	total := 0
	for _, s := range st.Servers {
		p := s.Pool
		conns := p.LaneConns + p.IdleConns + p.AcquiredConns + p.ListenerConns
		total += conns
		fmt.Printf("   %s: %d of our %d locks; our connections to it: %d (%d control lane, %d wait pool)\n",
			s.Addr, perServer[s.Addr], len(held), conns, p.LaneConns, p.IdleConns+p.AcquiredConns)
		if s.Err != nil {
			fmt.Printf("      the server's own view: unavailable (%v)\n", s.Err)
			continue
		}
		fmt.Printf("      the server's own view: %d lock(s) held, %d connection(s) open "+
			"(ours, the one this Stats call used, and any other client's)\n",
			heldOn(s.State), s.State.Connections)
	}
	fmt.Printf("   in all: %d locks over %d connections. Uncontended locks ride the control lane,\n"+
		"   so the connection count does not grow with the number of locks; one scheduler renews them all.\n",
		len(held), total)
	return nil
}

func heldOn(s *dflock.ServerState) int {
	n := 0
	for _, l := range s.Locks {
		if l.OwnerConnID != 0 { // 0: waiters but no holder
			n++
		}
	}
	return n
}

// crcPlacement shows the placement of the official dflockd clients, for a
// fleet where both kinds of client lock the same keys.
func crcPlacement(servers []string) error {
	c, err := dflock.New(servers, dflock.WithSharding(shard.CRC32))
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Println("\n2. shard.CRC32 places keys as the official Go/Python/TypeScript clients do:")
	fmt.Printf("   server index = crc32(key) mod %d, in the order the servers are listed.\n", len(servers))
	for _, k := range keys[:3] {
		sum := crc32.ChecksumIEEE([]byte(k))
		fmt.Printf("   %-11s crc32 %08x mod %d = %d → %s\n", k, sum, len(servers), sum%uint32(len(servers)), c.ServerFor(k))
	}
	return nil
}

// downServer adds an address where nothing listens to the list (a list of
// four is another placement: the ring hands the new address about a quarter
// of the keys). The keys it owns fail fast; the others are unaffected.
func downServer(ctx context.Context, servers []string) error {
	const dead = "127.0.0.1:1"
	c, err := dflock.New(append(servers[:len(servers):len(servers)], dead), dflock.WithDialTimeout(time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Printf("\n3. Another Client, on the same servers plus %s, where nothing listens:\n", dead)
	for _, k := range keys {
		owner := c.ServerFor(k)
		l, err := c.TryLock(ctx, k)
		switch {
		case errors.Is(err, dflock.ErrServerUnavailable):
			fmt.Printf("   %-11s → %s: fails fast (ErrServerUnavailable), never re-routed\n", k, owner)
		case err != nil:
			return fmt.Errorf("trylock %q: %w", k, err)
		default:
			fmt.Printf("   %-11s → %s: locked as usual\n", k, owner)
			if err := l.Release(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}
