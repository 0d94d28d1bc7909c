package dflock

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// threeServersOneProxied starts three servers, the last behind a fault proxy,
// and a Client over them.
func threeServersOneProxied(t *testing.T, opts ...Option) (a, b *testutil.Server, pc *testutil.Proxy, c *Client) {
	t.Helper()
	a = newServer(t, testutil.Config{})
	b = newServer(t, testutil.Config{})
	cs := newServer(t, testutil.Config{})
	pc = newProxy(t, cs.Addr())
	return a, b, pc, newClient(t, []string{a.Addr(), b.Addr(), pc.Addr()}, opts...)
}

// Close of a Client over three servers, one of them blackholed while the
// Client holds locks, slots, queued tickets, a wildcard subscription and a
// long-Emit connection on every server, is bounded as documented:
// DefaultReleaseTimeout after the calls in progress returned (none here).
func TestMultiServerCloseWithOneBlackholedOfThreeIsBounded(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	a, b, pc, c := threeServersOneProxied(t)
	other := newClient(t, []string{a.Addr(), b.Addr(), pc.Addr()})
	sub, err := c.Listen(ctx, "rv.>")
	require.NoError(t, err)
	defer sub.Close()
	long := strings.Repeat("x", 600)
	for i, addr := range c.Servers() {
		k := keyOn(t, c, addr, "l"+strconv.Itoa(i)+"-")
		_, err := c.Lock(ctx, k)
		require.NoError(t, err)
		ks := keyOn(t, c, addr, "s"+strconv.Itoa(i)+"-")
		_, err = c.Semaphore(ctx, ks, 3)
		require.NoError(t, err)
		// A queued ticket behind other's holder.
		kt := keyOn(t, c, addr, "t"+strconv.Itoa(i)+"-")
		_, err = other.Lock(ctx, kt)
		require.NoError(t, err)
		tk, err := c.Enqueue(ctx, kt)
		require.NoError(t, err)
		require.False(t, tk.Acquired())
		ke := keyOn(t, c, addr, "rv.e"+strconv.Itoa(i)+"-")
		_, err = c.Emit(ctx, ke, long)
		require.NoError(t, err)
	}
	pc.Blackhole(true)
	defer pc.Blackhole(false)
	d := timed(func() { _ = c.Close() })
	t.Logf("Close took %v", d)
	require.Less(t, d, DefaultReleaseTimeout+time.Second)
}

// Calls in progress on the blackholed server of three (with contexts that
// never end) return once Close begins, and Close stays bounded.
func TestMultiServerCloseEndsCallsOnBlackholedServer(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	a, b, pc, c := threeServersOneProxied(t)
	other := newClient(t, []string{a.Addr(), b.Addr(), pc.Addr()})
	kc := keyOn(t, c, pc.Addr(), "c")
	_, err := other.Lock(ctx, kc)
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, kc)
	require.NoError(t, err)
	held, err := c.Lock(ctx, keyOn(t, c, pc.Addr(), "h"))
	require.NoError(t, err)
	heldS, err := c.Semaphore(ctx, keyOn(t, c, pc.Addr(), "hs"), 3)
	require.NoError(t, err)
	long := strings.Repeat("x", 600)
	_, err = c.Emit(ctx, keyOn(t, c, pc.Addr(), "e"), long)
	require.NoError(t, err)
	pc.Blackhole(true)
	defer pc.Blackhole(false)

	bg := context.Background()
	calls := map[string]func() error{
		"wait":     func() error { _, err := tk.Wait(bg); return err },
		"lock":     func() error { _, err := c.Lock(bg, keyOn(t, c, pc.Addr(), "x")); return err },
		"sem":      func() error { _, err := c.Semaphore(bg, keyOn(t, c, pc.Addr(), "y"), 2); return err },
		"release":  func() error { return held.Release(bg) },
		"renew":    func() error { return heldS.Renew(bg) },
		"emit":     func() error { _, err := c.Emit(bg, keyOn(t, c, pc.Addr(), "e"), "p"); return err },
		"emitlong": func() error { _, err := c.Emit(bg, keyOn(t, c, pc.Addr(), "e"), long); return err },
		"listen":   func() error { _, err := c.Listen(bg, "rw.*"); return err },
		"stats":    func() error { _, err := c.Stats(bg); return err },
		"enqueue":  func() error { _, err := c.Enqueue(bg, keyOn(t, c, pc.Addr(), "q")); return err },
	}
	type res struct {
		name string
		err  error
		at   time.Time
	}
	out := make(chan res, len(calls))
	for name, f := range calls {
		go func() { err := f(); out <- res{name, err, time.Now()} }()
	}
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	closed := make(chan time.Duration, 1)
	go func() { closed <- timed(func() { _ = c.Close() }) }()
	for range calls {
		select {
		case r := <-out:
			t.Logf("%s: %v after %v", r.name, r.err, r.at.Sub(start))
		case <-time.After(10 * time.Second):
			t.Fatalf("a call still blocked 10 s after Close began")
		}
	}
	d := <-closed
	t.Logf("Close took %v", d)
	require.Less(t, d, DefaultReleaseTimeout+time.Second)
}

