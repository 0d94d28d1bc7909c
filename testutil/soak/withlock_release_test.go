package soak

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// Invariant (g), "a Release that returned nil was applied", skipped every
// WithLock: worker.withLock recorded no release outcome, so a WithLock that
// returned nil without its release reaching the server passed. This drives
// the soak's own worker.withLock against a real server until one WithLock
// ran fn and returned, and checks that its belief carries what (g) needs
// and passes it.
func TestWorkerRecordsWithLockReleaseOutcome(t *testing.T) {
	cl, err := startCluster(1, testutil.V1_16)
	require.NoError(t, err)
	defer cl.close()
	tap := newTokenTap()
	c, err := dflock.New(cl.addrs(), dflock.WithDialer(tap.dial), dflock.WithLeaseTTL(serverLease))
	require.NoError(t, err)
	defer c.Close()
	rec := newRecorder()
	var stopAt atomic.Pointer[time.Time]
	w := &worker{client: 0, c: c, tap: tap, rec: rec, cl: cl, stop: make(chan struct{}), base: context.Background(),
		stopAt: &stopAt, rng: rand.New(rand.NewPCG(1, 2))}
	deadline := time.Now().Add(20 * time.Second)
	var b *belief
	for b == nil && time.Now().Before(deadline) {
		w.withLock()
		rec.mu.Lock()
		for _, x := range rec.beliefs {
			if x.op == "WithLock" && x.relErr == nil && !x.relRet.IsZero() {
				b = x
			}
		}
		rec.mu.Unlock()
	}
	require.NotNil(t, b, "no WithLock ran fn and returned nil within 20 s")
	v := newVerdict()
	checkLeases(v, ledgers(cl), []*belief{b}, noKills, false)
	checkReleases(v, ledgers(cl), []*belief{b}, noFaults)
	require.Zero(t, v.total(), "%v", v.examples)
	require.NotEmpty(t, b.token, "matched with its grant")
	require.False(t, b.relFrom.IsZero(), "fn's return recorded")
	require.Equal(t, 1, v.withLockReleaseChecked, "WithLock %q (grant %s): its release was not checked by (g)", b.key, short(b.token))
}
