// Package wire is the dflockd protocol codec: request encoding, reply and push
// parsing, argument validation, NATS-style pattern matching, and a framed
// connection that keeps replies in step with requests.
//
// The package knows nothing about pools, leases or sharding; it turns values
// into bytes and bytes into values. Request.Validate refuses anything the
// server would refuse (or would misread); Conn's writers do not call it, so
// validate every request before it reaches the network: a field with a line
// break in it would shift every later reply on the connection.
//
// The hot paths are allocation-free in steady state: encoding into a buffer
// with spare capacity, framing replies, and parsing every reply except for
// the strings a reply hands back (a grant's token, a stats document). The
// benchmarks in this package measure exactly that:
//
//	go test -run='^$' -bench=. -benchmem ./wire
//
// Protocol references (§n) point at docs/protocol.md, the wire specification the
// SDK is written against.
//
// Compatibility: the package is usable on its own (as pgproto3 is beside pgx)
// and follows the module's version: exported names change only with a major
// version. Package dflock is the supported API; wire is for tools that speak
// the protocol directly.
package wire
