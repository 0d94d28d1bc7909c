package pool

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// Owner.Request with a context that has already ended hands its answer to
// late as a batch callback does, with index 0, as on every other path.
// (It once passed whatever index the recycled call carried from an earlier
// SendBatch. Found by review.) Under -race sync.Pool drops items at random,
// so the Request may get a fresh call and the check is weaker there: `make
// test` also runs it without -race (the allocs step).
func TestRequestLateIndexIsZero(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr()})
	o, err := p.Lane(ctxWait(t))
	require.NoError(t, err)

	ended, cancel := context.WithCancel(context.Background())
	cancel()
	ping := wire.Request{Cmd: wire.CmdPing}
	for round := 0; round < 200; round++ {
		reqs := make([]wire.Request, 8)
		for i := range reqs {
			reqs[i] = ping
		}
		done := make(chan struct{}, len(reqs))
		o.SendBatch(reqs, func(int, wire.Reply, error) { done <- struct{}{} })
		for range reqs {
			result(t, done, "batch")
		}
		idx := make(chan int, 1)
		_, answered, _ := o.Request(ended, ping, func(i int, _ wire.Reply, _ error) { idx <- i })
		require.False(t, answered)
		require.Equal(t, 0, result(t, idx, "late"), "round %d: late got a stale batch index", round)
	}
}
