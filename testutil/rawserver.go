package testutil

import (
	"bufio"
	"net"
	"strings"
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

// ServeRequests is ServeRaw for a server scripted per request: it reads
// every request (its three lines, line ends trimmed) and hands it to
// answer, which writes what it likes on nc and returns false to drop the
// connection.
func ServeRequests(t testing.TB, answer func(nc net.Conn, req [3]string) bool) string {
	t.Helper()
	return ServeRaw(t, func(nc net.Conn) { AnswerRequests(nc, answer) })
}

// AnswerRequests is ServeRequests' loop on one connection, for a ServeRaw
// server that wraps its connections first (in TLS, say).
func AnswerRequests(nc net.Conn, answer func(nc net.Conn, req [3]string) bool) {
	br := bufio.NewReader(nc)
	for {
		var req [3]string
		for i := range req {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			req[i] = strings.TrimRight(line, "\r\n")
		}
		if !answer(nc, req) {
			return
		}
	}
}
