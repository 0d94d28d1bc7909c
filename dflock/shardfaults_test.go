package dflock

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// keyOn returns a key the Client places on server addr.
func keyOn(t *testing.T, c *Client, addr, prefix string) string {
	t.Helper()
	for i := 0; i < 10000; i++ {
		k := prefix + strconv.Itoa(i)
		if c.ServerFor(k) == addr {
			return k
		}
	}
	t.Fatalf("no key for %s", addr)
	return ""
}

// timed runs f and returns how long it took.
func timed(f func()) time.Duration {
	t0 := time.Now()
	f()
	return time.Since(t0)
}

// A blackholed server must not slow down operations on the keys of a
// healthy server of the same Client, and operations on its own keys must
// end with their context.
func TestBlackholedServerLeavesOthersAlone(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	a, pb, c := healthyAndProxied(t)
	ka := keyOn(t, c, a.Addr(), "a")
	kb := keyOn(t, c, pb.Addr(), "b")
	kbs := keyOn(t, c, pb.Addr(), "bs")
	kbx := keyOn(t, c, pb.Addr(), "bx")
	kby := keyOn(t, c, pb.Addr(), "by")
	kbt := keyOn(t, c, pb.Addr(), "bt")
	kbu := keyOn(t, c, pb.Addr(), "bu")

	// Warm both: a lease on B on the lane, a semaphore slot on B.
	lb, err := c.Lock(ctx, kb)
	require.NoError(t, err)
	sb, err := c.Semaphore(ctx, kbs, 3)
	require.NoError(t, err)
	la, err := c.Lock(ctx, ka)
	require.NoError(t, err)
	require.NoError(t, la.Release(ctx))

	pb.Blackhole(true)
	defer pb.Blackhole(false)

	// B's keys: a try with a 300 ms context fails within it.
	for _, op := range []string{"trylock", "lock", "trysem", "sem", "release", "renew", "stats"} {
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		var err error
		d := timed(func() {
			switch op {
			case "trylock":
				_, err = c.TryLock(cctx, kbx)
			case "lock":
				_, err = c.Lock(cctx, kby)
			case "trysem":
				_, err = c.TrySemaphore(cctx, kbt, 2)
			case "sem":
				_, err = c.Semaphore(cctx, kbu, 2)
			case "release":
				err = lb.Release(cctx)
			case "renew":
				err = sb.Renew(cctx)
			case "stats":
				_, err = c.Stats(cctx)
			}
		})
		cancel()
		t.Logf("B %s: %v after %v", op, err, d)
		require.Error(t, err, op)
		require.Less(t, d, time.Second, op)
	}
	// A's keys: fast. Anything that waited on B would wait for B's
	// keepalive (2×10 s) or a write timeout (5 s); a round's bound of a second
	// is far below that and far above what a loaded one-CPU race run
	// costs (a 200 ms bound failed at 292 ms with two suites running).
	kas := keyOn(t, c, a.Addr(), "as")
	for i := 0; i < 20; i++ {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var l *Lock
		var s *Semaphore
		d := timed(func() {
			l, err = c.Lock(cctx, ka)
			if err == nil {
				err = l.Release(cctx)
			}
			if err == nil {
				s, err = c.Semaphore(cctx, kas, 2)
			}
			if err == nil {
				err = s.Release(cctx)
			}
		})
		cancel()
		require.NoError(t, err)
		require.Less(t, d, time.Second)
	}
	d := timed(func() { _ = c.Close() })
	t.Logf("close took %v", d)
	require.Less(t, d, 4*time.Second)
}

func TestDrainingServerLeavesOthersAlone(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	a := newServer(t, testutil.Config{})
	b := newServer(t, testutil.Config{ShutdownTimeout: 3 * time.Second})
	c := newClient(t, []string{a.Addr(), b.Addr()})
	ka := keyOn(t, c, a.Addr(), "a")
	kb := keyOn(t, c, b.Addr(), "b")
	kbs := keyOn(t, c, b.Addr(), "bs")
	kbx := keyOn(t, c, b.Addr(), "bx")

	sb, err := c.Semaphore(ctx, kbs, 3)
	require.NoError(t, err)
	lb, err := c.Lock(ctx, kb)
	require.NoError(t, err)

	go func() { _ = b.Shutdown(context.Background()) }()
	// Not the listener's closing, which comes a moment before open
	// connections' requests are refused.
	require.Eventually(t, b.Draining, 5*time.Second, time.Millisecond)

	for _, op := range []string{"trysem", "release-sem", "release-lock", "trysem2", "sem3"} {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var err error
		d := timed(func() {
			switch op {
			case "trysem", "trysem2":
				_, err = c.TrySemaphore(cctx, kbx, 2)
			case "sem3":
				_, err = c.Semaphore(cctx, kbx, 2)
			case "release-sem":
				err = sb.Release(cctx)
			case "release-lock":
				err = lb.Release(cctx)
			}
		})
		cancel()
		t.Logf("B %s: %v after %v (draining %v unavailable %v lost %v)", op, err, d,
			errors.Is(err, ErrDraining), errors.Is(err, ErrServerUnavailable), errors.Is(err, ErrLockLost))
		require.Error(t, err)
	}
	s, err := c.Semaphore(ctx, ka, 2)
	require.NoError(t, err)
	require.NoError(t, s.Release(ctx))
}

