package pool

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// SettleLanes waits for an answer being delivered, not only for answers
// not yet read: the delivery of a grant whose caller gave up queues its
// release on the lane (releaseAbandoned), and a late callback may send one
// aside. It returned in between — the reader had already counted the
// answer as in — and Close then closed the lane before the release went
// out: a grant held by nobody on a server with auto-release off. A late
// callback that blocks holds the delivery open here.
func TestSettleLanesWaitsForADeliveryInProgress(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	lane, _ := laneOf(t, p)
	resume := srv.Stall(0)
	entered, hold := make(chan struct{}), make(chan struct{})
	var letGo sync.Once
	t.Cleanup(func() { letGo.Do(func() { close(hold) }) }) // before the pool's Close
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the caller has given up: the answer goes to late
	_, answered, err := lane.Request(ctx, wire.Request{Cmd: wire.CmdPing}, func(int, wire.Reply, error) {
		close(entered)
		<-hold
	})
	require.False(t, answered)
	require.ErrorIs(t, err, context.Canceled)
	resume()
	select {
	case <-entered:
	case <-time.After(wait):
		t.Fatal("the answer was never delivered")
	}
	settled := make(chan struct{})
	go func() {
		defer close(settled)
		p.SettleLanes(time.Now().Add(wait))
	}()
	select {
	case <-settled:
		t.Fatal("SettleLanes returned while the lane's reader was delivering an answer")
	case <-time.After(100 * time.Millisecond):
	}
	letGo.Do(func() { close(hold) })
	select {
	case <-settled:
	case <-time.After(wait):
		t.Fatal("SettleLanes did not return once the delivery was done")
	}
	assert.Zero(t, lane.c.delivering.Load())
}
