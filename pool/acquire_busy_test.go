package pool

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// At MaxConns, AcquireUnlessBusy stops waiting once its patience has
// passed, saying what it waited for, and takes a connection that comes
// back in time like Acquire.
func TestAcquireUnlessBusyStopsWaitingForAFullPool(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), MaxConns: 1})
	ctx := ctxWait(t)
	held, err := p.Acquire(ctx)
	require.NoError(t, err)
	require.True(t, p.WaitPoolFull())

	const patience = 20 * time.Millisecond
	t0 := time.Now()
	_, err = p.AcquireUnlessBusy(ctx, patience)
	require.ErrorIs(t, err, ErrBusy)
	assert.GreaterOrEqual(t, time.Since(t0), patience, "gave up before its patience ran out")
	assert.NotErrorIs(t, err, context.Canceled, "the caller's context is fine")
	assert.Contains(t, err.Error(), srv.Addr())
	assert.Contains(t, err.Error(), "waiting for a wait-pool connection (0 being dialled, 1 in use, cap 1)")

	// With patience to spare it takes the connection that comes back.
	got := make(chan *Conn, 1)
	go func() {
		c, err := p.AcquireUnlessBusy(ctx, time.Hour)
		assert.NoError(t, err)
		got <- c
	}()
	held.Release()
	c := <-got
	require.NotNil(t, c)
	assert.Same(t, held.c, c.c)
	c.Release()
}

// A caller whose own context ends while it waits gets its context's
// error, not ErrBusy.
func TestAcquireUnlessBusyHonoursItsContext(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), MaxConns: 1})
	ctx := ctxWait(t)
	held, err := p.Acquire(ctx)
	require.NoError(t, err)
	defer held.Release()

	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	_, err = p.AcquireUnlessBusy(short, time.Hour)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, ErrBusy)
}

// A wait that is dialling is not cut short, however often the watch
// looks: the dial would finish into the idle set and the caller's next
// attempt dial again.
func TestAcquireUnlessBusyLetsADialInProgressFinish(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	var d heldDialer
	p := newPool(t, Config{Addr: srv.Addr(), Dial: d.dial, MaxConns: 2})
	ctx := ctxWait(t)
	d.hold()
	done := make(chan error, 1)
	var c *Conn
	go func() {
		var err error
		c, err = p.AcquireUnlessBusy(ctx, time.Millisecond)
		done <- err
	}()
	require.Eventually(t, func() bool { return d.blocked.Load() == 1 }, wait, time.Millisecond)
	// Nothing to await: the watch's looks have no visible effect unless
	// they cut the wait. Give it some dozens of them.
	time.Sleep(50 * time.Millisecond)
	d.letGo()
	require.NoError(t, <-done)
	defer c.Release()
	assert.EqualValues(t, 1, d.attempts.Load(), "the wait was cut and dialled again")
}

// After a refused dial (a server at its connection cap) new connections
// are paced: DialsPaced says so, and AcquireUnlessBusy stops waiting for
// the next paced dial, naming the refusal. A successful dial ends it.
func TestAcquireUnlessBusyStopsWaitingForAPacedDial(t *testing.T) {
	t.Parallel()
	srv, p, held := poolAtServerCap(t)
	ctx := ctxWait(t)
	require.True(t, p.DialsPaced(), "a refused dial paces the next ones")

	// Hold the gate's one dial slot so that the caller has to wait.
	var slot uint64
	require.Eventually(t, func() (ok bool) { slot, ok = p.gate.enter(); return ok }, wait, time.Millisecond)
	_, err := p.AcquireUnlessBusy(ctx, 10*time.Millisecond)
	require.ErrorIs(t, err, ErrBusy)
	assert.NotErrorIs(t, err, ErrUnavailable, "it did not dial")
	assert.Contains(t, err.Error(), "waiting to dial again after a failed dial")
	assert.Contains(t, err.Error(), "--max-connections")
	p.gate.leave(slot, errDialDeferred) // gives the slot back without an outcome

	held.Destroy()
	require.Eventually(t, func() bool { return srv.Stats().Connections == 1 }, wait, 5*time.Millisecond)
	c, err := p.Acquire(ctx)
	require.NoError(t, err)
	defer c.Release()
	assert.False(t, p.DialsPaced(), "a successful dial ends the pacing")
}

// Callers that keep cutting their waits short while connections change
// hands never lose one: a cut that races a hand-over either returns the
// connection or leaves it to the pool.
func TestAcquireUnlessBusyRacingReleasesLosesNoConnection(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), MaxConns: 1})
	ctx := ctxWait(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for got := 0; got < 50 && ctx.Err() == nil; {
				c, err := p.AcquireUnlessBusy(ctx, time.Millisecond)
				if err != nil {
					assert.ErrorIs(t, err, ErrBusy)
					continue
				}
				got++
				c.Release()
			}
		}()
	}
	wg.Wait()
	require.NoError(t, ctx.Err())
	assert.False(t, p.WaitPoolFull())
	assert.Zero(t, p.pp.Stat().AcquiredResources())
	c, err := p.AcquireUnlessBusy(ctx, time.Hour)
	require.NoError(t, err, "the one connection is still there")
	c.Release()
}
