package testutil

import (
	"bufio"
	"errors"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// ioWait bounds every read and write in the conformance suite, so that a
// missing reply fails the test instead of hanging it.
const ioWait = 5 * time.Second

// quiet is how long we listen for a reply that must NOT arrive.
const quiet = 300 * time.Millisecond

// tokenRE is the token shape of every version (§7): 32 lowercase hex.
var (
	tokenRE = regexp.MustCompile(`^[0-9a-f]{32}$`)
	grantRE = regexp.MustCompile(`^(ok|acquired) ([0-9a-f]{32}) ([0-9]+)$`)
)

// rawConn is a client speaking the protocol with literal bytes. It never
// imports the SDK's wire package: the two must check each other.
type rawConn struct {
	t       testing.TB
	c       net.Conn
	r       *bufio.Reader
	pending []byte
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioWait)
	require.NoError(t, err, "dial %s", addr)
	t.Cleanup(func() { _ = c.Close() })
	return wrapConn(t, c)
}

func wrapConn(t testing.TB, c net.Conn) *rawConn {
	return &rawConn{t: t, c: c, r: bufio.NewReaderSize(c, 128<<10)}
}

// dialSrv opens a raw connection to srv.
func dialSrv(t testing.TB, srv *Server) *rawConn {
	t.Helper()
	return dialRaw(t, srv.Addr())
}

// write sends s verbatim.
func (c *rawConn) write(s string) {
	c.t.Helper()
	require.NoError(c.t, c.c.SetWriteDeadline(time.Now().Add(ioWait)))
	_, err := io.WriteString(c.c, s)
	require.NoError(c.t, err, "write %q", s)
}

// send writes each line followed by "\n", in one write.
func (c *rawConn) send(lines ...string) {
	c.t.Helper()
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	c.write(b.String())
}

// readLineWithin returns the next line (without its '\n') or the read error.
// Partial data read before an error is kept for the next call.
func (c *rawConn) readLineWithin(d time.Duration) (string, error) {
	if err := c.c.SetReadDeadline(time.Now().Add(d)); err != nil {
		return "", err
	}
	for {
		frag, err := c.r.ReadSlice('\n')
		c.pending = append(c.pending, frag...)
		if err == nil {
			line := string(c.pending[:len(c.pending)-1])
			c.pending = c.pending[:0]
			return line, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return "", err
	}
}

// readLine returns the next line or fails the test.
func (c *rawConn) readLine() string {
	c.t.Helper()
	line, err := c.readLineWithin(ioWait)
	require.NoError(c.t, err, "reading a reply line (partial %q)", c.pending)
	return line
}

// req sends one 3-line request and returns the reply line.
func (c *rawConn) req(cmd, key, arg string) string {
	c.t.Helper()
	c.send(cmd, key, arg)
	return c.readLine()
}

// expect reads one line and requires it to equal want.
func (c *rawConn) expect(want string) {
	c.t.Helper()
	require.Equal(c.t, want, c.readLine())
}

// expectPrefix reads one line, requires the prefix and returns the line.
func (c *rawConn) expectPrefix(prefix string) string {
	c.t.Helper()
	line := c.readLine()
	require.True(c.t, strings.HasPrefix(line, prefix), "reply %q lacks prefix %q", line, prefix)
	return line
}

// expectNothing requires that no line arrives for `quiet`.
func (c *rawConn) expectNothing() {
	c.t.Helper()
	line, err := c.readLineWithin(quiet)
	require.Error(c.t, err, "unexpected line %q", line)
	var ne net.Error
	require.True(c.t, errors.As(err, &ne) && ne.Timeout(), "expected silence, got %v", err)
}

// expectEOF requires that the server closes the connection (EOF or reset)
// without sending another line, within d. It returns when the close was seen.
func (c *rawConn) expectEOF(d time.Duration) time.Time {
	c.t.Helper()
	line, err := c.readLineWithin(d)
	require.Error(c.t, err, "expected close, got line %q", line)
	require.True(c.t, isClosed(err), "expected EOF/reset, got %v (partial %q)", err, c.pending)
	require.Empty(c.t, c.pending, "bytes before close")
	return time.Now()
}

func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// expectGrant reads a grant line with the given status and lease, and returns the token.
func (c *rawConn) expectGrant(status string, lease int64) string {
	c.t.Helper()
	return parseGrant(c.t, c.readLine(), status, lease)
}

func parseGrant(t testing.TB, line, status string, lease int64) string {
	t.Helper()
	m := grantRE.FindStringSubmatch(line)
	require.NotNil(t, m, "not a grant line: %q", line)
	require.Equal(t, status, m[1], "status in %q", line)
	require.Equal(t, strconv.FormatInt(lease, 10), m[3], "lease in %q", line)
	return m[2]
}

// lock sends `l key arg` and requires an `ok` grant with the given lease.
func (c *rawConn) lock(key, arg string, lease int64) string {
	c.t.Helper()
	c.send("l", key, arg)
	return c.expectGrant("ok", lease)
}

// ping checks the connection is still open and in frame (V1_16/V2_1).
func (c *rawConn) ping() {
	c.t.Helper()
	require.Equal(c.t, "ok", c.req("ping", "_", ""), "connection should still be open and in frame")
}

// close closes the client side.
func (c *rawConn) close() { _ = c.c.Close() }

// newServer starts a server for t with cfg.
func newServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	srv := NewServer(t, cfg)
	require.NotNil(t, srv)
	return srv
}

func findLock(st Stats, key string) (LockInfo, bool) {
	for _, l := range st.Locks {
		if l.Key == key {
			return l, true
		}
	}
	return LockInfo{}, false
}

func findSem(st Stats, key string) (SemaphoreInfo, bool) {
	for _, s := range st.Semaphores {
		if s.Key == key {
			return s, true
		}
	}
	return SemaphoreInfo{}, false
}

// waitLockWaiters waits until the lock key has n waiters (per Server.Stats).
func waitLockWaiters(t testing.TB, srv *Server, key string, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		l, ok := findLock(srv.Stats(), key)
		return ok && l.Waiters == n
	}, ioWait, 2*time.Millisecond, "lock %q never had %d waiters (stats %+v)", key, n, srv.Stats().Locks)
}

// waitSemWaiters waits until the semaphore key has n waiters.
func waitSemWaiters(t testing.TB, srv *Server, key string, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		s, ok := findSem(srv.Stats(), key)
		return ok && s.Waiters == n
	}, ioWait, 2*time.Millisecond, "semaphore %q never had %d waiters", key, n)
}

// waitConns waits until the server counts n open connections.
func waitConns(t testing.TB, srv *Server, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return srv.Stats().Connections == n },
		ioWait, 2*time.Millisecond, "server never reached %d connections", n)
}
