package dflock

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// testTimeout bounds every blocking call of a test so that a bug fails the
// test instead of hanging it.
const testTimeout = 20 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func newServer(t testing.TB, cfg testutil.Config) *testutil.Server {
	t.Helper()
	return testutil.NewServer(t, cfg)
}

func newClient(t testing.TB, servers []string, opts ...Option) *Client {
	t.Helper()
	c, err := New(servers, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func addrsOf(srvs ...*testutil.Server) []string {
	out := make([]string, len(srvs))
	for i, s := range srvs {
		out[i] = s.Addr()
	}
	return out
}

// lockHeld reports whether the server shows a holder for the lock key.
func lockHeld(s *testutil.Server, key string) bool {
	for _, l := range s.Stats().Locks {
		if l.Key == key && l.OwnerConnID != 0 {
			return true
		}
	}
	return false
}

// lockWaiters is the number of waiters the server shows for the lock key.
func lockWaiters(s *testutil.Server, key string) int {
	for _, l := range s.Stats().Locks {
		if l.Key == key {
			return l.Waiters
		}
	}
	return 0
}

// semHolders is the number of holders of the semaphore key.
func semHolders(s *testutil.Server, key string) int {
	holders, _ := semCounts(s, key)
	return holders
}

// semWaiters is the number of waiters the server shows for the semaphore key.
func semWaiters(s *testutil.Server, key string) int {
	_, waiters := semCounts(s, key)
	return waiters
}

// semCounts finds the semaphore key in the server's stats. The server lists
// a semaphore of limit 1 under locks (it classifies by limit), so the tests
// must not use one name for a lock and a limit-1 semaphore.
func semCounts(s *testutil.Server, key string) (holders, waiters int) {
	st := s.Stats()
	for _, sem := range st.Semaphores {
		if sem.Key == key {
			return sem.Holders, sem.Waiters
		}
	}
	for _, l := range st.Locks {
		if l.Key == key {
			if l.OwnerConnID != 0 {
				holders = 1
			}
			return holders, l.Waiters
		}
	}
	return 0, 0
}

// heldTotal counts every lock and semaphore holder on the server.
func heldTotal(s *testutil.Server) int {
	st := s.Stats()
	n := 0
	for _, l := range st.Locks {
		if l.OwnerConnID != 0 {
			n++
		}
	}
	for _, sem := range st.Semaphores {
		n += sem.Holders
	}
	return n
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) count(sub string) int { return strings.Count(s.String(), sub) }

// handle is what a Lock and a Semaphore have in common, for tests that
// treat both alike.
type handle interface {
	Key() string
	Token() string
	Server() string
	Done() <-chan struct{}
	Err() error
	Renew(ctx context.Context) error
	Release(ctx context.Context) error
}

var (
	_ handle = (*Lock)(nil)
	_ handle = (*Semaphore)(nil)
)

// awaitRequests waits until the server has counted at least n requests of
// the command word cmd, or fails when ctx ends.
func awaitRequests(t *testing.T, ctx context.Context, srv *testutil.Server, cmd string, n int64) {
	t.Helper()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for srv.Stats().Requests[cmd] < n {
		select {
		case <-ctx.Done():
			t.Fatalf("the server never counted %d %q requests (now %d)", n, cmd, srv.Stats().Requests[cmd])
		case <-tick.C:
		}
	}
}

// stepRenewals moves clk, the scheduler clock of c (withClock; not shared
// with a server), forward by step at a time until c's scheduler has
// confirmed n more renewals than at the call. It reports false if done
// closes first.
//
// The clock moves only once the scheduler has armed its timer and no
// renewal is in flight, so a step never outruns the scheduler: a lease can
// be lost here only by a renewal that was refused or never sent.
func stepRenewals(t testing.TB, ctx context.Context, c *Client, clk *testutil.ManualClock, step time.Duration, n int64, done <-chan struct{}) bool {
	t.Helper()
	target := c.renewStats().Renewed + n
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		st := c.renewStats()
		if st.Renewed >= target {
			return true
		}
		if clk.Pending() > 0 && st.Sent == st.Renewed+st.Refused+st.Unanswered {
			clk.Advance(step)
		}
		select {
		case <-done:
			return false
		case <-ctx.Done():
			t.Fatalf("renewals: %+v, %d short of the %d awaited", c.renewStats(), target-c.renewStats().Renewed, n)
		case <-tick.C:
		}
	}
}

// awaitRenewals waits until c's scheduler has confirmed n more renewals
// than it had at the call, or until done closes. It reports whether the
// renewals came first.
func awaitRenewals(t *testing.T, ctx context.Context, c *Client, n int64, done <-chan struct{}) bool {
	t.Helper()
	target := c.renewStats().Renewed + n
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for c.renewStats().Renewed < target {
		select {
		case <-done:
			return false
		case <-ctx.Done():
			t.Fatalf("renewals: %+v, awaited %d more", c.renewStats(), n)
		case <-tick.C:
		}
	}
	return true
}

// awaitConfirmed waits until c's scheduler has had n renewals confirmed in
// all and none is in flight.
func awaitConfirmed(t *testing.T, ctx context.Context, c *Client, n int64) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		st := c.renewStats()
		if st.Renewed >= n && st.Sent == st.Renewed+st.Refused+st.Unanswered {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("renewals: %+v, awaited %d confirmed", st, n)
		case <-tick.C:
		}
	}
}

// waitFor polls cond until it holds, d has passed or ctx ends, and reports
// whether it held: for a test that must act again (advance a manual clock)
// when an effect it cannot observe the start of has not come.
func waitFor(ctx context.Context, d time.Duration, cond func() bool) bool {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	stop := time.NewTimer(d)
	defer stop.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return false
		case <-stop.C:
			return cond()
		case <-tick.C:
		}
	}
	return true
}

// autoReleaseOffBehindProxy is the setup of the tests of grants left on
// their way: a server with auto-release off (a grant made to a connection
// that closes stays held), a holder Client connected directly, and the
// Client under test connected through a proxy that can delay or cut its
// traffic.
func autoReleaseOffBehindProxy(t *testing.T) (srv *testutil.Server, px *testutil.Proxy, holder, c *Client) {
	t.Helper()
	srv = newServer(t, testutil.Config{DisableAutoRelease: true})
	px = newProxy(t, srv.Addr())
	return srv, px, newClient(t, addrsOf(srv)), newClient(t, []string{px.Addr()})
}

// grantedTicketOnDroppedConn enqueues on "k" of a fresh server, where the
// place is granted at once, then drops the server's connections: the
// ticket's lease is lost with its connection.
func grantedTicketOnDroppedConn(t *testing.T) (*Client, *Ticket, context.Context) {
	t.Helper()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	tk, err := c.Enqueue(ctx, "k")
	require.NoError(t, err)
	require.True(t, tk.Acquired())
	srv.DropConnections()
	return c, tk, ctx
}
