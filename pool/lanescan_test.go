package pool

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A caller whose lane dial failed while another slot's dial was still in
// progress gets that slot's connection, also when the dial finishes between
// pickLane's lock-free scan and kickLaneDials: the kick saw the slot neither
// dialling nor empty, and the caller failed with the other slot's dial error
// though a healthy lane connection was at hand. CI caught it once in
// TestStatsUpStaysAfterCloseWithServerMarkedDownButLaneHealthy (one slot's
// dial refused over MaxConnections, the other's accepted); here the first
// dial fails and the second finishes exactly inside the window.
//
// Which slot's dial Do waits on is up to the scheduler; the window is
// reached only when it waits on the failing one, so the scenario repeats
// until it has been reached a few times.
func TestLaneDialFinishingDuringScanServesTheCaller(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	const want = 5
	hits := 0
	for run := 0; hits < want; run++ {
		require.Less(t, run, 400, "the window was reached only %d times", hits)
		if laneScanRace(t, srv) {
			hits++
		}
	}
}

// laneScanRace runs the scenario once and reports whether the window was
// reached: the failed dial's caller scanned while the other dial was still
// held (so the scan saw no healthy lane), and that dial finished before
// the kick.
func laneScanRace(t *testing.T, srv *testutil.Server) bool {
	var calls atomic.Int32
	var holding atomic.Bool // the second dial waits for release
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	var d net.Dialer
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		switch calls.Add(1) {
		case 1:
			return nil, errors.New("refused (test)")
		case 2:
			// Held until the failed dial's caller is in the window; if Do
			// waits on this dial instead, it is let go after a moment,
			// and the window is not reached this time.
			holding.Store(true)
			select {
			case <-release:
			case <-time.After(20 * time.Millisecond):
			}
			holding.Store(false)
		}
		return d.DialContext(ctx, network, addr)
	}
	p, err := New(Config{Addr: srv.Addr(), LaneConns: 2, Dial: dial, DialTimeout: wait})
	require.NoError(t, err)
	defer p.Close()
	var reached atomic.Bool
	p.afterLaneScan = func() {
		if !holding.Load() || reached.Load() {
			return // no dial held now: the scan may have seen it finished
		}
		reached.Store(true)
		open()
		require.Eventually(t, func() bool {
			for i := range p.lanes {
				if l := p.lanes[i].conn.Load(); l != nil && l.c.errp.Load() == nil {
					return true
				}
			}
			return false
		}, wait, 100*time.Microsecond, "the held dial did not finish")
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	r, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	open()
	require.NoError(t, err, "Do failed with a lane connection healthy (window reached: %v)", reached.Load())
	require.Equal(t, wire.StatusOK, r.Status)
	return reached.Load()
}

// A caller that kicked the lane dials is served by the first of them to
// succeed, not held for another that hangs (a dropped SYN, a server slow to
// accept): it used to wait for one dial in particular, the last slot's, and
// with that one hanging it waited out the dial timeout with a healthy lane
// connection at hand. Which slot's dial hangs is up to the scheduler, so the
// scenario runs a few times on fresh pools.
func TestLaneCallerTakesTheFirstLaneDialToSucceed(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	for range 8 {
		var calls atomic.Int32
		var d net.Dialer
		dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
			if calls.Add(1) == 1 {
				<-ctx.Done() // hangs until the pool closes
				return nil, ctx.Err()
			}
			return d.DialContext(ctx, network, addr)
		}
		p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 2, Dial: dial, DialTimeout: time.Hour})
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		r, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
		cancel()
		require.NoError(t, err, "the caller waited for the hanging dial")
		require.Equal(t, wire.StatusOK, r.Status)
		p.Close()
	}
}
