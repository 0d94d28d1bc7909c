package pool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// README ("dead connection: a ping unanswered for 2 × keepalive"),
// dflock.WithKeepAlive's doc ("a connection whose ping is not answered
// within two keepalives") and errNoReply ("no reply for 2×KeepAlive") all
// promise that a stalled server is found two keepalives after the ping.
// Counting bytes read as progress (TestQuerySlowLargeReplyIsNotAStall)
// first compared wc.BytesRead() with the count seen at the keepalive's last
// look while requests were pending: the bytes of every reply read since
// (the previous ping's answer, any answered request) counted as progress at
// the first look after the next request was queued, so an ordinary stall
// was found three keepalives after the ping, not two, on every connection
// (found by review of that change).
func TestStalledServerFoundTwoKeepalivesAfterThePing(t *testing.T) {
	const ka = 400 * time.Millisecond
	srv := newServer(t, testutil.Config{})
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), KeepAlive: ka, LaneConns: 1, OnConnBroken: rec.hook})
	ctx := ctxWait(t)
	_, _, err := p.Do(ctx, lockReq("k"))
	require.NoError(t, err)
	// Let one keepalive ping be answered (its reply bytes are read while
	// the queue is empty at the keepalive's looks).
	pings := p.Stats().Pings
	require.Eventually(t, func() bool { return p.Stats().Pings > pings }, wait, time.Millisecond)
	time.Sleep(ka / 4) // its answer is read
	resume := srv.Stall(0)
	defer resume()
	pings = p.Stats().Pings
	require.Eventually(t, func() bool { return p.Stats().Pings > pings }, wait, time.Millisecond)
	pinged := time.Now()
	ev := rec.next(t)
	took := time.Since(pinged)
	t.Logf("broken %v after the unanswered ping: %v", took, ev.err)
	require.Less(t, took, 2*ka+ka/2, "a ping unanswered for 2 × keepalive breaks the connection")
}
