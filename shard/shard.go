// Package shard decides which dflockd server owns a key.
//
// dflockd servers do not talk to each other: a lock key lives on exactly one
// server, and every client that uses the key must pick the same one. A
// [Strategy] turns the client's server list into a [Placement], and the
// Placement maps each key to an index into that list.
//
// # Strategies
//
// [Ring], the default, is consistent hashing: each server owns many points
// (virtual nodes) on a 64-bit hash ring, and a key belongs to the server of the
// first point at or after the key's hash. Placement depends on the server
// addresses, not on their order in the list, and adding a server to n others
// moves only about 1/(n+1) of the keys, all of them to the new server; removing
// one moves only that server's keys. Lock state does not migrate between
// servers, so a key that moves is, for a moment, guarded by two servers that
// know nothing of each other: keeping movement small keeps that window rare.
//
// [CRC32] is the placement of the official Go, Python and TypeScript clients:
// CRC-32/IEEE of the key's UTF-8 bytes, modulo the number of servers, indexing
// the list in the order given. Use it when processes running this SDK and
// processes running an official client lock the same keys on the same fleet;
// both sides must then list the servers in the same order. Changing the list
// re-maps most keys.
//
// Every process that shares keys must use the same strategy and the same
// server addresses, spelled the same way ("localhost:6388" and
// "127.0.0.1:6388" are different servers to [Ring]). Both algorithms are
// specified exactly in their docs and pinned by golden tests, so different
// versions of this SDK agree.
//
// # Down servers
//
// A key is never re-routed because its server is unreachable. Operations on
// it fail fast (with an error matching dflock.ErrServerUnavailable) until the
// server is back. Sending the key to another server would let a second client
// acquire a lock the first still holds there: re-routing is fine for a cache
// and fatal for a lock.
//
// Compatibility: users implement and pass a [Strategy] (dflock.WithSharding), so
// the package's exported API follows the module's version, and the placement
// [Ring] and [CRC32] compute is part of that promise: processes running
// different releases must agree on where a key lives.
package shard

import (
	"fmt"
)

// Strategy builds a Placement for a list of server addresses. Strategies are
// immutable values, safe to share.
type Strategy interface {
	// Place returns the placement of keys over servers. It fails if servers
	// is empty or contains an empty or duplicate address.
	Place(servers []string) (Placement, error)
}

// Placement maps a key to the index of its server in the list given to
// Strategy.Place. It is safe for concurrent use and does not allocate.
//
// The mapping must not change for the Placement's life: a key placed on
// two servers is two locks, held at once by two callers. A Client may ask
// more than once for one call (to route it, and to name its server to a
// Tracer).
type Placement interface {
	// Server returns the index, in [0, len(servers)), of the server that
	// owns key: the same index for the same key, every time.
	Server(key string) int
}

// checkServers validates the server list shared by every strategy.
func checkServers(servers []string) error {
	if len(servers) == 0 {
		return fmt.Errorf("dflock: shard: servers is empty")
	}
	seen := make(map[string]int, len(servers))
	for i, s := range servers {
		if s == "" {
			return fmt.Errorf("dflock: shard: servers[%d] is empty", i)
		}
		if j, dup := seen[s]; dup {
			return fmt.Errorf("dflock: shard: servers[%d] %q duplicates servers[%d]", i, s, j)
		}
		seen[s] = i
	}
	return nil
}
