package testutil

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// unitWait bounds every blocking read of these tests so a missing reply
// fails instead of hanging.
const unitWait = 5 * time.Second

// uconn is a raw protocol client for the unit tests.
type uconn struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

func udial(t testing.TB, s *Server) *uconn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", s.Addr(), unitWait)
	require.NoError(t, err)
	t.Cleanup(func() { _ = nc.Close() })
	return &uconn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

// send writes one request without reading the reply.
func (c *uconn) send(cmd, key, arg string) {
	c.t.Helper()
	c.raw(cmd + "\n" + key + "\n" + arg + "\n")
}

func (c *uconn) raw(b string) {
	c.t.Helper()
	require.NoError(c.t, c.nc.SetWriteDeadline(time.Now().Add(unitWait)))
	_, err := io.WriteString(c.nc, b)
	require.NoError(c.t, err)
}

// readWithin reads one reply line, without its '\n'.
func (c *uconn) readWithin(d time.Duration) (string, error) {
	require.NoError(c.t, c.nc.SetReadDeadline(time.Now().Add(d)))
	line, err := c.br.ReadString('\n')
	if err != nil {
		return line, err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

func (c *uconn) line() string {
	c.t.Helper()
	l, err := c.readWithin(unitWait)
	require.NoError(c.t, err)
	return l
}

func (c *uconn) do(cmd, key, arg string) string {
	c.t.Helper()
	c.send(cmd, key, arg)
	return c.line()
}

// grant sends an acquire and returns the token of the expected `ok` grant.
func (c *uconn) grant(cmd, key, arg string) string {
	c.t.Helper()
	return grantToken(c.t, c.do(cmd, key, arg), "ok")
}

func grantToken(t testing.TB, line, status string) string {
	t.Helper()
	f := strings.Split(line, " ")
	require.Len(t, f, 3, "grant line %q", line)
	require.Equal(t, status, f[0], "grant line %q", line)
	require.Len(t, f[1], 32, "token in %q", line)
	return f[1]
}

// expectEOF asserts that the server closes the connection (after any
// remaining lines) within d.
func (c *uconn) expectEOF(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		_, err := c.readWithin(time.Until(deadline))
		if err == nil {
			continue
		}
		require.Truef(c.t, errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err),
			"want EOF, got %v", err)
		return
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// expectSilence asserts that no line arrives within d.
func (c *uconn) expectSilence(d time.Duration) {
	c.t.Helper()
	l, err := c.readWithin(d)
	require.Errorf(c.t, err, "unexpected line %q", l)
	require.True(c.t, isTimeout(err), "want timeout, got %v", err)
	c.br.Reset(c.nc) // the timed-out read consumed nothing
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, unitWait, 5*time.Millisecond, what)
}

func lockWaiters(s *Server, key string) int {
	for _, l := range s.Stats().Locks {
		if l.Key == key {
			return l.Waiters
		}
	}
	return -1
}

func TestServerReadTimeoutClosesIdleConnection(t *testing.T) {
	t.Parallel()
	// A second, not the 300 ms that CI once saw busy timed out within: a
	// loaded machine under -race can keep this goroutine from running
	// between two of busy's pings for that long.
	const rt = time.Second
	s := NewServer(t, Config{ReadTimeout: rt})
	idle := udial(t, s)
	half := udial(t, s)
	half.raw("l\nk\n") // a half-sent request times out the same way
	busy := udial(t, s)

	start := time.Now()
	last := start
	// ping asks on busy, unless this goroutine was kept from running for
	// half the timeout since the last ping (seen when four -race test
	// binaries shared two CPUs): busy may then have been timed out
	// rightly, and the test cannot say anything.
	ping := func() {
		t.Helper()
		if gap := time.Since(last); gap > rt/2 {
			t.Skipf("%v between two pings of busy (a loaded machine): its timeout may rightly have passed", gap)
		}
		assert.Equal(t, "ok", busy.do("ping", "_", ""))
		last = time.Now()
	}
	// A connection that keeps sending complete requests is never cut off.
	for time.Since(start) < 2*rt {
		ping()
		time.Sleep(100 * time.Millisecond) // the thing under test is time
	}
	// Alive past the others' timeout. Asked now, not after reading theirs:
	// on a loaded machine that can take longer than busy's own timeout.
	ping()
	for _, c := range []*uconn{idle, half} {
		assert.Equal(t, "error", c.line())
		c.expectEOF(unitWait)
	}
	assert.GreaterOrEqual(t, time.Since(start), rt-50*time.Millisecond)
}

func TestServerStopRestartKeepsAddressAndDropsState(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	addr := s.Addr()
	a := udial(t, s)
	a.grant("l", "k", "0")
	a.do("listen", "ch", "")

	require.NoError(t, s.Stop())
	a.expectEOF(unitWait)
	_, err := net.DialTimeout("tcp", addr, time.Second)
	require.Error(t, err, "a stopped server must refuse connections")
	st := s.Stats()
	assert.Empty(t, st.Locks)
	assert.Empty(t, st.IdleLocks)
	assert.Empty(t, st.SignalChannels)
	require.NoError(t, s.Stop(), "Stop is idempotent")

	require.NoError(t, s.Restart())
	assert.Equal(t, addr, s.Addr())
	b := udial(t, s)
	b.grant("l", "k", "0") // the old holder is gone with the old state
	require.NoError(t, s.Restart(), "Restart of a running server is a no-op")
}

func TestServerDropConnectionsAppliesAutoRelease(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	a := udial(t, s)
	a.grant("l", "k", "0")
	s.DropConnections()
	a.expectEOF(unitWait)
	assert.Empty(t, s.Stats().Locks, "DropConnections returns after auto-release")
	b := udial(t, s)
	b.grant("l", "k", "0")
}

func TestServerStallHoldsRequests(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{ReadTimeout: 2 * time.Second})
	a := udial(t, s)
	tok := a.grant("l", "k", "0 60")

	resume := s.Stall(0)
	a.send("ping", "_", "")
	a.expectSilence(300 * time.Millisecond)
	resume()
	resume() // idempotent
	assert.Equal(t, "ok", a.line(), "a request in well before its deadline is served after the stall")
	assert.Equal(t, "ok", a.do("r", "k", tok), "state survives a stall")

	// Stall(d) resumes by itself.
	s.Stall(200 * time.Millisecond)
	start := time.Now()
	assert.Equal(t, "ok", a.do("ping", "_", ""))
	assert.GreaterOrEqual(t, time.Since(start), 150*time.Millisecond)
}

