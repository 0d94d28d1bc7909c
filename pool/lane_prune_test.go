package pool

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// laneBacklog returns the unwritten requests of p's lane connections and
// the largest ring among them.
func laneBacklog(p *Pool) (unwritten, ring int) {
	for i := range p.lanes {
		if l := p.lanes[i].conn.Load(); l != nil {
			l.c.mu.Lock()
			unwritten += l.c.bufN
			ring = max(ring, len(l.c.q.buf))
			l.c.mu.Unlock()
		}
	}
	return unwritten, ring
}

func lanePruned(p *Pool) (n int64) {
	for i := range p.lanes {
		if l := p.lanes[i].conn.Load(); l != nil {
			n += l.c.pruned.Load()
		}
	}
	return n
}

// While the server makes no progress, callers that give up at once (short
// deadlines, a busy service's per-request keys) do not grow the lane's
// queue without bound, and their requests are not sent when it resumes.
// The callers still waiting among them get their own replies, in order:
// dropping requests from the middle of the queue desynchronises nothing.
func TestLaneDropsAbandonedRequestsWhileTheServerStalls(t *testing.T) {
	t.Parallel()
	// No lock limit: up to 4·minPrune given-up tries may reach the
	// server (asserted below), each granted, and a limit would refuse the
	// waiters' free keys (error_max_locks, once, when 1,400 got through).
	srv := newServer(t, testutil.Config{MaxLocks: -1})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	// Longer than wait: tens of thousands of calls under -race on a
	// loaded machine can take more than that before the waiters' turn.
	ctx, cancel := context.WithTimeout(context.Background(), 4*wait)
	t.Cleanup(cancel)
	r, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdLock, Key: "held", Lease: 30})
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)

	resume := srv.Stall(time.Minute)
	t.Cleanup(resume)
	const (
		givers    = 8
		perGiver  = 4000
		waiters   = 40
		firstWait = perGiver / 4 // a waiter starts after this many give-ups of its giver
	)
	var abandoned atomic.Int64
	type outcome struct {
		i   int
		r   wire.Reply
		err error
	}
	results := make(chan outcome, waiters)
	var gave, waiting sync.WaitGroup
	for g := range givers {
		gave.Go(func() {
			for i := range perGiver {
				if i == firstWait && g < waiters {
					// Waiters are queued among the give-ups: every
					// prune has live requests around what it drops.
					for w := g; w < waiters; w += givers {
						waiting.Go(func() {
							key := fmt.Sprintf("free-%d", w)
							if w%2 == 0 {
								key = "held" // refused: a misdelivered reply shows
							}
							r, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdLock, Key: key, Lease: 30})
							results <- outcome{w, r, err}
						})
					}
				}
				cctx, cancel := context.WithTimeout(ctx, 50*time.Microsecond)
				_, _, err := p.Do(cctx, wire.Request{Cmd: wire.CmdLock, Key: fmt.Sprintf("gave-up-%d-%d", g, i), Lease: 30})
				cancel()
				if err != nil {
					abandoned.Add(1)
				}
			}
		})
	}
	gave.Wait()
	unwritten, _ := laneBacklog(p)
	t.Logf("stalled: %d callers gave up, %d requests unwritten, %d dropped", abandoned.Load(), unwritten, lanePruned(p))
	require.Greater(t, abandoned.Load(), int64(givers*perGiver/2), "the callers did not give up: the test proves nothing")
	// What is left: the waiters, and give-ups since the last prune (it
	// looks again once the backlog doubles: under 2·minPrune).
	assert.Less(t, unwritten, 2*minPrune+waiters, "the lane queued the requests of callers that gave up")

	resume()
	waiting.Wait()
	close(results)
	for o := range results {
		if !assert.NoError(t, o.err, "waiter %d", o.i) {
			continue
		}
		if o.i%2 == 0 {
			assert.Equal(t, wire.StatusTimeout, o.r.Status, "waiter %d on a held key got %+v: a reply meant for another request", o.i, o.r)
		} else {
			assert.Equal(t, wire.StatusOK, o.r.Status, "waiter %d on a free key got %+v", o.i, o.r)
		}
	}
	require.Eventually(t, func() bool { u, _ := laneBacklog(p); return u == 0 && laneInflight(p) == 0 }, wait, time.Millisecond)
	_, ring := laneBacklog(p)
	assert.LessOrEqual(t, ring, maxKeepCalls, "an idle lane keeps its backlog's ring")
	sent := srv.Stats().Requests["l"]
	t.Logf("the server received %d lock requests for %d calls", sent, givers*perGiver+waiters+1)
	assert.Less(t, sent, int64(1+waiters+4*minPrune), "the requests of callers that gave up reached the server")
}

