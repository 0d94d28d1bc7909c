package pool

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// While dials back off, callers that queued behind a dial in flight wait
// without a timer of their own: that dial's end is to wake them. When it
// succeeds after a failure of another dial (admitted before the failure),
// leave wakes one waiter alone. If that waiter needs no dial after all —
// here it takes the connection of a dial whose own caller gave up, which
// puddle put back without a Release — nobody is left timing the backoff:
// the other waiters waited until their contexts ended, though the backoff
// ended long before and the server accepts dials (found by review). The
// same without a failure, with every dial slot taken: the woken waiter
// must pass its turn on (argued from the code by the same review).
func TestDialWaitersNotStrandedWhenTheWokenOneNeedsNoDial(t *testing.T) {
	for _, held := range []string{"backoff", "dial slots"} {
		t.Run(held, func(t *testing.T) { testDialWaitersNotStranded(t, held == "backoff") })
	}
}

func testDialWaitersNotStranded(t *testing.T, backoff bool) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr()})
	ctx := ctxWait(t)
	h0, err := p.Acquire(ctx) // the connection of the dial whose caller gave up
	require.NoError(t, err)

	// A dial admitted at generation 0 is in flight; another dial failed
	// since (generation 1), which started a 100 ms backoff. Or, without a
	// failure, every dial slot is taken by dials in flight.
	g := &p.gate
	g.mu.Lock()
	if backoff {
		g.inflight++
		g.failures, g.backoff, g.next = 1, dialMinBackoff, time.Now().Add(100*time.Millisecond)
		g.failGen++
		g.lastErr = serverErr(p.cfg.Addr, ErrUnavailable, errors.New("refused (test)"))
	} else {
		g.inflight += maxDialsInFlight
	}
	g.mu.Unlock()

	type res struct {
		h   *Conn
		err error
	}
	a1, a2 := make(chan res, 1), make(chan res, 1)
	go func() { h, err := p.Acquire(ctx); a1 <- res{h, err} }()
	require.Eventually(t, func() bool { return p.gateWaiting() == 1 }, wait, time.Millisecond)
	waitCtx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go func() { h, err := p.Acquire(waitCtx); a2 <- res{h, err} }()
	require.Eventually(t, func() bool { return p.gateWaiting() == 2 }, wait, time.Millisecond)

	// The dial in flight ends (the last one: the others' wake-ups went to
	// callers gone since): its connection is idle in puddle (its caller
	// left: no Conn.Release, no signal), and its end wakes one waiter.
	p.takeOutForTest(h0)
	h0.res.Release()
	if !backoff {
		g.mu.Lock()
		g.inflight = 1
		g.mu.Unlock()
	}
	g.leave(0, nil)

	r1 := result(t, a1, "the first waiter")
	require.NoError(t, r1.err)
	begin := time.Now()
	r2 := result(t, a2, "the second waiter")
	require.NoError(t, r2.err, "the second waiter, %v after the first returned", time.Since(begin))
	require.True(t, r1.h.c == h0.c || r2.h.c == h0.c, "one of them took the idle connection")
}

// takeOutForTest ends h's acquisition as puddle's own hand-back would,
// without Conn.Release (which would signal the gate).
func (p *Pool) takeOutForTest(h *Conn) { h.takeOut() }