// Stop imitates a crash, and a killed process is no longer paused: Stop
// ends every stall in progress (nested ones, and a Stall(d), whose timer
// it disarms), so the restarted server answers; the resume funcs of the
// ended stalls are no-ops, which neither end nor undercount a stall begun
// after the restart, and Close ends a stall too.
func TestServerStopEndsStalls(t *testing.T) {
	t.Parallel()
	clk := NewManualClock(time.Unix(1_700_000_000, 0))
	s := NewServer(t, Config{Clock: clk, ReadTimeout: -1})
	r1, r2 := s.Stall(0), s.Stall(0)
	r3 := s.Stall(time.Minute)
	require.NoError(t, s.Stop())
	require.NoError(t, s.Restart())
	a := udial(t, s)
	a.send("ping", "_", "")
	l, err := a.readWithin(unitWait)
	require.NoError(t, err, "the restarted server answers nothing: the stall outlived Stop")
	assert.Equal(t, "ok", l)

	r4 := s.Stall(0)
	r1()
	r2()
	r3()
	clk.Advance(2 * time.Minute) // the Stall(d)'s timer was disarmed
	a.send("ping", "_", "")
	a.expectSilence(200 * time.Millisecond)
	r4()
	assert.Equal(t, "ok", a.line(), "the stall begun after the restart ended with its resume")

	s.Stall(0)
	s.Stall(time.Hour)
	require.NoError(t, s.Close())
	assert.Nil(t, s.stallGate(), "Close ends the stalls in progress")
}

