package pool

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// burst acquires n wait-pool connections at once (so each is a new dial)
// and releases them all, leaving n idle.
func burst(t *testing.T, p *Pool, n int) {
	t.Helper()
	ctx := ctxWait(t)
	hs := make([]*Conn, n)
	for i := range hs {
		h, err := p.Acquire(ctx)
		require.NoError(t, err)
		hs[i] = h
	}
	for _, h := range hs {
		h.Release()
	}
}

// Regression (issue 10): idle wait-pool connections were never closed, so a
// burst left all of its connections open, and pinged, for good.
func TestIdleConnsFallBackToMaxIdle(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	rec := newBrokenRecorder()
	p := newPool(t, Config{
		Addr: srv.Addr(),
		// The janitor's period. Not shorter: a ping unanswered for two
		// periods breaks its connection, which a loaded one-CPU machine
		// can stall for tens of milliseconds, and a broken idle connection
		// is not one the idle limits closed.
		KeepAlive:       250 * time.Millisecond,
		MaxIdleConns:    3,
		MaxConnIdleTime: time.Hour,
		OnConnBroken:    rec.hook,
	})
	const n = 12
	burst(t, p, n)
	// The sweep hands the kept ones back before it closes the others.
	require.Eventually(t, func() bool { return p.Stats().IdleClosed == n-3 }, wait, 5*time.Millisecond)
	st := p.Stats()
	require.Equal(t, 3, st.IdleConns)
	require.Zero(t, st.Broken, "closing an idle connection is not a break")
	require.Eventually(t, func() bool { return srv.Stats().Connections == 3 }, wait, 5*time.Millisecond)
	select {
	case ev := <-rec.ch:
		t.Fatalf("OnConnBroken called for a closed idle connection: %v", ev.err)
	default:
	}

	// The ones kept are healthy and reused: no new dial.
	dials := p.Stats().Dials
	burst(t, p, 3)
	require.Equal(t, dials, p.Stats().Dials)
}

func TestIdleConnsClosedAfterMaxIdleTime(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{
		Addr:            srv.Addr(),
		KeepAlive:       250 * time.Millisecond, // see TestIdleConnsFallBackToMaxIdle
		LaneConns:       1,
		MaxIdleConns:    100,
		MaxConnIdleTime: 50 * time.Millisecond,
	})
	ctx := ctxWait(t)
	// A lane connection and an acquired one that holds a lease outlive
	// every idle time: only idle wait-pool connections are closed.
	_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	pinned, err := p.Acquire(ctx)
	require.NoError(t, err)
	r, err := pinned.Do(ctx, lockReq("k"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	pinned.Pin()

	const n = 10
	burst(t, p, n)
	require.Eventually(t, func() bool { return p.Stats().IdleClosed == n }, wait, 5*time.Millisecond)
	st := p.Stats()
	require.Zero(t, st.IdleConns)
	require.Equal(t, 1, st.LaneConns)
	require.Equal(t, 1, st.PinnedConns)
	require.Eventually(t, func() bool { return srv.Stats().Connections == 2 }, wait, 5*time.Millisecond, "lane + pinned")
	require.NoError(t, pinned.Err())
	require.NotZero(t, holder(srv, "k"))
	_, err = pinned.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	pinned.Unpin()
	pinned.Destroy()
}

func TestIdleConnsZeroKeepsNone(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), KeepAlive: 20 * time.Millisecond, MaxIdleConns: -1})
	burst(t, p, 4)
	require.Eventually(t, func() bool { return p.Stats().IdleConns == 0 }, wait, 5*time.Millisecond)
	require.Eventually(t, func() bool { return srv.Stats().Connections == 0 }, wait, 5*time.Millisecond)
	// The pool still works: a new acquire dials.
	h, err := p.Acquire(context.Background())
	require.NoError(t, err)
	h.Release()
}

func TestNewDefaultsIdleLimits(t *testing.T) {
	p := newPool(t, Config{Addr: "127.0.0.1:1"})
	require.Equal(t, int32(defaultMaxIdleConns), p.cfg.MaxIdleConns)
	require.Equal(t, defaultMaxConnIdleTime, p.cfg.MaxConnIdleTime)
	_, err := New(Config{Addr: "127.0.0.1:1", MaxConnIdleTime: -time.Second})
	require.Error(t, err)
}

// A wait-pool dial whose caller gave up completes in the background, and
// puddle puts the connection among the idle ones without a Release. It
// must expire like any other idle connection (it did not: nothing had
// counted its idle time, and the janitor pinged it for good).
func TestIdleConnDialledForCallerWhoLeftExpires(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	d := &heldDialer{}
	p := newPool(t, Config{Addr: srv.Addr(), Dial: d.dial, KeepAlive: 20 * time.Millisecond,
		MaxConnIdleTime: 50 * time.Millisecond})
	d.hold()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := p.Acquire(ctx); errc <- err }()
	require.Eventually(t, func() bool { return d.blocked.Load() == 1 }, wait, time.Millisecond)
	cancel() // the caller leaves; puddle goes on dialling
	require.ErrorIs(t, <-errc, context.Canceled)
	d.letGo()
	require.Eventually(t, func() bool { return p.Stats().IdleClosed == 1 }, wait, 5*time.Millisecond,
		"the connection dialled in the background never expired")
	require.Zero(t, p.Stats().IdleConns)
}
