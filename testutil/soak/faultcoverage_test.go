package soak

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// CI runs `make soak DURATION=20s` (.ci/run): phases of 12 s and 8 s with a
// fault every 1.2 s on average. Drawing each fault's kind at random left
// several of the 10 kinds out of such a phase, and nothing required a kind
// to have been injected. This runs the soak's faulter on a real cluster
// (no Clients) for CI's fencing phase and checks that every kind was
// injected; those that act on existing connections had none here, which
// checkFaultCoverage would report.
func TestFaulterInjectsEveryKindInACIPhase(t *testing.T) {
	cl, err := startCluster(numServers, testutil.V2_1)
	require.NoError(t, err)
	defer cl.close()
	f := newFaulter(cl, 42, 1200*time.Millisecond, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	f.run(ctx)
	cancel()
	require.Empty(t, f.errs)
	var counts [numFaultKinds]int
	for _, w := range f.windows {
		counts[w.kind]++
	}
	var missing []string
	for k := range numFaultKinds {
		if counts[k] == 0 {
			missing = append(missing, k.String())
		}
	}
	assert.Empty(t, missing, "an 8 s phase injected %d faults; kinds never injected: %q (counts %v)", len(f.windows), missing, counts)
}

// A phase fails when a kind was never injected, or when a kind that acts on
// existing connections never found one; a refusal nobody dialled into is
// only reported.
func TestFaultCoverageFailsAPhaseThatMissedAKind(t *testing.T) {
	f := &faulter{kinds: []faultKind{faultDrop, faultReset, faultLatency, faultConnCap}, windows: []faultWindow{
		{kind: faultDrop, effect: 3},
		{kind: faultReset, effect: 0}, // no connection to reset
		{kind: faultReset, effect: 0},
		{kind: faultConnCap, effect: 0}, // nobody dialled: fine
	}}
	res := &phaseResult{phase: phase{duration: 8 * time.Second}, v: newVerdict()}
	checkFaultCoverage(res, f, nil, nil)
	assert.Equal(t, 2, res.v.counts["faults"], "%v", res.v.examples) // latency never injected; reset never had an effect
	assert.Equal(t, 2, res.faults[faultReset])
	assert.Equal(t, 3, res.effects[faultDrop])
	assert.Equal(t, 1, res.effective[faultDrop])

	// Too short a phase to require every kind.
	res = &phaseResult{phase: phase{duration: time.Second}, v: newVerdict()}
	checkFaultCoverage(res, f, nil, nil)
	assert.Zero(t, res.v.total())
}
