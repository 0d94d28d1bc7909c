package soak

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// A fault of a kind that acts on existing connections must not be
// injected while no server has one for it to act on: checkFaultCoverage
// fails the phase if that kind's only injections found none, so pickNode
// waits a little for a connection. The soak's v2.1 phase dials nothing before its workers' first
// calls (dflock.New dials nothing; that phase has no listeners), so its
// first fault, drawn at an exponential gap (P(gap < 5 ms) ≈ 0.4 % with a
// 1.2 s mean), can come before any connection exists; in a CI phase of
// 8 s most kinds are injected once, so the phase then fails (invariant
// "faults") whatever the SDK does. The window is narrow on an idle
// machine (seed 12530, a first reset at 0.11 ms, found 2 connections;
// seed 17680, at 0.033 ms, found none, twice out of two runs) and widens
// when the workers' goroutines are slow to run.
//
// This runs the soak's faulter with the v2.1 phase's seed of
// -soak.seed=17680 (whose first gap is 0.033 ms and first kind "blackhole +
// reset") for a 3 s phase, with a Client that starts calling on every
// server as the phase starts, as the soak's workers do: the first fault
// comes before the Client's first connection, and the phase fails.
// (`go test -run '^TestSoak$' ./testutil/soak -soak=20s -soak.seed=17680`
// fails the same way: `(faults) "blackhole + reset" was injected 1 time(s)
// and never found a connection to act on`.) A faulter that, for a kind
// acting on connections, waits a little for one to exist (or keeps the
// kind for later in the round) passes.
func TestFaulterWaitsForAConnectionBeforeAFaultThatNeedsOne(t *testing.T) {
	cl, err := startCluster(numServers, testutil.V2_1)
	require.NoError(t, err)
	defer cl.close()
	const dur = 3 * time.Second
	f := newFaulter(cl, 17680+1, 1200*time.Millisecond, nil) // the v2.1 phase of -soak.seed=17680
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()

	// A Client that, from the phase's start (as the soak's workers do),
	// keeps a connection on every server
	// (one goroutine per server, so that a fault on one holds up no other).
	c, err := dflock.New(cl.addrs(), dflock.WithKeepAlive(clientKeepAlive), dflock.WithLeaseTTL(serverLease))
	require.NoError(t, err)
	defer c.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for node := range cl.nodes {
		key := ""
		for i := 0; key == ""; i++ {
			if k := fmt.Sprintf("cov.%d", i); cl.index(c.ServerFor(k)) == node {
				key = k
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
				cctx, ccancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				if l, err := c.TryLock(cctx, key); err == nil {
					_ = l.Release(cctx)
				}
				ccancel()
			}
		}()
	}
	begin := time.Now()
	f.run(ctx)
	close(stop)
	wg.Wait()
	require.Empty(t, f.errs)

	res := &phaseResult{phase: phase{duration: dur}, v: newVerdict()}
	checkFaultCoverage(res, f, nil, cl)
	var early []string
	for _, w := range f.windows {
		if w.kind.needsConns() && w.effect == 0 {
			early = append(early, fmt.Sprintf("%s at %s", w.kind, w.start.Sub(begin).Round(time.Millisecond)))
		}
	}
	assert.Zero(t, res.v.counts["faults"], "the phase failed on faults injected while no server had a connection (%q): %v",
		early, res.v.examples["faults"])
}
