package testutil

import (
	"net"
	"sync"
	"testing"
)

// ServeRaw listens on a fresh loopback port and runs serve on every
// connection, each on a goroutine of its own, closing the connection when
// serve returns: for tests that script a server byte by byte (a hostile,
// broken or precisely timed one) where Server's faithful dflockd will not
// do. It returns the address. At t's cleanup it closes the listener and
// every connection still open, and waits for every serve to return.
func ServeRaw(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testutil: ServeRaw: %v", err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = make(map[net.Conn]struct{})
		done  bool
	)
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		done = true
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if done {
				mu.Unlock()
				_ = c.Close()
				return
			}
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					_ = c.Close()
				}()
				serve(c)
			})
		}
	})
	return ln.Addr().String()
}
