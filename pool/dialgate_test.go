package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// heldDialer dials real TCP connections, but while holding is on each dial
// waits for release first, so that a test can line up a burst of callers
// before any dial completes.
type heldDialer struct {
	holding  atomic.Bool
	mu       sync.Mutex
	release  chan struct{}
	attempts atomic.Int64
	blocked  atomic.Int64 // dials waiting for release right now
}

func (d *heldDialer) hold() {
	d.mu.Lock()
	d.release = make(chan struct{})
	d.mu.Unlock()
	d.holding.Store(true)
}

func (d *heldDialer) letGo() {
	d.holding.Store(false)
	d.mu.Lock()
	close(d.release)
	d.mu.Unlock()
}

func (d *heldDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.attempts.Add(1)
	if d.holding.Load() {
		d.mu.Lock()
		ch := d.release
		d.mu.Unlock()
		d.blocked.Add(1)
		select {
		case <-ch:
		case <-ctx.Done():
		}
		d.blocked.Add(-1)
	}
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

// gateWaiting is the number of Acquire callers waiting for a paced dial.
func (p *Pool) gateWaiting() int {
	p.gate.mu.Lock()
	defer p.gate.mu.Unlock()
	return p.gate.waiting
}

// At the server's connection cap, a burst of callers that each need a new
// wait-pool connection costs a few refused dials, not one per caller (before
// the gate: about one per caller per attempt), while the lane keeps serving,
// the server is not reported down, and every error names the likely cause.
//
// The bound does not depend on timing: the callers are lined up (every dial
// held at the dialer) before any dial completes. While dials succeed at most
// maxDialsInFlight run at once, so the first burst costs at most that many
// refusals (one dial gets the last free connection); the first refusal
// fails every waiting caller. In the backoff that follows dials go one at a
// time, so the second burst costs exactly one refusal.
func TestWaitPoolDialsBackOffAtTheServersConnectionCap(t *testing.T) {
	t.Parallel()
	const lanes, callers = 2, 50
	srv := newServer(t, testutil.Config{MaxConnections: lanes + 1})
	var d heldDialer
	p := newPool(t, Config{Addr: srv.Addr(), Dial: d.dial, LaneConns: lanes})
	ctx := ctxWait(t)
	_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return p.Stats().LaneConns == lanes }, wait, 5*time.Millisecond)
	require.Zero(t, p.Stats().DialFailures)

	var (
		mu   sync.Mutex
		errs []error
		got  []*Conn
	)
	burst := func() {
		d.hold()
		var wg sync.WaitGroup
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := p.Acquire(ctx)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
				} else {
					got = append(got, c)
				}
			}()
		}
		// Every caller is either dialling (held) or waiting for a dial.
		require.Eventually(t, func() bool { return int(d.blocked.Load())+p.gateWaiting() == callers }, wait, 5*time.Millisecond)
		// The lane keeps serving meanwhile.
		r, _, err := p.Do(ctx, lockReq("lane-works"))
		require.NoError(t, err)
		require.Equal(t, wire.StatusOK, r.Status)
		_, _, err = p.Do(ctx, wire.Request{Cmd: wire.CmdRelease, Key: "lane-works", Token: r.Token})
		require.NoError(t, err)
		d.letGo()
		wg.Wait()
	}

	burst()
	first := p.Stats().DialFailures
	assert.LessOrEqual(t, first, int64(maxDialsInFlight), "first burst: at most one refusal per dial in flight")
	assert.Len(t, got, 1, "the one free connection slot is used")
	assert.Len(t, errs, callers-1)

	errs = nil
	burst()
	assert.Equal(t, first+1, p.Stats().DialFailures, "while backing off, one dial at a time: one refusal fails the burst")
	assert.Len(t, errs, callers)
	assert.Len(t, got, 1)

	for _, err := range errs {
		require.ErrorIs(t, err, ErrUnavailable)
		assert.Contains(t, err.Error(), srv.Addr())
		assert.Contains(t, err.Error(), "--max-connections")
		assert.Contains(t, err.Error(), "closed the connection during the handshake")
	}
	assert.NoError(t, p.Err(), "the server is up: its lane connections are healthy")
	assert.True(t, p.Stats().Up)
	got[0].Release()
}

// After the refusals stop (a connection slot frees up), the next dial after
// the backoff succeeds and dials are unpaced again; a connection released to
// the pool serves a caller that waits for a paced dial.
func TestWaitPoolDialsRecoverAfterBackoff(t *testing.T) {
	t.Parallel()
	srv, p, held := poolAtServerCap(t)
	ctx := ctxWait(t)
	require.NoError(t, p.Err())

	// A caller waiting for the next paced dial takes a released
	// connection instead. The test holds the gate's one dial slot so that
	// the caller has to wait.
	var slot uint64
	require.Eventually(t, func() (ok bool) { slot, ok = p.gate.enter(); return ok }, wait, time.Millisecond)
	done := make(chan error, 1)
	var c2 *Conn
	go func() {
		var err error
		c2, err = p.Acquire(ctx)
		done <- err
	}()
	require.Eventually(t, func() bool { return p.gateWaiting() == 1 }, wait, time.Millisecond)
	held.Release()
	require.NoError(t, <-done)
	assert.Same(t, held.c, c2.c)
	p.gate.leave(slot, errDialDeferred) // gives the slot back without an outcome
	c2.Release()

	// A slot frees up: the next dial succeeds and ends the backoff.
	c3, err := p.Acquire(ctx)
	require.NoError(t, err)
	c3.Destroy()
	require.Eventually(t, func() bool { return srv.Stats().Connections == 1 }, wait, 5*time.Millisecond)
	c4, err := p.Acquire(ctx)
	require.NoError(t, err)
	defer c4.Release()
	p.gate.mu.Lock()
	failures := p.gate.failures
	p.gate.mu.Unlock()
	assert.Zero(t, failures, "a successful dial ends the backoff")
}

