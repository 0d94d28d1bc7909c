package shard_test

import (
	"fmt"

	"github.com/dflock-sdk/go/shard"
)

func ExampleRing() {
	servers := []string{"10.0.0.1:6388", "10.0.0.2:6388", "10.0.0.3:6388"}
	p, err := shard.Ring.Place(servers)
	if err != nil {
		panic(err)
	}
	fmt.Println(servers[p.Server("my-key")])

	// The owner depends on the addresses, not on their order in the list.
	reordered := []string{"10.0.0.3:6388", "10.0.0.1:6388", "10.0.0.2:6388"}
	q, err := shard.Ring.Place(reordered)
	if err != nil {
		panic(err)
	}
	fmt.Println(reordered[q.Server("my-key")])
	// Output:
	// 10.0.0.2:6388
	// 10.0.0.2:6388
}

func ExampleCRC32() {
	// The same list, in the same order, as the official clients are given.
	servers := []string{"10.0.0.1:6388", "10.0.0.2:6388", "10.0.0.3:6388"}
	p, err := shard.CRC32.Place(servers)
	if err != nil {
		panic(err)
	}
	fmt.Println(p.Server("my-key"), servers[p.Server("my-key")])
	// Output: 2 10.0.0.3:6388
}

func ExampleRingWithVirtualNodes() {
	_, err := shard.RingWithVirtualNodes(0).Place([]string{"10.0.0.1:6388"})
	fmt.Println(err)
	_, err = shard.Ring.Place([]string{"10.0.0.1:6388", "10.0.0.1:6388"})
	fmt.Println(err)
	// Output:
	// dflock: shard: virtual nodes must be between 1 and 65536, got 0
	// dflock: shard: servers[1] "10.0.0.1:6388" duplicates servers[0]
}