// Read deadlines run on through a stall, as a paused dflockd's do: when it
// resumes, a connection whose deadline passed meanwhile is timed out
// (`error`, then closed, its lock released) — an idle one, and one whose
// request came in during the stall after the deadline it was waiting
// under had passed (dflockd's timer wins that race about a quarter of the
// time; testutil's always does). Nothing is written during the stall.
func TestServerStallRunsReadDeadlinesOn(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{ReadTimeout: 300 * time.Millisecond})
	idle := udial(t, s)
	idle.grant("l", "idle", "0 60")
	busy := udial(t, s)
	busy.grant("l", "busy", "0 60")

	resume := s.Stall(0)
	// Both deadlines pass: 300 ms after the server armed them, which on a
	// loaded machine may be well after the grants were read here.
	time.Sleep(1200 * time.Millisecond)
	busy.send("ping", "_", "")
	idle.expectSilence(100 * time.Millisecond)
	busy.expectSilence(100 * time.Millisecond)
	resume()
	for name, c := range map[string]*uconn{"idle": idle, "busy": busy} {
		assert.Equal(t, "error", c.line(), name)
		c.expectEOF(unitWait)
	}
	// v1.16 closes the socket first, then releases.
	waitFor(t, "auto-release", func() bool { return len(s.Stats().Locks) == 0 })
	other := udial(t, s)
	other.grant("l", "idle", "0")
	other.grant("l", "busy", "0")
}

// A stalled server is a paused process: the lock table runs on (a lease
// expires and its slot goes to the parked waiter), but the grant, like every
// other byte, leaves only when the stall ends.
func TestServerStallHoldsGrantsToWaiters(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{SweepInterval: 20 * time.Millisecond})
	_, waiter := holderAndWaiter(t, s, "0 1")

	resume := s.Stall(0)
	defer resume()
	// The holder's 1 s lease expires during the stall and the waiter gets the lock...
	waitFor(t, "the lease expired and went to the waiter", func() bool { return lockWaiters(s, "k") == 0 })
	writes := s.writes.Load()
	// ...but is not told while the server is stalled.
	waiter.expectSilence(300 * time.Millisecond)
	assert.Equal(t, writes, s.writes.Load(), "a stalled server wrote to a socket")
	resume()
	grantToken(t, waiter.line(), "ok")
}

// Signal pushes are held during a stall too.
func TestServerStallHoldsPushes(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	listener := udial(t, s)
	require.Equal(t, "ok", listener.do("listen", "a.>", ""))

	resume := s.Stall(0)
	defer resume()
	n, _ := s.hub.signal("a.b", "held") // as if a signal request was in flight when the stall began
	require.Equal(t, 1, n)
	listener.expectSilence(300 * time.Millisecond)
	resume()
	assert.Equal(t, "sig a.b held", listener.line())
}

// A stalled server accepts nothing: not even a connection over the cap is
// closed until the stall ends.
func TestServerStallAcceptsNothing(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{MaxConnections: 1})
	a := udial(t, s)
	assert.Equal(t, "ok", a.do("ping", "_", ""))

	resume := s.Stall(0)
	defer resume()
	b := udial(t, s) // the kernel completes the handshake into the backlog
	c := udial(t, s)
	b.expectSilence(300 * time.Millisecond)
	c.expectSilence(10 * time.Millisecond)
	assert.Equal(t, 1, s.Stats().Connections)
	resume()
	b.expectEOF(unitWait) // over the cap: accepted and closed now
	c.expectEOF(unitWait)
	assert.Equal(t, "ok", a.do("ping", "_", ""))
}

func TestServerShutdownDrainsV116(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{ShutdownTimeout: -1})
	holder, waiter := holderAndWaiter(t, s, "0")

	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()

	assert.Equal(t, "error", waiter.line(), "blocked waiters fail at once")
	assert.Equal(t, "error_draining", waiter.do("ping", "_", ""))
	waiter.expectEOF(unitWait)
	waitFor(t, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err != nil
	})
	select {
	case <-done:
		t.Fatal("Shutdown returned while a connection was open")
	default:
	}
	assert.Equal(t, "error_draining", holder.do("stats", "_", ""))
	holder.expectEOF(unitWait)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(unitWait):
		t.Fatal("Shutdown did not return after the last connection left")
	}
	require.NoError(t, s.Close(), "Close after Shutdown")
}