// A caller whose context ends while it waits for a paced dial returns with
// its context's error, naming the dial failure it waited behind, and not
// claiming the server is unavailable.
func TestAcquireWaitingForAPacedDialHonoursItsContext(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{MaxConnections: 1})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	ctx := ctxWait(t)
	_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	_, err = p.Acquire(ctx)
	require.ErrorIs(t, err, ErrUnavailable)
	// Hold the gate's one dial slot so that the next caller must wait.
	var slot uint64
	require.Eventually(t, func() (ok bool) { slot, ok = p.gate.enter(); return ok }, wait, time.Millisecond)
	defer p.gate.leave(slot, nil)

	short, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := p.Acquire(short)
		done <- err
	}()
	require.Eventually(t, func() bool { return p.gateWaiting() == 1 }, wait, time.Millisecond)
	cancel()
	err = <-done
	require.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, ErrUnavailable)
	assert.NotErrorIs(t, err, wire.ErrConnBroken)
	assert.Contains(t, err.Error(), "--max-connections")
}

// Regression: a caller whose dial was deferred (maxDialsInFlight dials in
// flight) and that reached waitForDial only after the last of those dials
// had ended found nobody left to wake it: the dial's broadcast had gone out
// while no one was waiting. With every other connection held, Acquire then
// waited until its context ended (seen as a 20 s hang of 100 contended Locks
// under load). Here the dial ends between the deferral and the wait.
func TestWaitForDialSeesAChangeBetweenDeferralAndWait(t *testing.T) {
	p := newPool(t, Config{Addr: "127.0.0.1:1"})
	g := &p.gate
	gen, seen := g.generation(), g.changeCount()
	var admitted []uint64
	for range maxDialsInFlight {
		gn, ok := g.enter()
		require.True(t, ok)
		admitted = append(admitted, gn)
	}
	_, ok := g.enter()
	require.False(t, ok, "a fifth dial is deferred")
	g.leave(admitted[0], nil) // the dial ends before the deferred caller waits

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	require.NoError(t, p.waitForDial(ctx, gen, seen), "the deferred caller must try again, not wait for a wake-up that already happened")
	for _, gn := range admitted[1:] {
		g.leave(gn, nil)
	}
}

// startWaiters starts n callers in waitForDial, one after another, each
// queued before the next starts, and returns their results.
func startWaiters(t *testing.T, p *Pool, ctxs []context.Context) []chan error {
	t.Helper()
	g := &p.gate
	gen, seen := g.generation(), g.changeCount()
	res := make([]chan error, len(ctxs))
	for i, ctx := range ctxs {
		res[i] = make(chan error, 1)
		go func() { res[i] <- p.waitForDial(ctx, gen, seen) }()
		require.Eventually(t, func() bool { return p.gateWaiting() == i+1 }, wait, time.Millisecond)
	}
	return res
}

// A connection back in the pool or a dial slot come free is one chance: it
// wakes the longest waiter alone, not every waiter (each of which would
// then dial or be deferred again). A change of the server's state wakes all.
func TestDialGateSignalWakesOneWaiterInOrder(t *testing.T) {
	t.Parallel()
	p := newPool(t, Config{Addr: "127.0.0.1:1"})
	ctx := ctxWait(t)
	res := startWaiters(t, p, []context.Context{ctx, ctx, ctx})
	p.gate.signal()
	require.NoError(t, result(t, res[0], "the first waiter"))
	require.Eventually(t, func() bool { return p.gateWaiting() == 2 }, wait, time.Millisecond)
	requireStillWaiting(t, p, "for one chance", res[1:]...)
}

// requireStillWaiting checks that the waiters res (all that are left) stay
// waiting for a moment, which nothing is to end (why they should not have
// woken), then wakes them with a broadcast and requires each to return nil.
func requireStillWaiting(t *testing.T, p *Pool, why string, res ...chan error) {
	t.Helper()
	require.Never(t, func() bool { return p.gateWaiting() < len(res) }, 20*time.Millisecond, time.Millisecond,
		"a waiter woke %s", why)
	p.gate.broadcast()
	for i, ch := range res {
		require.NoError(t, result(t, ch, fmt.Sprintf("waiter %d of those left", i+1)))
	}
}

