// Package soak holds the chaos soak of the dflock client (make soak): three
// testutil servers behind fault-injecting proxies, three Clients sharing
// them, hundreds of goroutines doing every kind of operation while a fault
// scheduler drops, restarts, stalls, blackholes, delays and resets the
// servers, and a checker that compares what the goroutines believed with
// the servers' own audit log. See docs/reliability.md.
//
// The soak is a test (soak_test.go) that runs only when given a duration:
//
//	go test ./testutil/soak -run '^TestSoak$' -v -soak=60s
//
// Without -soak only the checker's own tests run.
package soak
