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

func run() error {
	servers, stop, err := demo.Servers(3)
	if err != nil {
		return err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, err := dflock.New(servers) // shard.Ring is the default
	if err != nil {
		return err
	}
	defer c.Close()

	keys := []string{"orders:1", "orders:2", "orders:3", "users:17", "users:42", "invoices:9"}
	var held []*dflock.Lock
	perServer := map[string]int{}
	for _, k := range keys {
		l, err := c.TryLock(ctx, k)
		if err != nil {
			return fmt.Errorf("trylock %q: %w", k, err)
		}
		held = append(held, l)
		perServer[l.Server()]++
		fmt.Printf("%-11s → %s\n", k, l.Server())
	}
	for _, s := range servers {
		fmt.Printf("server %s holds %d of our locks\n", s, perServer[s])
	}

	st, err := c.Stats(ctx)
	if err != nil {
		return err
	}
	for _, s := range st.Servers {
		if s.Err != nil {
			fmt.Printf("stats %s: %v\n", s.Addr, s.Err)
			continue
		}
		fmt.Printf("stats %s: %d connection(s), %d lock(s) held\n", s.Addr, s.State.Connections, len(s.State.Locks))
	}
	fmt.Printf("client: %d connection(s) in all for %d held locks, renewed by one scheduler\n", totalConns(st), len(held))
	for _, l := range held {
		if err := l.Release(ctx); err != nil {
			return err
		}
	}

	// Placement with the official clients' CRC-32, for fleets that share keys
	// with them (same server order everywhere).
	crc, err := dflock.New(servers, dflock.WithSharding(shard.CRC32))
	if err != nil {
		return err
	}
	defer crc.Close()
	fmt.Printf("CRC-32 placement of %q: %s (as the official Go/Python/TS clients pick)\n", "orders:1", crc.ServerFor("orders:1"))

	// A key whose server is unreachable fails fast, never re-routed.
	dead, err := dflock.New([]string{"127.0.0.1:1"}, dflock.WithDialTimeout(time.Second))
	if err != nil {
		return err
	}
	defer dead.Close()
	_, err = dead.TryLock(ctx, "orders:1")
	fmt.Printf("unreachable server: ErrServerUnavailable = %v\n", errors.Is(err, dflock.ErrServerUnavailable))
	return nil
}

func totalConns(st dflock.Stats) int {
	n := 0
	for _, s := range st.Servers {
		n += s.Pool.LaneConns + s.Pool.IdleConns + s.Pool.AcquiredConns
	}
	return n
}