// A wildcard subscription over three servers: while one is blackholed the
// other two keep delivering promptly; a reset of the blackholed server's
// connections is one gap, naming that server, counted once; once healed a
// resumed marker comes, and its signals flow again.
func TestMultiServerWildcardListenOneServerPartitioned(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	a, b, pc, c := threeServersOneProxied(t)
	pub := newClient(t, []string{a.Addr(), b.Addr(), pc.Addr()})
	sub, err := c.Listen(ctx, "w.>")
	require.NoError(t, err)
	defer sub.Close()
	chans := map[string]string{}
	for _, addr := range c.Servers() {
		chans[addr] = keyOn(t, c, addr, "w.ch")
	}
	next := func(d time.Duration) (Signal, error) {
		nctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return sub.Next(nctx)
	}
	for _, addr := range c.Servers() {
		n, err := pub.Emit(ctx, chans[addr], "warm")
		require.NoError(t, err)
		require.Equal(t, 1, n)
		s, err := next(2 * time.Second)
		require.NoError(t, err)
		require.Equal(t, chans[addr], s.Channel)
	}
	pc.Blackhole(true)
	for i := range 20 {
		for _, addr := range []string{a.Addr(), b.Addr()} {
			p := "p" + strconv.Itoa(i)
			n, err := pub.Emit(ctx, chans[addr], p)
			require.NoError(t, err)
			require.Equal(t, 1, n)
			s, err := next(time.Second)
			require.NoError(t, err, "signal %d of %s during C's blackhole", i, addr)
			require.Equal(t, chans[addr], s.Channel)
			require.Equal(t, p, s.Payload)
		}
	}
	gaps0 := c.Snapshot().SignalGaps
	pc.ResetAll()
	pc.Blackhole(false)
	s, err := next(5 * time.Second)
	require.ErrorIs(t, err, ErrSignalGap, "got %+v", s)
	var ge *GapError
	require.ErrorAs(t, err, &ge)
	require.Equal(t, pc.Addr(), ge.Server)
	require.False(t, ge.Resumed)
	s, err = next(10 * time.Second)
	require.ErrorAs(t, err, &ge, "got %+v", s)
	require.True(t, ge.Resumed)
	require.Equal(t, pc.Addr(), ge.Server)
	require.Equal(t, gaps0+1, c.Snapshot().SignalGaps)
	// pub's own pool may still fail fast here: a lane dial it made for the
	// warm-up can be mid-handshake when the blackhole begins, ResetAll then
	// fails it and marks the server down, and pub's probe, not this test's
	// subscriber, decides when pub reaches it again. No fault follows the
	// heal, so an unavailable Emit here is one that failed fast, sending
	// nothing: retrying it cannot deliver "after" twice.
	n, err := pub.Emit(ctx, chans[pc.Addr()], "after")
	for errors.Is(err, ErrServerUnavailable) && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
		n, err = pub.Emit(ctx, chans[pc.Addr()], "after")
	}
	require.NoError(t, err)
	require.Equal(t, 1, n)
	s, err = next(2 * time.Second)
	require.NoError(t, err)
	require.Equal(t, "after", s.Payload)
}

