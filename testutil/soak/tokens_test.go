package soak

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// tokenTap records every grant token a Client reads from its servers. It
// wraps the connections the Client dials (WithDialer) and scans what the
// Client reads for grant replies, `ok|acquired <token> <lease> [<fence>]`.
//
// It exists for WithLock, which does not show its token: a WithLock belief
// is matched with the grant of its key that began during the call and whose
// token this Client read. Matching by time alone (the grant in force when
// the function began) pins a WithLock whose own lease a fault had already
// killed on the next holder's grant, and reports two holders where there
// was one holder and one stale belief.
//
// It also records the dials a server's address refused (ECONNREFUSED),
// which is what a "refuse new conns" fault does (refusedDials).
type tokenTap struct {
	mu      sync.Mutex
	seen    map[string]struct{}
	refused map[string][]time.Time // by address
}

func newTokenTap() *tokenTap {
	return &tokenTap{seen: make(map[string]struct{}), refused: make(map[string][]time.Time)}
}

// refusedDials counts the dials to addr refused within [from, to].
func (t *tokenTap) refusedDials(addr string, from, to time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, at := range t.refused[addr] {
		if !at.Before(from) && !at.After(to) {
			n++
		}
	}
	return n
}

// has reports whether the Client read token in a grant reply.
func (t *tokenTap) has(token string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.seen[token]
	return ok
}

// dial is the Client's dialer.
func (t *tokenTap) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			now := time.Now()
			t.mu.Lock()
			t.refused[addr] = append(t.refused[addr], now)
			t.mu.Unlock()
		}
		return nil, err
	}
	return &tapConn{Conn: c, tap: t}, nil
}

// tapConn scans the bytes read for grant replies. Read runs on the
// Client's reader goroutines, so it only appends and takes a short lock.
type tapConn struct {
	net.Conn
	tap     *tokenTap
	partial []byte // the start of a line not yet ended
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	b := p[:n]
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(c.partial) < 512 { // grant lines are short; a signal may be long
				c.partial = append(c.partial, b...)
			}
			break
		}
		line := b[:i]
		if len(c.partial) > 0 {
			c.partial = append(c.partial, line...)
			line = c.partial
		}
		c.scan(line)
		c.partial = c.partial[:0]
		b = b[i+1:]
	}
	return n, err
}

func (c *tapConn) scan(line []byte) {
	f := bytes.Fields(line)
	if len(f) < 3 || len(f) > 4 {
		return
	}
	if s := string(f[0]); s != "ok" && s != "acquired" {
		return
	}
	c.tap.mu.Lock()
	c.tap.seen[string(f[1])] = struct{}{}
	c.tap.mu.Unlock()
}
