package pool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A healthy acquisition released while the janitor's keepalive ping is on
// the wire goes back to the pool: the ping's reply is the reader's to read,
// ahead of the next user's. (Release once counted the ping as a reply
// pending for the caller and destroyed the connection: Stats.Broken rose
// and Config.OnConnBroken reported a break of a connection that never
// broke. Found by review.)
func TestReleaseDuringKeepalivePingKeepsConn(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: px.Addr(), KeepAlive: 300 * time.Millisecond, OnConnBroken: rec.hook})

	h, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	// A slow path: the ping is on the wire for a long while.
	px.SetLatency(100 * time.Millisecond)
	deadline := time.Now().Add(wait)
	for p.Stats().Pings == 0 {
		require.True(t, time.Now().Before(deadline), "no keepalive ping")
		time.Sleep(time.Millisecond)
	}
	require.Greater(t, h.c.inflight.Load(), int32(0), "ping should be in flight")
	h.Release() // the caller sent nothing: a healthy, unused connection

	s := p.Stats()
	require.Zero(t, s.Broken, "a healthy connection released while a keepalive ping was in flight was destroyed")
	require.Equal(t, 1, s.IdleConns)
	select {
	case ev := <-rec.ch:
		t.Fatalf("OnConnBroken(%v, %v) for a connection that did not break", ev.c, ev.err)
	default:
	}
	// The next user's request is answered on it, after the ping's reply.
	h2, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	r, err := h2.Do(ctxWait(t), lockReq("after-ping"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	h2.Release()
}
