//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

// settle and awaitReading (turn_test.go) need callers that read their own
// replies, which only these systems have.

package pool

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A lane connection writes nothing while a request it wrote is unanswered
// (mayWriteLocked; its pace holds back until measured otherwise): requests sent meanwhile are held back and leave in one
// write once that reply is read — whether its caller reads it or the reader
// goroutine does — and every one of them is answered.
func TestLaneHoldsRequestsBackWhileOneIsUnanswered(t *testing.T) {
	for _, firstReadBy := range []string{"its caller", "the reader"} {
		t.Run(firstReadBy, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{})
			p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
			lane, c := laneOf(t, p)
			if firstReadBy == "its caller" {
				settle(t, c)
			}
			c.mu.Lock()
			// The round trips so far had no work to weigh against: start
			// measuring afresh, holding back.
			c.pace = batchPace{}
			c.mu.Unlock()
			resume := srv.Stall(0)
			defer resume()

			var first <-chan doResult
			batch := make(chan error, 1)
			if firstReadBy == "its caller" {
				first = goDo(ctxWait(t), p, lockReq("first"))
				awaitReading(t, c)
			} else {
				// A batch's reply is always the reader's to read.
				lane.SendBatch([]wire.Request{{Cmd: wire.CmdPing}}, func(_ int, _ wire.Reply, err error) { batch <- err })
			}
			require.Eventually(t, func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				return c.onWireLocked() == 1 && !c.flushing
			}, wait, time.Millisecond, "the first request is written")
			// Counted only now: a caller takes the turn to read its reply
			// (awaitReading) before its inline write.
			writes := c.nwrite.Load()

			second := goDo(ctxWait(t), p, lockReq("second"))
			third := goDo(ctxWait(t), p, lockReq("third"))
			require.Eventually(t, func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				return c.q.n == 3
			}, wait, time.Millisecond, "the later requests are queued")
			c.mu.Lock()
			onWire, held, flushing := c.onWireLocked(), c.bufN, c.flushing
			c.mu.Unlock()
			assert.Equal(t, 1, onWire, "requests written")
			assert.Equal(t, 2, held, "requests held back")
			assert.False(t, flushing, "no flush waits on the server")
			assert.Equal(t, writes, c.nwrite.Load(), "writes while the first request is unanswered")

			resume()
			if first != nil {
				res := result(t, first, "the first request")
				require.NoError(t, res.err)
				assert.Equal(t, wire.StatusOK, res.r.Status)
			} else {
				require.NoError(t, result(t, batch, "the batch"))
			}
			for _, ch := range []<-chan doResult{second, third} {
				res := result(t, ch, "a held-back request")
				require.NoError(t, res.err)
				assert.Equal(t, wire.StatusOK, res.r.Status)
			}
			assert.Equal(t, writes+1, c.nwrite.Load(), "the held-back requests leave in one write")
			c.mu.Lock()
			assert.Zero(t, c.onWireLocked())
			assert.Zero(t, c.bufN)
			c.mu.Unlock()
		})
	}
}

// Through a long round trip the lane pipelines: once a measured batch found
// the wait for its first reply long against the server's work, requests
// sent while one is unanswered are written at once, and every one is
// answered.
func TestLanePipelinesThroughALongRoundTrip(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	p := newPool(t, Config{Addr: px.Addr(), LaneConns: 1})
	_, c := laneOf(t, p)
	px.SetLatency(20 * time.Millisecond)
	// One request alone: a batch with a 40 ms wait and no work to weigh.
	// (Up to five: on a loaded machine one batch's measure may be off, as
	// it was once in a background loop beside make test.)
	pipelining := false
	for range 5 {
		_, _, err = p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
		require.NoError(t, err)
		c.mu.Lock()
		pipelining = c.pace.pipelining(c.p.now())
		c.mu.Unlock()
		if pipelining {
			break
		}
	}
	require.True(t, pipelining, "the lane pipelines after a long round trip")
	// The decision lasts 32 round trips; on a loaded machine the rest of
	// the test may take longer, which says nothing about pipelining.
	c.mu.Lock()
	c.pace.pipeUntil = math.MaxInt64
	c.mu.Unlock()
	// No reply until both are sent, however slowly this goroutine runs.
	resume := srv.Stall(0)
	defer resume()

	first := goDo(ctxWait(t), p, lockReq("first"))
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.onWireLocked() == 1
	}, wait, time.Millisecond, "the first request is written")
	second := goDo(ctxWait(t), p, lockReq("second"))
	// Held back, the second would be written only after the first's reply,
	// with one request on the wire.
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.onWireLocked() == 2
	}, wait, time.Millisecond, "both written before the first is answered")
	resume()
	for _, ch := range []<-chan doResult{first, second} {
		res := result(t, ch, "a pipelined request")
		require.NoError(t, res.err)
		assert.Equal(t, wire.StatusOK, res.r.Status)
	}
}