// Stats with one of three servers blackholed returns, within its context,
// the State of the two others and an error naming the third; Snapshot
// counts per server: the partitioned server's leases, lost once its
// connections are reset, are its losses only, and the others' leases stay
// held and are released at Close.
func TestMultiServerStatsAndSnapshotPerServer(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	a, b, pc, c := threeServersOneProxied(t)
	per := map[string][]handle{}
	for i := 0; len(per[a.Addr()]) < 4 || len(per[b.Addr()]) < 4 || len(per[pc.Addr()]) < 4; i++ {
		var h handle
		var err error
		if i%2 == 0 {
			h, err = c.Lock(ctx, "k"+strconv.Itoa(i))
		} else {
			h, err = c.Semaphore(ctx, "k"+strconv.Itoa(i), 3)
		}
		require.NoError(t, err)
		per[h.Server()] = append(per[h.Server()], h)
	}
	ci := c.serverIndex(pc.Addr())
	pc.Blackhole(true)
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	var st Stats
	var err error
	d := timed(func() { st, err = c.Stats(sctx) })
	cancel()
	t.Logf("Stats: %v after %v", err, d)
	require.Error(t, err)
	require.Less(t, d, time.Second)
	for i, s := range st.Servers {
		require.Equal(t, c.Servers()[i], s.Addr)
		if i == ci {
			require.Nil(t, s.State)
			var e *Error
			require.ErrorAs(t, s.Err, &e)
			require.Equal(t, pc.Addr(), e.Server)
			require.ErrorIs(t, s.Err, context.DeadlineExceeded)
		} else {
			require.NoError(t, s.Err)
			require.NotNil(t, s.State)
		}
	}
	pc.RefuseNew(true)
	pc.ResetAll()
	pc.Blackhole(false)
	for _, h := range per[pc.Addr()] {
		select {
		case <-h.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("lease on the reset server not lost")
		}
		require.ErrorIs(t, h.Err(), ErrLockLost)
	}
	snap := c.Snapshot()
	n := int64(len(per[pc.Addr()]))
	for i, s := range snap.Servers {
		t.Logf("%s: held %d releases %d losses %d", s.Addr, s.LeasesHeld, s.Releases, s.Losses)
		if i == ci {
			require.Equal(t, 0, s.LeasesHeld)
			require.Equal(t, n, s.Losses)
		} else {
			require.Equal(t, len(per[s.Addr]), s.LeasesHeld)
			require.Zero(t, s.Losses)
		}
	}
	require.Equal(t, n, snap.Lost)
	require.Equal(t, len(per[a.Addr()])+len(per[b.Addr()]), snap.Held)
	require.NoError(t, c.Close())
	snap = c.Snapshot()
	require.Equal(t, int64(len(per[a.Addr()])+len(per[b.Addr()])), snap.Released)
	require.Equal(t, n, snap.Lost)
	require.Zero(t, heldTotal(a)+heldTotal(b))
}

// Queued tickets on two servers; the connections of one are cut (a
// partition that killed them): its ticket's Wait fails promptly with an
// error naming the server and matching ErrServerUnavailable; the other
// server's ticket is granted when its holder releases.
func TestMultiServerTicketsWhenOneServerIsCut(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	a, b, pc, c := threeServersOneProxied(t)
	other := newClient(t, []string{a.Addr(), b.Addr(), pc.Addr()})
	ka, kc := keyOn(t, c, a.Addr(), "ta"), keyOn(t, c, pc.Addr(), "tc")
	la, err := other.Lock(ctx, ka)
	require.NoError(t, err)
	_, err = other.Lock(ctx, kc)
	require.NoError(t, err)
	ta, err := c.Enqueue(ctx, ka)
	require.NoError(t, err)
	tc, err := c.Enqueue(ctx, kc)
	require.NoError(t, err)
	waitC := make(chan error, 1)
	go func() { _, err := tc.Wait(ctx); waitC <- err }()
	time.Sleep(100 * time.Millisecond)
	pc.Blackhole(true)
	pc.ResetAll()
	pc.Blackhole(false)
	select {
	case err := <-waitC:
		t.Logf("wait on cut server: %v", err)
		require.ErrorIs(t, err, ErrServerUnavailable)
		var e *Error
		require.ErrorAs(t, err, &e)
		require.Equal(t, pc.Addr(), e.Server)
	case <-time.After(5 * time.Second):
		t.Fatal("Wait on the cut server still blocked")
	}
	require.NoError(t, tc.Cancel())
	require.NoError(t, la.Release(ctx))
	l, err := ta.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, a.Addr(), l.Server())
	require.NoError(t, l.Release(ctx))
}

// A ticket queued (not waited for) on a server whose connections are then
// cut: a later Wait fails at once rather than waiting for its ctx.
func TestMultiServerQueuedTicketOnCutServerWaitFailsFast(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	a, b, pc, c := threeServersOneProxied(t)
	other := newClient(t, []string{a.Addr(), b.Addr(), pc.Addr()})
	kc := keyOn(t, c, pc.Addr(), "tq")
	_, err := other.Lock(ctx, kc)
	require.NoError(t, err)
	tc, err := c.Enqueue(ctx, kc)
	require.NoError(t, err)
	pc.Blackhole(true)
	pc.ResetAll()
	pc.Blackhole(false)
	time.Sleep(200 * time.Millisecond)
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var werr error
	d := timed(func() { _, werr = tc.Wait(wctx) })
	t.Logf("Wait: %v after %v", werr, d)
	require.ErrorIs(t, werr, ErrServerUnavailable)
	require.Less(t, d, time.Second)
}
