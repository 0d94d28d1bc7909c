package pool

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// the Lifetime ends (endWaits) during a stall with a pruned backlog;
// afterwards the lane (Lane ignores the Lifetime) queues more batches, so
// prunes run with stateEnded calls in the queue. Everything drains, and
// batch replies are their own.
func TestLanePruneAcrossLifetimeEnd(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{MaxLocks: 1 << 22})
	life, endLife := context.WithCancel(context.Background())
	defer endLife()
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, KeepAlive: time.Minute, Lifetime: life})
	ctx := ctxWait(t)
	lane, err := p.Lane(ctx)
	require.NoError(t, err)
	_, _, err = p.Do(ctx, lockReq("warm"))
	require.NoError(t, err)
	resume := srv.Stall(0)
	defer resume()
	var wg, waiting sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1500 {
				if i%100 == 50 {
					waiting.Go(func() {
						r, _, err := p.Do(context.Background(), lockReq(fmt.Sprintf("w-%d-%d", g, i)))
						if err == nil {
							assert.Equal(t, wire.StatusOK, r.Status)
						}
					})
				}
				cctx, c := context.WithTimeout(ctx, 50*time.Microsecond)
				_, _, _ = p.Do(cctx, lockReq(fmt.Sprintf("a-%d-%d", g, i)))
				c()
			}
		})
	}
	wg.Wait()
	endLife()
	waiting.Wait() // ended by the Lifetime
	before := lanePruned(p)
	type res struct {
		i int
		r wire.Reply
		e error
	}
	results := make(chan res, 5000)
	for b := range 50 {
		reqs := make([]wire.Request, 100)
		for i := range reqs {
			reqs[i] = lockReq(fmt.Sprintf("b-%d-%d", b, i))
		}
		lane.SendBatch(reqs, func(i int, r wire.Reply, err error) { results <- res{i, r, err} })
	}
	t.Logf("pruned %d before the Lifetime's end, %d after", before, lanePruned(p)-before)
	resume()
	for range 5000 {
		select {
		case x := <-results:
			if assert.NoError(t, x.e) {
				assert.Equal(t, wire.StatusOK, x.r.Status)
			}
		case <-time.After(wait):
			t.Fatal("batch replies missing")
		}
	}
	require.Eventually(t, func() bool { u, _ := laneBacklog(p); return u == 0 && laneInflight(p) == 0 }, wait, time.Millisecond)
}