func TestRefusingServerFailsFast(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"refuse", "closenew"} {
		t.Run(mode, func(t *testing.T) {
			ctx := testCtx(t)
			a, pb, c := healthyAndProxied(t)
			ka := keyOn(t, c, a.Addr(), "a")
			kbs := keyOn(t, c, pb.Addr(), "bs")
			kbx := keyOn(t, c, pb.Addr(), "bx")
			sb, err := c.Semaphore(ctx, kbs, 3)
			require.NoError(t, err)
			require.Eventually(t, func() bool { return c.Snapshot().Servers[c.serverIndex(pb.Addr())].Conns.Lane == 2 && pb.Conns() == 2 }, 5*time.Second, time.Millisecond)
			if mode == "refuse" {
				pb.RefuseNew(true)
			} else {
				pb.CloseNew(true)
			}
			pb.ResetAll()
			<-sb.Done()
			t.Logf("sem lost: %v", sb.Err())
			for i := 0; i < 3; i++ {
				var err error
				d := timed(func() { _, err = c.Semaphore(ctx, kbx, 2) })
				t.Logf("B sem: %v after %v", err, d)
				require.ErrorIs(t, err, ErrServerUnavailable)
				d = timed(func() { _, err = c.TrySemaphore(ctx, kbx, 2) })
				t.Logf("B trysem: %v after %v", err, d)
				require.ErrorIs(t, err, ErrServerUnavailable)
			}
			err = sb.Release(ctx)
			t.Logf("release after loss: %v", err)
			require.ErrorIs(t, err, ErrLockLost)
			s, err := c.Semaphore(ctx, ka, 2)
			require.NoError(t, err)
			require.NoError(t, s.Release(ctx))
			snap := c.Snapshot()
			t.Logf("snapshot: %+v", snap.Servers)
		})
	}
}

func (c *Client) serverIndex(addr string) int {
	for i, s := range c.servers {
		if s.addr == addr {
			return i
		}
	}
	return -1
}

// Release is safe for concurrent use and ctx bounds the wait for the
// server's answer: a second Release with a short context must return when
// its context ends, not wait for the first caller's (longer) one.
func TestConcurrentReleaseHonoursItsOwnContext(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newServer(t, testutil.Config{})
	pb := newProxy(t, b.Addr())
	c := newClient(t, []string{pb.Addr()})
	s, err := c.Semaphore(ctx, "sem", 2)
	require.NoError(t, err)

	pb.Blackhole(true)
	first := make(chan error, 1)
	go func() { first <- s.Release(context.Background()) }() // waits for the answer
	awaitReleaseSending(t, s.h)                              // the first Release is waiting

	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- s.Release(short) }()
	select {
	case err := <-done:
		t.Logf("second Release: %v after %v", err, time.Since(start))
	case <-time.After(3 * time.Second):
		pb.Blackhole(false)
		err := <-done
		t.Fatalf("second Release(ctx with 200ms) still blocked after 3s; returned %v after %v once the blackhole lifted", err, time.Since(start))
	}
	pb.Blackhole(false)
	require.NoError(t, <-first)
}

