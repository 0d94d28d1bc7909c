package pool

import "time"

// batchPace decides, for a lane connection, whether requests sent while
// others are unanswered wait until all are answered (one batch in flight) or
// go out at once (pipelined).
//
// Holding back is for the server's sake. dflockd serves each connection on a
// goroutine of its own, which reads whatever the socket holds and does not
// block while more keeps coming. A lane connection written to while the
// server works through its earlier requests keeps that goroutine busy, and
// the goroutine of another busy connection (the other lane, another client)
// runnable but waiting until the runtime preempts the first: up to 20 ms in
// our measurements, on a server whose CPUs were all busy
// (docs/performance.md, "Where the tail comes from"). Held back, requests
// wait for the replies to the ones ahead of them, which the server would
// have served first anyway, and leave in one larger write; the server's
// goroutine blocks between batches, and its siblings take turns.
//
// What holding back costs is a round trip per batch: from its last reply
// until the next batch arrives, the server has nothing of this connection's
// to do. That is cheap while the round trip is short against the server's
// work on a batch (a server on the same host, or a busy one) and dear when
// the network's round trip dominates (across a network at moderate load:
// 0.67× the throughput at 64 goroutines through a 2.5 ms round trip). So the
// pace measures both on every batch written to an idle connection — the
// wait for its first reply (the round trip, plus any wait for the server)
// and the time from its first reply to its last (the server's work) — and
// pipelines while the shortest wait of the last paceWindow batches exceeds a
// paceRatio-th of their average work. Pipelining lasts pipeRounds of those
// round trips (within [minPipeline, maxPipeline]); then one batch is held
// back again and measured. The shortest wait, not the average, is the round
// trip: the others include waits for a server busy elsewhere, which are
// what holding back is for.
//
// All under the connection's mu.
type batchPace struct {
	sentAt, firstAt int64 // p.now() of the measured batch's write and first reply; 0: none
	samples         int   // measured batches in the rings (at most paceWindow)
	next            int   // ring index of the next sample
	wait, work      [paceWindow]int64
	pipeUntil       int64 // p.now() until which requests are pipelined; 0: held back
}

const (
	paceWindow  = 16
	paceRatio   = 4
	pipeRounds  = 32
	minPipeline = time.Millisecond
	maxPipeline = 200 * time.Millisecond
)

// wrote records a write; idle reports that every earlier request was
// answered, which makes it a batch to measure. A write that joins a batch
// in flight (pipelining) spoils that batch's measurement.
func (b *batchPace) wrote(idle bool, now int64) {
	if idle {
		b.sentAt, b.firstAt = now, 0
	} else {
		b.sentAt = 0
	}
}

// answered records a reply; last reports that it answered every request
// written. The last reply of a measured batch decides the pace.
func (b *batchPace) answered(last bool, now int64) {
	if b.sentAt == 0 {
		return
	}
	if b.firstAt == 0 {
		b.firstAt = now
	}
	if !last {
		return
	}
	b.wait[b.next], b.work[b.next] = b.firstAt-b.sentAt, now-b.firstAt
	b.next = (b.next + 1) % paceWindow
	b.samples = min(b.samples+1, paceWindow)
	b.sentAt = 0
	// Both are differences of p.now() within one process: far from
	// overflowing when multiplied by the small constants below, once capped.
	rtt, work := int64(maxPipeline), int64(0)
	for i := range b.samples {
		rtt = min(rtt, b.wait[i])
		work += b.work[i]
	}
	work /= int64(b.samples)
	if rtt*paceRatio > work {
		b.pipeUntil = satAdd(now, min(max(rtt*pipeRounds, int64(minPipeline)), int64(maxPipeline)))
	} else {
		b.pipeUntil = 0
	}
}

// pipelining reports whether requests go out without waiting for the
// replies to those in flight.
func (b *batchPace) pipelining(now int64) bool {
	return b.pipeUntil != 0 && now < b.pipeUntil
}
