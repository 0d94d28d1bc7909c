package pool

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// endHold makes the hold's time run out now (the next dial is the trial).
func (h *authHold) endHold() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.until = time.Now()
}

// holdLonger keeps the hold on for d whatever its backoff says.
func (h *authHold) holdLonger(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.until = time.Now().Add(d)
}

// laneDialling reports whether a lane slot's dial is under way.
func (p *Pool) laneDialling() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.lanes {
		if p.lanes[i].dialling {
			return true
		}
	}
	return false
}

func (h *authHold) currentBackoff() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.backoff
}

// The hold's rules, one outcome at a time: only the first refusal and a
// trial's refusal move it (the refusals of dials that were under way when
// it began must not double it at once); during a trial every other dial is
// still held; a trial that fails for another reason leaves the next dial
// to try; a success lifts it.
func TestAuthHoldRules(t *testing.T) {
	const addr = "127.0.0.1:1"
	refusal := serverErr(addr, ErrAuth, nil)
	network := serverErr(addr, ErrUnavailable, errors.New("connection refused"))
	h := authHold{addr: addr}

	trial, err := h.enter()
	require.NoError(t, err)
	require.False(t, trial)
	h.done(false, network)
	h.done(false, nil)
	_, err = h.enter()
	require.NoError(t, err, "no refusal yet: nothing is held")

	before := time.Now()
	h.done(false, refusal)
	require.Equal(t, authHoldMin, h.currentBackoff())
	h.mu.Lock()
	until := h.until
	h.mu.Unlock()
	assert.False(t, until.Before(before.Add(authHoldMin/2)), "the hold ends before half its backoff")
	assert.False(t, until.After(time.Now().Add(authHoldMin)), "the hold outlasts its backoff")

	trial, err = h.enter()
	require.ErrorIs(t, err, ErrAuth)
	require.ErrorIs(t, err, errAuthHeld)
	require.False(t, trial)
	assert.Contains(t, err.Error(), addr)

	h.done(false, refusal) // a dial that was under way
	h.done(false, refusal)
	assert.Equal(t, authHoldMin, h.currentBackoff(), "refusals of dials already under way doubled the hold")

	h.endHold()
	trial, err = h.enter()
	require.NoError(t, err)
	require.True(t, trial, "the hold ended: the next dial asks the server")
	_, err = h.enter()
	require.ErrorIs(t, err, errAuthHeld, "a second dial went ahead beside the trial")

	h.done(true, network)
	assert.Equal(t, authHoldMin, h.currentBackoff(), "a network failure moved the hold")
	trial, err = h.enter()
	require.NoError(t, err)
	require.True(t, trial, "after a trial that learnt nothing, the next dial is the trial")

	h.done(true, refusal)
	assert.Equal(t, 2*authHoldMin, h.currentBackoff())
	for range 10 {
		h.endHold()
		trial, err = h.enter()
		require.NoError(t, err)
		require.True(t, trial)
		h.done(true, refusal)
	}
	assert.Equal(t, authHoldMax, h.currentBackoff(), "the hold grows past its cap")

	h.endHold()
	trial, err = h.enter()
	require.NoError(t, err)
	require.True(t, trial)
	h.done(true, nil)
	trial, err = h.enter()
	require.NoError(t, err, "a success did not lift the hold")
	require.False(t, trial)
	h.done(false, refusal)
	assert.Equal(t, authHoldMin, h.currentBackoff(), "a refusal after a success starts again from the shortest hold")
}

// The held error keeps what the refusal said: a token too long for the
// server, none configured. Like the handshake's own errors, its text never
// holds the token, even a token that is a word of the error's text.
func TestAuthHoldKeepsTheRefusalsCause(t *testing.T) {
	const addr = "127.0.0.1:1"
	h := authHold{addr: addr, secret: "s3cret"}
	h.done(false, serverErr(addr, ErrAuth, errLongToken))
	_, err := h.enter()
	require.ErrorIs(t, err, errAuthHeld)
	require.ErrorIs(t, err, errLongToken)
	var se *ServerError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, addr, se.Addr)

	h = authHold{addr: addr, secret: "authentication"}
	h.done(false, redact(serverErr(addr, ErrAuth, nil), h.secret))
	_, err = h.enter()
	require.ErrorIs(t, err, ErrAuth)
	require.ErrorIs(t, err, errAuthHeld)
	assert.NotContains(t, err.Error(), h.secret)
}

