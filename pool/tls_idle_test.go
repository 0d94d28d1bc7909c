//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"bufio"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// tlsHoldConn holds back the TLS server's writes while hold is set, so that
// several records leave in one TCP write and reach the client's socket
// together (as records written back to back usually do).
type tlsHoldConn struct {
	net.Conn
	mu      sync.Mutex
	hold    bool
	pending []byte
}

func (h *tlsHoldConn) Write(b []byte) (int, error) {
	h.mu.Lock()
	if h.hold {
		h.pending = append(h.pending, b...)
		h.mu.Unlock()
		return len(b), nil
	}
	h.mu.Unlock()
	return h.Conn.Write(b)
}

func (h *tlsHoldConn) setHold(on bool) error {
	h.mu.Lock()
	h.hold = on
	b := h.pending
	h.pending = nil
	h.mu.Unlock()
	if on || len(b) == 0 {
		return nil
	}
	_, err := h.Conn.Write(b)
	return err
}

// strayRecordTLSServer answers every request "ok" over TLS, except the
// first release, which it answers "ok" twice (two records, one TCP write),
// and every later release, which it answers "error".
func strayRecordTLSServer(t *testing.T, certs *testutil.TLSCerts) string {
	var releases atomic.Int32
	wrap := func(c net.Conn) net.Conn { return &tlsHoldConn{Conn: c} }
	addr, _ := tlsFakeServer(t, certs, wrap, func(c *tls.Conn, under net.Conn, br *bufio.Reader) {
		hc := under.(*tlsHoldConn)
		for {
			cmd, err := readRequest(br)
			if err != nil {
				return
			}
			switch {
			case cmd != wire.CmdRelease.String():
				_, err = c.Write([]byte("ok\n"))
			case releases.Add(1) == 1:
				_ = hc.setHold(true)
				_, _ = c.Write([]byte("ok\n"))
				_, _ = c.Write([]byte("ok\n")) // one reply too many, a record of its own
				err = hc.setHold(false)
			default:
				_, err = c.Write([]byte("error\n"))
			}
			if err != nil {
				return
			}
		}
	})
	return addr
}

// TestTLSStrayRecordWithTheLastReplyIsNotTheNextReply is
// TestTurnStrayLineIsNotTheNextReply over TLS, with the stray line in a
// record of its own that arrived with the reply. crypto/tls reads both
// records from the socket but hands bufio only the first: the stray one sits
// in the tls.Conn, where neither wc.Buffered nor the socket probe looks, and
// the next caller claiming the turn read it as its own reply
// (pullTLSRecordLocked now finds it).
func TestTLSStrayRecordWithTheLastReplyIsNotTheNextReply(t *testing.T) {
	t.Parallel()
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	addr := strayRecordTLSServer(t, certs)
	p := newPool(t, Config{Addr: addr, TLS: certs.ClientConfig(), LaneConns: 1})
	_, c := laneOf(t, p)
	settle(t, c)
	r, _, err := p.Do(ctxWait(t), wire.ReleaseRequest("k", "t1", false))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	require.True(t, freezeWatch(c), "the caller read its reply; the reader stands aside")

	r, _, err = p.Do(ctxWait(t), wire.ReleaseRequest("k", "t2", false))
	require.NoError(t, err, "the request goes to a new connection, unsent on the one with the stray line")
	assert.Equal(t, wire.StatusError, r.Status, "the reply to the second release is the server's answer to it, not the stray line")
}

// TestStaleIdleTLSConnIsStaleOnFirstUse: an idle wait-pool connection that
// the server closed after Acquire looked at it (a restart) fails its first
// request in a way StaleOnFirstUse recognises, so that a blocking Lock sends
// it again on a new connection. Over TCP the claim's probe finds EOF; over
// TLS it finds the close_notify record first and breaks the connection with
// errTLSRecord, which StaleOnFirstUse did not know: the Lock failed instead.
func TestStaleIdleTLSConnIsStaleOnFirstUse(t *testing.T) {
	t.Parallel()
	for _, useTLS := range []bool{false, true} {
		name := "tcp"
		if useTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var addr string
			var drop func()
			cfg := Config{LaneConns: 1}
			if useTLS {
				certs, err := testutil.NewTLSCerts()
				require.NoError(t, err)
				addr, drop = tlsServer(t, certs)
				cfg.TLS = certs.ClientConfig()
			} else {
				addr, drop = droppingPlainServer(t)
			}
			cfg.Addr = addr
			p := newPool(t, cfg)
			h, err := p.Acquire(ctxWait(t))
			require.NoError(t, err)
			c := h.c
			h.Release()
			h, err = p.Acquire(ctxWait(t)) // looks at the idle connection: fine
			require.NoError(t, err)
			require.Same(t, c, h.c)
			defer h.Release()
			settle(t, c)
			drop() // the server restarts
			waitReadable(t, c)
			ageLastRead(c) // the request comes more than probeAfter after Acquire's look
			_, err = h.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
			require.Error(t, err)
			assert.True(t, h.StaleOnFirstUse(err), "a close found by the first request is stale-on-first-use: %v", err)
		})
	}
}

// droppingPlainServer answers every request "ok" over TCP; drop closes the
// connections open so far.
func droppingPlainServer(t *testing.T) (addr string, drop func()) {
	t.Helper()
	var mu sync.Mutex
	var conns []net.Conn
	drop = func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
		conns = nil
	}
	addr = fakeServer(t, func(c net.Conn, br *bufio.Reader) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		for {
			if _, err := readRequest(br); err != nil {
				return
			}
			if _, err := c.Write([]byte("ok\n")); err != nil {
				return
			}
		}
	})
	return addr, drop
}