func TestServerShutdownV110KeepsServingUntilContextEnds(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{Version: V1_10})
	a := udial(t, s)
	// A round trip first: a connection still in the accept backlog when
	// Shutdown closes the listener is reset, and a drain with no
	// connection ends at once.
	require.True(t, strings.HasPrefix(a.do("stats", "_", ""), "ok {"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	waitFor(t, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err != nil
	})
	assert.True(t, strings.HasPrefix(a.do("stats", "_", ""), "ok {"), "v1.10 serves during the drain")
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	a.expectEOF(unitWait)
}

func TestServerMaxConnectionsClosesExtraSilently(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{MaxConnections: 1})
	a := udial(t, s)
	assert.Equal(t, "ok", a.do("ping", "_", ""))
	b := udial(t, s)
	b.expectEOF(unitWait)
}

func TestServerStatsCountsRequestsAndReads(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	a := udial(t, s)
	// One write carrying three requests: one socket read on the server.
	a.raw("ping\n_\n\nping\n_\n\nbogus\n_\n\n")
	for _, want := range []string{"ok", "ok", "error"} {
		assert.Equal(t, want, a.line())
	}
	st := s.Stats()
	assert.Equal(t, int64(2), st.Requests["ping"])
	assert.Equal(t, int64(1), st.Requests["?"])
	assert.GreaterOrEqual(t, st.Reads, int64(1))
	assert.Equal(t, 1, st.Connections)
}

func TestServerPipelineAnsweredInOrderWithCRLF(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	a := udial(t, s)
	a.raw("l\r\nk1\r\n0\r\r\nl\nk2\n0 7\nstats\n_\n\nping\n_\n\n")
	grantToken(t, a.line(), "ok")
	assert.Regexp(t, `^ok [0-9a-f]{32} 7$`, a.line())
	assert.True(t, strings.HasPrefix(a.line(), `ok {"connections":1,"locks":[{"key":"k1","owner_conn_id":`))
	assert.Equal(t, "ok", a.line())
}

func TestServerCloseLeavesNoGoroutines(t *testing.T) {
	// Not parallel: goleak must see only this test's goroutines.
	ignore := goleak.IgnoreCurrent()
	for _, v := range []Version{V1_16, V1_10, V2_1} {
		s, err := Start(Config{Version: v, AuthToken: "s3cret"})
		require.NoError(t, err)
		holder := udial(t, s)
		require.Equal(t, "ok", holder.do("auth", "_", "s3cret"))
		holder.grant("l", "k", "0")
		waiter := udial(t, s)
		require.Equal(t, "ok", waiter.do("auth", "_", "s3cret"))
		waiter.send("l", "k", "30") // parked, with a peer-close watcher on v1.16/v2.1
		if v == V1_16 {
			listener := udial(t, s)
			require.Equal(t, "ok", listener.do("auth", "_", "s3cret"))
			require.Equal(t, "ok", listener.do("listen", "a.>", ""))
		}
		waitFor(t, "waiter queued", func() bool { return lockWaiters(s, "k") == 1 })
		s.Stall(time.Hour)
		require.NoError(t, s.Close())
		require.NoError(t, s.Close(), "Close is idempotent")
		holder.expectEOF(unitWait)
	}
	goleak.VerifyNone(t, ignore)
}

