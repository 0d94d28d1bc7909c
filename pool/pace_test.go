package pool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

const us = int64(time.Microsecond)

// batch measures one batch on b: written at t, first reply wait later, last
// reply work after that. It returns the time of the last reply.
func batch(b *batchPace, t, wait, work int64) int64 {
	b.wrote(true, t)
	if work == 0 {
		b.answered(true, t+wait)
		return t + wait
	}
	b.answered(false, t+wait)
	b.answered(true, t+wait+work)
	return t + wait + work
}

func TestBatchPaceHoldsBackUntilMeasuredOtherwise(t *testing.T) {
	var b batchPace
	assert.False(t, b.pipelining(0), "a new connection holds back")
	// A short round trip against much work (a busy server on this host).
	now := batch(&b, 1, 30*us, 300*us)
	assert.False(t, b.pipelining(now), "round trip 30µs, work 300µs")
}

func TestBatchPacePipelinesThroughALongRoundTrip(t *testing.T) {
	var b batchPace
	now := batch(&b, 1, 10*time.Millisecond.Nanoseconds(), 300*us)
	assert.True(t, b.pipelining(now), "round trip 10ms, work 300µs")
	// For pipeRounds round trips, within the bounds; then it holds back
	// one batch to measure again.
	assert.True(t, b.pipelining(now+int64(maxPipeline)-1))
	assert.False(t, b.pipelining(now+int64(maxPipeline)), "pipelining ends to measure afresh")

	b = batchPace{}
	now = batch(&b, 1, 100*us, 10*us)
	until := now + pipeRounds*100*us
	assert.True(t, b.pipelining(until-1))
	assert.False(t, b.pipelining(until))

	b = batchPace{}
	now = batch(&b, 1, 10*us, 0)
	assert.True(t, b.pipelining(now+int64(minPipeline)-1), "at least minPipeline")
	assert.False(t, b.pipelining(now+int64(minPipeline)))
}

// The round trip is the shortest wait of the window: waits for a server
// busy elsewhere, the very thing holding back is for, do not make the lane
// pipeline.
func TestBatchPaceTakesTheShortestWaitForTheRoundTrip(t *testing.T) {
	var b batchPace
	now := batch(&b, 1, 30*us, 300*us)
	for range paceWindow - 1 {
		now = batch(&b, now+1, 15*time.Millisecond.Nanoseconds(), 300*us)
		assert.False(t, b.pipelining(now), "a starved batch among short round trips")
	}
	// Once the short one has left the window, the waits are the round trip.
	now = batch(&b, now+1, 15*time.Millisecond.Nanoseconds(), 300*us)
	assert.True(t, b.pipelining(now))
}

// A write that joins a batch in flight spoils its measurement: its replies
// decide nothing.
func TestBatchPaceIgnoresBatchesJoinedInFlight(t *testing.T) {
	var b batchPace
	b.wrote(true, 1)
	b.wrote(false, 2)
	b.answered(false, 2000*us)
	b.answered(true, 2100*us)
	assert.Zero(t, b.samples)
	assert.False(t, b.pipelining(2100*us))
}