// Releases sent by callers that gave up are never dropped, whether sent
// with Do or, as package dflock sends them, with Owner.Request: a lease
// whose release never left would stay held until its TTL. Tries given up
// on around them are.
func TestLaneKeepsAbandonedReleasesWhileTheServerStalls(t *testing.T) {
	t.Parallel()
	const n = 3 * minPrune
	srv := newServer(t, testutil.Config{DisableAutoRelease: true, MaxLocks: 4 * n})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 4*wait) // as above
	t.Cleanup(cancel)
	tokens := make([]string, n)
	for i := range n {
		r, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdLock, Key: fmt.Sprintf("k%d", i), Lease: 30})
		require.NoError(t, err)
		require.Equal(t, wire.StatusOK, r.Status)
		tokens[i] = r.Token
	}
	lane, err := p.Lane(ctx)
	require.NoError(t, err)
	resume := srv.Stall(time.Minute)
	t.Cleanup(resume)
	// In rounds: each round's calls are all queued before they give up
	// (a Do whose ctx has ended before it queues sends nothing at all).
	const round = 64
	for base := 0; base < n; base += round {
		queued := laneQueued(p)
		cctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for i := base; i < base+round; i++ {
			rel := wire.ReleaseRequest(fmt.Sprintf("k%d", i), tokens[i], false)
			wg.Go(func() {
				if i%2 == 0 {
					_, _, err := p.Do(cctx, rel)
					assert.ErrorIs(t, err, context.Canceled)
				} else {
					_, _, _ = lane.Request(cctx, rel, func(int, wire.Reply, error) {})
				}
			})
			wg.Go(func() {
				_, _, err := p.Do(cctx, wire.Request{Cmd: wire.CmdLock, Key: fmt.Sprintf("x%d", i), Lease: 30})
				assert.ErrorIs(t, err, context.Canceled)
			})
		}
		require.Eventually(t, func() bool { return laneQueued(p)-queued >= 2*round }, wait, 100*time.Microsecond)
		cancel()
		wg.Wait()
	}
	require.Positive(t, lanePruned(p), "nothing was dropped: the test proves nothing")
	resume()
	if !assert.Eventually(t, func() bool { return len(srv.Stats().Locks) == 0 }, wait, 5*time.Millisecond,
		"a release given up on was dropped: keys still held") {
		locks := srv.Stats().Locks
		t.Logf("%d keys still held, e.g. %+v; dropped %d; server requests %v", len(locks), locks[:min(3, len(locks))], lanePruned(p), srv.Stats().Requests)
	}
	t.Logf("dropped %d of the %d tries given up on", lanePruned(p), n)
}

// laneQueued returns the requests queued on p's lane connections, written
// or not, plus those pruneAbandonedLocked dropped.
func laneQueued(p *Pool) (n int) {
	for i := range p.lanes {
		if l := p.lanes[i].conn.Load(); l != nil {
			l.c.mu.Lock()
			n += l.c.q.n
			l.c.mu.Unlock()
		}
	}
	return n + int(lanePruned(p))
}

func laneInflight(p *Pool) (n int32) {
	for i := range p.lanes {
		if l := p.lanes[i].conn.Load(); l != nil {
			n += l.c.inflight.Load()
		}
	}
	return n
}