// A slot granted after waiting (pinned wait-pool connection) is lost
// promptly when its connection is reset; Release then reports the loss and
// the connection is not leaked.
func TestPinnedSemaphoreLossAndRelease(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newServer(t, testutil.Config{})
	pb := newProxy(t, b.Addr())
	c := newClient(t, []string{pb.Addr()})
	other := newClient(t, []string{b.Addr()})
	s := pinnedSlot(t, b, c, other, "ps")
	pb.ResetAll()
	select {
	case <-s.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("loss not reported")
	}
	require.ErrorIs(t, s.Err(), ErrLockLost)
	require.ErrorIs(t, s.Release(ctx), ErrLockLost)
	require.ErrorIs(t, s.Renew(ctx), ErrLockLost)
	require.Eventually(t, func() bool {
		sn := c.Snapshot().Servers[0]
		return sn.Conns.Pinned == 0 && sn.Conns.InUse == 0 && sn.LeasesHeld == 0
	}, 2*time.Second, time.Millisecond, "%+v", c.Snapshot().Servers[0])
	// And the server gave the slot to the next, once it has seen the
	// reset, which the client may have seen first.
	var h2 *Semaphore
	require.Eventually(t, func() bool {
		var err error
		h2, err = other.TrySemaphore(ctx, "ps", 1)
		return err == nil
	}, testTimeout, time.Millisecond, "the server kept the lost slot")
	require.NoError(t, h2.Release(ctx))
}

// docs/leases.md: "After a loss by rule 3 the client also sends a
// best-effort release, so a lease it has given up on does not linger on a
// slow but live server." A slot that pins its wait-pool connection, on a
// server with auto-release off, behind a slow network.
func TestPinnedSlotLostByClockIsReleased(t *testing.T) {
	t.Parallel()
	b := newServer(t, testutil.Config{DisableAutoRelease: true})
	pb := newProxy(t, b.Addr())
	c := newClient(t, []string{pb.Addr()})
	other := newClient(t, []string{b.Addr()})
	s := pinnedSlot(t, b, c, other, "slow", LeaseTTL(2*time.Second))
	pb.SetLatency(600 * time.Millisecond) // RTT 1.2 s: the renewal is confirmed too late
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("no loss")
	}
	lost := time.Now()
	t.Logf("lost: %v", s.Err())
	// The renewal sent ~1 s after the grant reached the server ~0.6 s
	// later and extended the lease to ~3.6 s; a release written at the
	// loss (~1.8 s) reaches it by ~2.4 s.
	time.Sleep(1200 * time.Millisecond)
	held := semHolders(b, "slow")
	t.Logf("holders %v after the loss: %d; releaseFailed=%d; sr requests the server read: %d", time.Since(lost), held, c.renewStats().ReleaseFailed, b.Stats().Requests["sr"])
	require.Zero(t, held, "the slot given up by the client is still held on the server")
}

// Release honours its context while Close runs: Close may take up to
// DefaultReleaseTimeout (and more) to release leases on an unresponsive
// server.
func TestReleaseDuringCloseHonoursContext(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newServer(t, testutil.Config{})
	pb := newProxy(t, b.Addr())
	c, err := New([]string{pb.Addr()})
	require.NoError(t, err)
	_, err = c.Semaphore(ctx, "cs", 2)
	require.NoError(t, err)
	s2, err := c.Semaphore(ctx, "cs", 2)
	require.NoError(t, err)
	pb.Blackhole(true)
	defer pb.Blackhole(false)
	closed := make(chan struct{})
	go func() { _ = c.Close(); close(closed) }()
	require.Eventually(t, func() bool { return c.closing.Load() }, time.Second, time.Millisecond)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = s2.Release(short)
	d := time.Since(start)
	t.Logf("Release during Close: %v after %v", err, d)
	<-closed
	require.Less(t, d, time.Second, "Release(ctx with 100ms) waited for Close")
}

// Leases on a healthy server keep renewing while another server of the
// Client is blackholed and its leases are lost.
func TestRenewalsOfHealthyServerSurviveBlackhole(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	a, pb, c := healthyAndProxied(t, WithLeaseTTL(2*time.Second))
	var onA, onB []*Semaphore
	for i := 0; len(onA) < 20 || len(onB) < 20; i++ {
		k := "k" + strconv.Itoa(i)
		s, err := c.Semaphore(ctx, k, 2)
		require.NoError(t, err)
		if s.Server() == a.Addr() {
			onA = append(onA, s)
		} else {
			onB = append(onB, s)
		}
	}
	pb.Blackhole(true)
	defer pb.Blackhole(false)
	time.Sleep(5 * time.Second)
	for _, s := range onB {
		require.ErrorIs(t, s.Err(), ErrLockLost)
	}
	for _, s := range onA {
		require.NoError(t, s.Err())
	}
	for _, s := range onA {
		require.NoError(t, s.Release(ctx))
	}
}

