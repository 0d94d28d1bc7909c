package dflock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// v1.10 has no ping (it answers `error`, which still resets the idle timer),
// no separate semaphore namespace and no signals; everything else works.
func TestWorksAgainstV1_10(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	const readTimeout = time.Second
	srv := newServer(t, testutil.Config{Version: testutil.V1_10, ReadTimeout: readTimeout, Clock: clk})
	cc := &connCounter{}
	// The keepalive only paces the writes the steps wait for: short, but
	// not so short that a loaded machine (the server runs in this process)
	// misses 2×KeepAlive and cuts a connection.
	c := newClient(t, addrsOf(srv), WithKeepAlive(200*time.Millisecond), WithDialer(cc.dial))
	ctx := testCtx(t)

	l, err := c.Lock(ctx, "v110", LeaseTTL(30*time.Second))
	require.NoError(t, err)
	_, err = c.TryLock(ctx, "v110")
	require.ErrorIs(t, err, ErrNotAcquired)
	s, err := c.Semaphore(ctx, "v110-sem", 2)
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "v110-2p")
	require.NoError(t, err)
	require.True(t, tk.Acquired())
	tl, err := tk.Wait(ctx)
	require.NoError(t, err)

	// Three read timeouts pass on the server's clock, in steps of under half
	// of one, each after every connection has written again: keepalive
	// renewals and pings (answered `error`) keep every connection and lease
	// alive.
	for range 8 {
		cc.awaitEveryOpenConnWrites(t, ctx)
		clk.Advance(readTimeout/2 - 100*time.Millisecond)
	}
	cc.awaitEveryOpenConnWrites(t, ctx)
	for _, h := range []handle{l, s, tl} {
		require.NoError(t, h.Err(), "lease %q lost", h.Key())
	}
	assert.True(t, lockHeld(srv, "v110"))
	st, err := c.Stats(ctx)
	require.NoError(t, err)
	require.NotNil(t, st.Servers[0].State)
	assert.Zero(t, st.Servers[0].Pool.Broken)
	assert.Nil(t, st.Servers[0].State.SignalChannels)

	for _, h := range []handle{l, s, tl} {
		require.NoError(t, h.Release(ctx))
	}
	assert.Zero(t, heldTotal(srv))
}

// v2.1 tokens carry a fence: with WithFencing, Fence is exposed and strictly
// increases across grants of one key, whichever path granted them.
func TestFencesFromV2_1TokensIncreaseStrictly(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{Version: testutil.V2_1})
	c := newClient(t, addrsOf(srv), WithFencing())
	other := newClient(t, addrsOf(srv), WithFencing())
	ctx := testCtx(t)

	var fences []uint64
	record := func(l *Lock) {
		f, ok := l.Fence()
		require.True(t, ok, "no fence from a v2.1 token")
		fences = append(fences, f)
	}
	for range 3 {
		l, err := c.Lock(ctx, "fenced")
		require.NoError(t, err)
		record(l)
		require.NoError(t, l.Release(ctx))
	}
	// A grant after waiting (wait pool) and a two-phase grant.
	h, err := other.Lock(ctx, "fenced")
	require.NoError(t, err)
	record(h)
	got := make(chan *Lock, 1)
	go func() {
		l, err := c.Lock(ctx, "fenced")
		assert.NoError(t, err)
		got <- l
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "fenced") == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, h.Release(ctx))
	w := <-got
	require.NotNil(t, w)
	record(w)
	require.NoError(t, w.Release(ctx))
	tk, err := c.Enqueue(ctx, "fenced")
	require.NoError(t, err)
	tl, err := tk.Wait(ctx)
	require.NoError(t, err)
	record(tl)
	require.NoError(t, tl.Release(ctx))

	for i := 1; i < len(fences); i++ {
		assert.Greater(t, fences[i], fences[i-1], "fences %v are not strictly increasing", fences)
	}

	// Without WithFencing the token is opaque.
	plain := newClient(t, addrsOf(srv))
	l, err := plain.Lock(ctx, "fenced")
	require.NoError(t, err)
	_, ok := l.Fence()
	assert.False(t, ok)
	require.NoError(t, l.Release(ctx))
}

// WithFencing against a server older than v1.14 (no ping), whose tokens are
// random 32-hex strings: a fence read from them would order nothing, and
// Fence reported one anyway (ok, random and not increasing; found by review
// against a v1.10.0 binary). No fence now, on any path.
func TestNoFenceFromServersWithoutPing(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{Version: testutil.V1_10})
	c := newClient(t, addrsOf(srv), WithFencing())
	other := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	noFence := func(name string, f func() (uint64, bool)) {
		fence, ok := f()
		assert.False(t, ok, "%s: fence %d from a v1.10 token", name, fence)
	}
	l, err := c.Lock(ctx, "unfenced") // on the lane
	require.NoError(t, err)
	noFence("lane grant", l.Fence)
	got := make(chan *Lock, 1)
	go func() {
		w, err := c.Lock(ctx, "unfenced") // on a wait-pool connection
		assert.NoError(t, err)
		got <- w
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "unfenced") == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, l.Release(ctx))
	w := <-got
	require.NotNil(t, w)
	noFence("wait-pool grant", w.Fence)
	require.NoError(t, w.Release(ctx))
	s, err := c.Semaphore(ctx, "unfenced-sem", 2)
	require.NoError(t, err)
	noFence("semaphore slot", s.Fence)
	require.NoError(t, s.Release(ctx))
	h, err := other.Lock(ctx, "unfenced")
	require.NoError(t, err)
	tk, err := c.Enqueue(ctx, "unfenced")
	require.NoError(t, err)
	require.NoError(t, h.Release(ctx))
	tl, err := tk.Wait(ctx)
	require.NoError(t, err)
	noFence("two-phase grant", tl.Fence)
	require.NoError(t, tl.Release(ctx))
}
