package renew

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/wire"
)

// batchRecorder is a Config.OnBatch that queues what it is given.
type batchRecorder chan BatchInfo

func (r batchRecorder) onBatch(b BatchInfo) { r <- b }

func (r batchRecorder) next(t *testing.T) BatchInfo {
	t.Helper()
	select {
	case b := <-r:
		return b
	case <-time.After(waitShort):
		t.Fatal("no OnBatch call")
		return BatchInfo{}
	}
}

// One round sends one batch whose replies are two oks, a refusal and a
// broken connection: OnBatch reports it once, after its last reply, and the
// Counters and Stats count each outcome once.
func TestCountersAndOnBatchCountEachOutcome(t *testing.T) {
	t.Parallel()
	rec := make(batchRecorder, 16)
	s, clk := manualScheduler(t, Config{OnBatch: rec.onBatch})
	o := newOwner(t, func(r wire.Request) answer {
		switch r.Key {
		case "refused":
			return answer{kind: answerRefuse}
		case "broken":
			return answer{kind: answerTransport}
		}
		return answer{}
	})
	o.now = clk.Now
	var c Counters
	due := clk.Now().Add(-30 * time.Second) // renewal due, deadline 28 s away
	var ls []*Lease
	for _, k := range []string{"ok1", "refused", "ok2", "broken"} {
		ls = append(ls, s.Track(Spec{Key: k, Token: "t", TTL: time.Minute, Owner: o, Sent: due, Counters: &c}))
	}
	s.tick()
	require.Len(t, o.snapshot(), 1, "one write")

	b := rec.next(t)
	assert.Same(t, &c, b.Counters)
	assert.Equal(t, 4, b.Size)
	assert.Equal(t, 2, b.Renewed)
	assert.Equal(t, 1, b.Refused)
	assert.ErrorIs(t, b.Err, errTransport)
	assert.GreaterOrEqual(t, b.Latency, time.Duration(0))
	o.waitAnswered(t, 4, waitShort)

	assert.Equal(t, int64(4), c.Sent.Load())
	assert.Equal(t, int64(2), c.Renewed.Load())
	assert.Equal(t, int64(1), c.Refused.Load())
	assert.Equal(t, int64(1), c.Unanswered.Load())
	assert.Equal(t, int64(2), c.Lost.Load())
	st := s.Stats()
	assert.Equal(t, int64(4), st.Sent)
	assert.Equal(t, int64(2), st.Renewed)
	assert.Equal(t, int64(1), st.Refused)
	assert.Equal(t, int64(1), st.Unanswered)
	assert.Equal(t, int64(2), st.Lost)
	assert.NoError(t, ls[0].Err())
	assert.ErrorIs(t, ls[1].Err(), ErrRefused)
	assert.NoError(t, ls[2].Err())
	assert.ErrorIs(t, ls[3].Err(), ErrOwnerFailed)
	select {
	case b := <-rec:
		t.Fatalf("a second OnBatch call: %+v", b)
	default:
	}
}

// An explicit Renew is a batch of its own; a lease without Counters is
// counted in Stats only, and its batch names no Counters.
func TestExplicitRenewIsABatch(t *testing.T) {
	t.Parallel()
	rec := make(batchRecorder, 16)
	s, clk := manualScheduler(t, Config{OnBatch: rec.onBatch})
	o := syncOwner(t, clk)
	var c Counters
	l := s.Track(Spec{Key: "k", Token: "t", TTL: time.Hour, Owner: o, Counters: &c})
	require.NoError(t, l.Renew(context.Background()))
	b := rec.next(t)
	assert.Equal(t, BatchInfo{Counters: &c, Size: 1, Renewed: 1}, b)
	assert.Equal(t, int64(1), c.Sent.Load())
	assert.Equal(t, int64(1), c.Renewed.Load())

	bare := s.Track(Spec{Key: "bare", Token: "t", TTL: time.Hour, Owner: o})
	require.NoError(t, bare.Renew(context.Background()))
	assert.Equal(t, BatchInfo{Size: 1, Renewed: 1}, rec.next(t))
	assert.Equal(t, int64(1), c.Sent.Load(), "the bare lease is not counted in c")
	assert.Equal(t, int64(2), s.Stats().Renewed)
}

// A renewal in flight when its lease is lost by OwnerFailed still counts as
// unanswered once the connection reports the failure, and the loss counts
// once.
func TestCountersUnansweredAfterOwnerFailed(t *testing.T) {
	t.Parallel()
	rec := make(batchRecorder, 16)
	gate := make(chan struct{})
	s, clk := manualScheduler(t, Config{OnBatch: rec.onBatch})
	o := newOwner(t, func(wire.Request) answer { return answer{kind: answerTransport, gate: gate} })
	o.now = clk.Now
	var c Counters
	l := s.Track(Spec{Key: "k", Token: "t", TTL: time.Minute, Owner: o, Sent: clk.Now().Add(-30 * time.Second), Counters: &c})
	s.tick()
	boom := errors.New("boom")
	o.fail(boom)
	s.OwnerFailed(o, boom)
	assert.ErrorIs(t, l.Err(), boom)
	close(gate) // the reader now fails the in-flight renewal
	b := rec.next(t)
	assert.Equal(t, 1, b.Size)
	assert.Zero(t, b.Renewed+b.Refused)
	assert.ErrorIs(t, b.Err, errTransport)
	assert.Equal(t, int64(1), c.Sent.Load())
	assert.Equal(t, int64(1), c.Unanswered.Load())
	assert.Equal(t, int64(1), c.Lost.Load())
}
