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
	rec := newBrokenRecorder()
	// The keepalive breaks a connection whose replies make no progress
	// for two intervals: 2 s, far more than the stall below lasts.
	p := newPool(t, Config{Addr: srv.Addr(), KeepAlive: time.Second, OnConnBroken: rec.hook})

	h, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	// The server answers nothing meanwhile: the ping stays unanswered.
	resume := srv.Stall(0)
	defer resume()
	require.Eventually(t, func() bool { return p.Stats().Pings > 0 }, wait, time.Millisecond, "a keepalive ping")
	require.Greater(t, h.c.inflight.Load(), int32(0), "the ping is unanswered")
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
	resume()
	h2, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	r, err := h2.Do(ctxWait(t), lockReq("after-ping"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	h2.Release()
}