// A stalled server acts on nothing it reads, also what a read already
// waiting when the stall began returns: a holder's close is not noticed
// (its lock is not handed on), and a client's half-close is not answered,
// until the stall ends.
func TestStalledServerActsOnNoCloseUntilItEnds(t *testing.T) {
	t.Parallel()
	t.Run("close", func(t *testing.T) {
		t.Parallel()
		s := NewServer(t, Config{})
		holder, _ := holderAndWaiter(t, s, "0 60")
		resume := s.Stall(0)
		_ = holder.nc.Close()
		time.Sleep(200 * time.Millisecond) // the server must stay paused through it
		assert.Equal(t, 1, lockWaiters(s, "k"), "the stalled server noticed the close and handed the lock on")
		resume()
		waitFor(t, "the lock handed on after the stall", func() bool { return lockWaiters(s, "k") == 0 })
	})
	t.Run("half-close", func(t *testing.T) {
		t.Parallel()
		s := NewServer(t, Config{})
		c := udial(t, s)
		assert.Equal(t, "ok", c.do("ping", "_", ""))
		resume := s.Stall(0)
		defer resume()
		_ = c.nc.(*net.TCPConn).CloseWrite()
		l, err := c.readWithin(200 * time.Millisecond)
		assert.True(t, isTimeout(err), "a stalled server closed the connection: %q %v", l, err)
	})
}

// holderAndWaiter connects a holder of "k" (granted with the l arguments
// holdArgs) and a waiter parked behind it for up to 30 s.
func holderAndWaiter(t *testing.T, s *Server, holdArgs string) (holder, waiter *uconn) {
	t.Helper()
	holder = udial(t, s)
	holder.grant("l", "k", holdArgs)
	waiter = udial(t, s)
	waiter.send("l", "k", "30")
	waitFor(t, "waiter queued", func() bool { return lockWaiters(s, "k") == 1 })
	return holder, waiter
}

// Start rejects the Config values whose field doc gives them no meaning,
// naming the field and the value, and accepts the boundary values that
// have one (0 = the default or unlimited, MaxLocks and the timeouts
// negative).
func TestStartValidatesConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  Config
		err  string // "" = accepted
	}{
		{"Version7", Config{Version: 7}, "testutil: unknown version 7"},
		{"SignalOverflow7", Config{SignalOverflow: 7}, "testutil: Config.SignalOverflow SignalOverflow(7): want OverflowDisconnect or OverflowDrop"},
		{"SignalOverflow-1", Config{SignalOverflow: -1}, "testutil: Config.SignalOverflow SignalOverflow(-1): want OverflowDisconnect or OverflowDrop"},
		{"MaxWaiters-1", Config{MaxWaiters: -1}, "testutil: Config.MaxWaiters -1: must not be negative (0 = unlimited)"},
		{"MaxSubscriptions-1", Config{MaxSubscriptions: -1}, "testutil: Config.MaxSubscriptions -1: must not be negative (0 = unlimited)"},
		{"MaxConnections-1", Config{MaxConnections: -1}, "testutil: Config.MaxConnections -1: must not be negative (0 = unlimited)"},
		{"PushBuffer-1", Config{PushBuffer: -1}, "testutil: Config.PushBuffer -1: must not be negative (0 = the default, 64)"},
		{"SweepInterval-1s", Config{SweepInterval: -time.Second}, "testutil: Config.SweepInterval -1s: must not be negative (0 = the default, 1s)"},
		{"GCInterval-1ns", Config{GCInterval: -1}, "testutil: Config.GCInterval -1ns: must not be negative (0 = the default, 5s)"},
		{"GCMaxIdle-1s", Config{GCMaxIdle: -time.Second}, "testutil: Config.GCMaxIdle -1s: must not be negative (0 = the default, 1m0s)"},
		{"DefaultLease-1s", Config{DefaultLease: -time.Second}, "testutil: DefaultLease must be positive"},

		{"zero", Config{}, ""},
		{"V2_1+OverflowDrop", Config{Version: V2_1, SignalOverflow: OverflowDrop}, ""},
		{"limits 1", Config{MaxWaiters: 1, MaxSubscriptions: 1, MaxConnections: 1, PushBuffer: 1}, ""},
		{"intervals 1ns", Config{SweepInterval: 1, GCInterval: 1, GCMaxIdle: 1}, ""},
		{"documented negatives", Config{MaxLocks: -1, ReadTimeout: -1, WriteTimeout: -1, ShutdownTimeout: -1}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Start(tc.cfg)
			if tc.err == "" {
				require.NoError(t, err)
				require.NoError(t, s.Close())
				return
			}
			if s != nil {
				_ = s.Close()
			}
			require.EqualError(t, err, tc.err)
		})
	}
}
