package dflock

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// TLS 1.2 and 1.3, with and without session resumption: every connection
// role (lane, wait pool, listener, long-Emit) still works after the
// handshake's check for stray records.
func TestTLSEveryVersionAndResumptionServesEveryConnectionRole(t *testing.T) {
	t.Parallel()
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	for _, tc := range []struct {
		name    string
		version uint16
		cache   bool
	}{{"1.2", tls.VersionTLS12, false}, {"1.2-resume", tls.VersionTLS12, true}, {"1.3", tls.VersionTLS13, false}, {"1.3-resume", tls.VersionTLS13, true}} {
		t.Run(tc.name, func(t *testing.T) {
			scfg := certs.ServerConfig()
			scfg.MaxVersion = tc.version
			srv := newServer(t, testutil.Config{TLS: scfg})
			ccfg := certs.ClientConfig()
			ccfg.MinVersion, ccfg.MaxVersion = tc.version, tc.version
			if tc.cache {
				ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
			}
			c := newClient(t, addrsOf(srv), WithTLS(ccfg))
			ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
			defer cancel()
			for round := range 3 {
				l, err := c.Lock(ctx, "a")
				require.NoError(t, err, "round %d", round)
				// contended: the second goes over the wait pool
				got := make(chan error, 1)
				go func() {
					l2, err := c.Lock(ctx, "a")
					if err == nil {
						err = l2.Release(ctx)
					}
					got <- err
				}()
				time.Sleep(50 * time.Millisecond)
				require.NoError(t, l.Release(ctx))
				require.NoError(t, <-got)
				sub, err := c.Listen(ctx, "x.y")
				require.NoError(t, err)
				_, err = c.Emit(ctx, "x.y", strings.Repeat("p", 1000))
				require.NoError(t, err)
				_, err = sub.Next(ctx)
				require.NoError(t, err)
				require.NoError(t, sub.Close())
			}
		})
	}
}

// chunkConn is a TCP connection whose reads return at most 16 bytes: as
// when a server's two TLS records arrive in separate segments and the
// first read sees only the first. Deadlines and SyscallConn pass through.
type chunkConn struct{ *net.TCPConn }

func (c chunkConn) Read(p []byte) (int, error) {
	if len(p) > 16 {
		p = p[:16]
	}
	return c.TCPConn.Read(p)
}

// A TLS server that answers the handshake's ping with a second, stray
// line (a grant answering nothing) in a record of its own, sent with the
// first: the first request must not take it for its reply (here a TryLock
// that the server answers "timeout" would get a lock never granted).
// crypto/tls hands bufio one record per Read, so the stray record sits in
// the tls.Conn, not in the wire.Conn's buffer — or, when it came in a
// segment of its own, still in the socket (the dialer here reads 16 bytes
// at a time, so the record is left there).
func TestHostileTLSStrayHandshakeRecordIsNotTakenForAReply(t *testing.T) {
	t.Parallel()
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	scfg := certs.ServerConfig()
	addr := testutil.ServeRaw(t, func(raw net.Conn) {
		nc := tls.Server(&flushOnRead{Conn: raw}, scfg)
		defer nc.Close()
		testutil.AnswerRequests(nc, func(nc net.Conn, req [3]string) bool {
			out := "ok\n"
			switch req[0] {
			case "ping":
				if _, err := nc.Write([]byte(out)); err != nil {
					return false
				}
				out = "ok bogustoken 30\n" // a record of its own
			case "l":
				out = "timeout\n"
			}
			_, err := nc.Write([]byte(out))
			return err == nil
		})
	})
	chunked := func(ctx context.Context, network, a string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, a)
		if err != nil {
			return nil, err
		}
		return chunkConn{nc.(*net.TCPConn)}, nil
	}
	for name, opts := range map[string][]Option{
		"in-tls-buffer": {WithTLS(certs.ClientConfig())},
		"in-socket":     {WithTLS(certs.ClientConfig()), WithDialer(chunked)},
	} {
		for round := range 5 {
			c := newClient(t, []string{addr}, opts...)
			ctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
			l, err := c.TryLock(ctx, "a")
			if err == nil {
				t.Errorf("%s, round %d: TryLock returned a lock with token %q, never granted", name, round, l.Token())
				_ = l.Release(ctx)
			}
			cancel()
			require.NoError(t, c.Close())
		}
	}
}

// flushOnRead holds a test server's writes and sends them when it next
// reads (or closes): the records answering one request leave in one
// segment, so that a test of what a client does with two records that came
// together does not depend on the scheduler keeping two writes together.
type flushOnRead struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
}

func (c *flushOnRead) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, p...)
	return len(p), nil
}

func (c *flushOnRead) Read(p []byte) (int, error) {
	if err := c.flush(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *flushOnRead) Close() error {
	_ = c.flush()
	return c.Conn.Close()
}

func (c *flushOnRead) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}
