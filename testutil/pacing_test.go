package testutil

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pipelineWrites sends n pings in one write and returns how many socket
// writes the server needed to answer them.
func pipelineWrites(t *testing.T, srv *Server, n int) int64 {
	t.Helper()
	c := dialSrv(t, srv)
	c.ping() // the connection is up and idle: nothing else is being written
	before := srv.writes.Load()
	c.write(strings.Repeat("ping\n_\n\n", n))
	for range n {
		c.expect("ok")
	}
	return srv.writes.Load() - before
}

func TestReplyPerWriteAnswersAPipelinedBatchOneWriteAtATime(t *testing.T) {
	t.Parallel()
	srv := newServer(t, Config{ReplyPerWrite: true})
	assert.EqualValues(t, 16, pipelineWrites(t, srv, 16))
}

// The default pacing coalesces the answers to a batch that arrived in one
// segment; this is what makes the counter above a real check.
func TestDefaultPacingCoalescesAPipelinedBatch(t *testing.T) {
	t.Parallel()
	srv := newServer(t, Config{})
	assert.Less(t, pipelineWrites(t, srv, 16), int64(16))
}

// A line longer than the write buffer still leaves in one write.
func TestReplyPerWriteWritesALongStatsReplyInOneWrite(t *testing.T) {
	t.Parallel()
	srv := newServer(t, Config{ReplyPerWrite: true, MaxLocks: -1})
	c := dialSrv(t, srv)
	for i := range 64 {
		c.lock(fmt.Sprintf("%s-%03d", strings.Repeat("k", 100), i), "0", 33)
	}
	before := srv.writes.Load()
	c.send("stats", "_", "", "ping", "_", "")
	line := c.expectPrefix("ok {")
	require.Greater(t, len(line), readBufSize, "the stats reply must not fit the write buffer")
	c.expect("ok")
	assert.EqualValues(t, 2, srv.writes.Load()-before)
}

// Signal pushes queued together leave one by one as well.
func TestReplyPerWriteWritesEveryPushOnItsOwn(t *testing.T) {
	t.Parallel()
	srv := newServer(t, Config{ReplyPerWrite: true})
	listener := dialSrv(t, srv)
	require.Equal(t, "ok", listener.req("listen", "ev.>", ""))
	pub := dialSrv(t, srv)
	pub.ping()
	const n = 10
	before := srv.writes.Load()
	pub.write(strings.Repeat("signal\nev.a\npayload\n", n))
	for range n {
		pub.expect("ok 1")
	}
	for range n {
		listener.expect("sig ev.a payload")
	}
	assert.EqualValues(t, 2*n, srv.writes.Load()-before, "n replies and n pushes")
}
