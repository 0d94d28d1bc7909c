package shard

import (
	"hash/crc32"
	"unsafe"
)

// CRC32 is the placement of the official dflockd clients (Go
// client.CRC32Shard, Python stable_hash_shard, TypeScript stableHashShard):
// server index = CRC-32/IEEE(UTF-8 bytes of key) mod len(servers), indexing
// the list in the order given.
//
// Use it only to share keys with processes running those clients, with the
// servers listed in the same order everywhere. Adding or removing a server
// re-maps most keys; prefer [Ring] otherwise. Do not assign to CRC32.
var CRC32 Strategy = crc32Strategy{}

type crc32Strategy struct{}

func (crc32Strategy) Place(servers []string) (Placement, error) {
	if err := checkServers(servers); err != nil {
		return nil, err
	}
	return crc32Placement{n: uint32(len(servers))}, nil
}

type crc32Placement struct{ n uint32 }

func (p crc32Placement) Server(key string) int {
	// A []byte(key) conversion would allocate for keys over 32 bytes. The
	// checksum only reads the bytes, so viewing the string's memory is safe.
	b := unsafe.Slice(unsafe.StringData(key), len(key))
	return int(crc32.ChecksumIEEE(b) % p.n)
}