// After the server refuses the token, every call that needed a connection
// dialled again, and was refused again: a service retrying against a
// server that refuses its token made thousands of dials a second. While
// the hold lasts, lane, wait-pool, listener and Query dials fail at once,
// with ErrAuth, and dial nothing; once it ends, one dial asks again, and a
// server that now takes the token serves every call.
func TestAuthRefusalHoldsDialsBack(t *testing.T) {
	srv := newServer(t, testutil.Config{AuthToken: "right"})
	addr := srv.Addr()
	var dials atomic.Int64
	p := newPool(t, Config{Addr: addr, AuthToken: "rotated", OnDial: func(string, time.Duration, error) { dials.Add(1) }})
	ctx := ctxWait(t)

	_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.ErrorIs(t, err, ErrAuth) // the server's refusal, or a slot's dial held after it
	// The call returned at the first refused lane dial; the other slot's
	// may still be under way, and would count after n (or, as a trial
	// refused after a slow start, re-arm the hold over the hour below).
	require.Eventually(t, func() bool { return !p.laneDialling() }, 5*time.Second, time.Millisecond)
	p.authHold.holdLonger(time.Hour)
	n := dials.Load()
	require.Positive(t, n)

	_, _, err = p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.ErrorIs(t, err, ErrAuth)
	require.ErrorIs(t, err, errAuthHeld)
	_, err = p.Acquire(ctx)
	require.ErrorIs(t, err, errAuthHeld)
	_, err = p.Query(ctx, wire.Request{Cmd: wire.CmdStats}, 0)
	require.ErrorIs(t, err, errAuthHeld)
	_, err = p.DialListener(ctx, func(wire.Push) {}, func(error) {})
	require.ErrorIs(t, err, errAuthHeld)
	assert.Equal(t, n, dials.Load(), "a call dialled while the hold lasted")
	assert.NoError(t, p.Err(), "a held dial made the server unavailable")
	assert.True(t, p.Stats().AuthRefused)

	// The server now takes the token.
	require.NoError(t, srv.Close())
	newServer(t, testutil.Config{Addr: addr, AuthToken: "rotated"})
	p.authHold.endHold()
	_, _, err = p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err, "the hold's end did not let a dial ask again")
	c, err := p.Acquire(ctx)
	require.NoError(t, err, "a success did not lift the hold")
	c.Release()
	assert.False(t, p.Stats().AuthRefused)
}

// A Client-sized storm: 32 callers retrying as fast as they can against a
// server that refuses the token. Without the hold each call dialled (some
// twice): thousands of dials in the time this takes.
func TestAuthRefusalStormDialsLittle(t *testing.T) {
	srv := newServer(t, testutil.Config{AuthToken: "right"})
	p := newPool(t, Config{Addr: srv.Addr(), AuthToken: "wrong"})
	ctx, cancel := context.WithCancel(ctxWait(t))
	var calls atomic.Int64
	done := make(chan struct{})
	for range 32 {
		go func() {
			defer func() { done <- struct{}{} }()
			for ctx.Err() == nil {
				_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
				if !errors.Is(err, ErrAuth) && ctx.Err() == nil {
					t.Errorf("a call against a server refusing the token: %v", err)
					return
				}
				if calls.Add(1) == 3000 {
					cancel()
				}
			}
		}()
	}
	for range 32 {
		<-done
	}
	cancel()
	// 3,000 calls take milliseconds when held back: the lane's first dials,
	// then one trial per hold (50 ms, 100 ms, ...).
	d := p.Stats().DialFailures
	t.Logf("%d calls, %d dials", calls.Load(), d)
	assert.LessOrEqual(t, d, int64(20), "dials per refused call are not held back")
}

// The probe asks the server whatever the hold says (it dials only while the
// server is down, on a backoff of its own), and its success lifts the hold.
func TestProbeDialIsNotHeldBack(t *testing.T) {
	srv := newServer(t, testutil.Config{AuthToken: "right"})
	p := newPool(t, Config{Addr: srv.Addr(), AuthToken: "right"})
	p.authHold.done(false, serverErr(srv.Addr(), ErrAuth, nil))
	p.authHold.holdLonger(time.Hour)
	_, err := p.dialLaneConn(ctxWait(t), false)
	require.ErrorIs(t, err, errAuthHeld)
	l, err := p.dialLaneConn(ctxWait(t), true)
	require.NoError(t, err, "the probe's dial was held back")
	p.adoptLane(l)
	trial, err := p.authHold.enter()
	require.NoError(t, err, "the probe's success did not lift the hold")
	require.False(t, trial)
}