// A waiter whose context ends as a signal reaches it hands the chance on:
// either it took the chance (returned nil) or the next waiter wakes.
func TestDialGateWaiterThatGivesUpPassesItsChanceOn(t *testing.T) {
	t.Parallel()
	for range 50 {
		p := newPool(t, Config{Addr: "127.0.0.1:1"})
		first, cancel := context.WithCancel(ctxWait(t))
		res := startWaiters(t, p, []context.Context{first, ctxWait(t)})
		// Cancelled first: the signal then reaches the first waiter
		// between its wake-up and its return, unless it was quicker.
		cancel()
		p.gate.signal()
		if err := result(t, res[0], "the first waiter"); err != nil {
			require.ErrorIs(t, err, context.Canceled)
			require.NoError(t, result(t, res[1], "the second waiter, given the first one's chance"))
		} else {
			p.gate.broadcast()
			require.NoError(t, result(t, res[1], "the second waiter"))
		}
		p.Close()
	}
}

// backOff puts p's gate in the backoff after a failed dial, with no dial
// allowed for d.
func backOff(p *Pool, d time.Duration) {
	g := &p.gate
	g.mu.Lock()
	g.failures, g.backoff, g.next = 1, dialMinBackoff, time.Now().Add(d)
	g.lastErr = serverErr(p.cfg.Addr, ErrUnavailable, errors.New("refused (test)"))
	g.mu.Unlock()
}

// The end of a backoff wakes one waiter (who dials), and that one wakes the
// next (who finds the dial in flight and waits for it), not every waiter
// (each of which would retry and be deferred again): only one waiter times
// the backoff.
func TestDialGateBackoffEndWakesOneWaiterAndItsSuccessor(t *testing.T) {
	t.Parallel()
	p := newPool(t, Config{Addr: "127.0.0.1:1"})
	// Long enough to queue four waiters on a slow machine (each queues
	// in microseconds; one that found the backoff over would not queue,
	// and startWaiters would fail).
	backOff(p, time.Second)
	ctx := ctxWait(t)
	res := startWaiters(t, p, []context.Context{ctx, ctx, ctx, ctx})
	require.NoError(t, result(t, res[0], "the waiter timing the backoff"))
	require.NoError(t, result(t, res[1], "its successor"))
	requireStillWaiting(t, p, "at the end of the backoff", res[2:]...)
}

// The waiter timing a backoff that gives up wakes the next, which then
// times the backoff itself: the others have no timer of their own, and
// without the hand-over would wait until their contexts ended.
func TestDialGateBackoffTimerPassesOnWhenItsWaiterGivesUp(t *testing.T) {
	t.Parallel()
	p := newPool(t, Config{Addr: "127.0.0.1:1"})
	backOff(p, time.Hour)
	first, cancel := context.WithCancel(ctxWait(t))
	ctx := ctxWait(t)
	res := startWaiters(t, p, []context.Context{first, ctx})
	cancel()
	require.ErrorIs(t, result(t, res[0], "the waiter timing the backoff"), context.Canceled)
	require.NoError(t, result(t, res[1], "the next waiter, woken to time the backoff"))
	// The woken caller tries again, is deferred, and waits again: now it
	// times the (shorter) backoff itself.
	backOff(p, 20*time.Millisecond)
	again := make(chan error, 1)
	go func() { again <- p.waitForDial(ctx, p.gate.generation(), p.gate.changeCount()) }()
	require.NoError(t, result(t, again, "the waiter timing the backoff now"))
}

// A burst of callers that all need a new connection costs about one
// deferral each, not one per finished dial each.
func TestAcquireBurstDefersEachCallerAboutOnce(t *testing.T) {
	t.Parallel()
	const callers = 32
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), MaxConns: callers})
	deferred := acquireBurst(t, p, callers)
	assert.LessOrEqual(t, deferred, uint64(3*callers), "deferrals for %d callers", callers)
}

// acquireBurst has n callers Acquire from p at once, releases every
// connection they got, and returns the dials the gate deferred meanwhile.
func acquireBurst(tb testing.TB, p *Pool, n int) (deferred uint64) {
	hs := make([]*Conn, n)
	var wg sync.WaitGroup
	for i := range hs {
		wg.Go(func() {
			h, err := p.Acquire(context.Background())
			if err != nil {
				tb.Error(err)
				return
			}
			hs[i] = h
		})
	}
	wg.Wait()
	for _, h := range hs {
		if h != nil {
			h.Release()
		}
	}
	p.gate.mu.Lock()
	defer p.gate.mu.Unlock()
	return p.gate.deferred
}

// poolAtServerCap returns a server that takes two connections, a pool with
// one lane connection to it, and the wait-pool connection that took the
// other; the pool's next dial has been refused.
func poolAtServerCap(t *testing.T) (*testutil.Server, *Pool, *Conn) {
	t.Helper()
	srv := newServer(t, testutil.Config{MaxConnections: 2})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	ctx := ctxWait(t)
	_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	held, err := p.Acquire(ctx)
	require.NoError(t, err)
	require.False(t, p.DialsPaced())
	_, err = p.Acquire(ctx)
	require.ErrorIs(t, err, ErrUnavailable)
	return srv, p, held
}