// Close ends calls stuck dialling a blackholed server at once.
func TestCloseEndsDialsToBlackholedServer(t *testing.T) {
	t.Parallel()
	for _, op := range []string{"lock", "semaphore", "stats", "trylock"} {
		t.Run(op, func(t *testing.T) { testCloseEndsDials(t, op) })
	}
}

func testCloseEndsDials(t *testing.T, op string) {
	a := newServer(t, testutil.Config{})
	b := newServer(t, testutil.Config{})
	pb := newProxy(t, b.Addr())
	c, err := New([]string{a.Addr(), pb.Addr()})
	require.NoError(t, err)
	kb := keyOn(t, c, pb.Addr(), "b")
	kbs := keyOn(t, c, pb.Addr(), "bs")
	pb.Blackhole(true)
	defer pb.Blackhole(false)
	errs := make(chan error, 1)
	go func() {
		var err error
		switch op {
		case "lock":
			_, err = c.Lock(context.Background(), kb)
		case "trylock":
			_, err = c.TryLock(context.Background(), kb)
		case "semaphore":
			_, err = c.Semaphore(context.Background(), kbs, 2)
		case "stats":
			_, err = c.Stats(context.Background())
		}
		errs <- err
	}()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	closed := make(chan time.Duration, 1)
	go func() { closed <- timed(func() { _ = c.Close() }) }()
	err = <-errs
	t.Logf("%s returned %v after %v", op, err, time.Since(start))
	d := <-closed
	t.Logf("Close took %v", d)
	require.ErrorIs(t, err, ErrClosed)
	require.Less(t, d, time.Second)
}

// A slot the server expired while the Client still believed it held it
// (a paused process, a clock step): Release reports the loss (ErrLockLost),
// and so do Snapshot (a loss, not a release) and OnLeaseLost, as for any
// other loss (they once missed it).
func TestReleaseThatFindsTheLeaseGoneCountsAsLoss(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srvClk := testutil.NewManualClock(time.Now().Round(0))
	b := newServer(t, testutil.Config{Clock: srvClk, ReadTimeout: -1})
	hook := newLostHook()
	cliClk := testutil.NewManualClock(time.Now().Round(0)) // the client's clock stands still
	c := newClient(t, []string{b.Addr()}, withClock(cliClk), WithHooks(hook.hooks()))
	s, err := c.Semaphore(ctx, "exp", 2, LeaseTTL(30*time.Second))
	require.NoError(t, err)
	srvClk.Advance(40 * time.Second) // the server's sweeper expires the slot
	require.Eventually(t, func() bool { return semHolders(b, "exp") == 0 }, 5*time.Second, time.Millisecond)

	err = s.Release(ctx)
	require.ErrorIs(t, err, ErrLockLost)
	snap := c.Snapshot()
	t.Logf("Release: %v; Snapshot: Released=%d Lost=%d; Err()=%v", err, snap.Released, snap.Lost, s.Err())
	select {
	case <-hook.ch:
	case <-time.After(time.Second):
		t.Errorf("OnLeaseLost not called for a slot Release found lost")
	}
	require.Equal(t, int64(1), snap.Lost, "Release returned ErrLockLost, yet Snapshot counts no loss")
}

// pinnedSlot returns the one slot of semaphore key, acquired by c after
// waiting behind other (so it pins a wait-pool connection of c's).
func pinnedSlot(t *testing.T, srv *testutil.Server, c, other *Client, key string, opts ...AcquireOption) *Semaphore {
	t.Helper()
	ctx := testCtx(t)
	first, err := other.Semaphore(ctx, key, 1)
	require.NoError(t, err)
	got := make(chan *Semaphore, 1)
	go func() {
		s, err := c.Semaphore(ctx, key, 1, opts...)
		if err != nil {
			t.Error(err)
		}
		got <- s
	}()
	require.Eventually(t, func() bool { return semWaiters(srv, key) == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, first.Release(ctx))
	s := <-got
	require.NotNil(t, s)
	require.Equal(t, 1, c.Snapshot().Servers[0].Conns.Pinned)
	return s
}

// healthyAndProxied starts two servers, the second behind a fault proxy,
// and a Client over both (opts added).
func healthyAndProxied(t *testing.T, opts ...Option) (a *testutil.Server, pb *testutil.Proxy, c *Client) {
	t.Helper()
	a = newServer(t, testutil.Config{})
	b := newServer(t, testutil.Config{})
	pb = newProxy(t, b.Addr())
	return a, pb, newClient(t, []string{a.Addr(), pb.Addr()}, opts...)
}
