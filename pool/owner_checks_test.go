package pool

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// The lane's Owner methods refuse what Pool.Do refuses: a blocking acquire
// sent through them parked the lane (a 2 s lease held on it got no renewal
// answer in time), an over-long line made the server close it with every
// lease on it (review "low"). The refused requests are answered at once and
// never reach the server; the others in the batch are sent as usual.
func TestLaneOwnerRefusesWhatDoRefuses(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	br := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, OnConnBroken: br.hook})
	ctx := ctxWait(t)

	r, owner, err := p.Do(ctx, lockReq("a"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	blocking := wire.Request{Cmd: wire.CmdLock, Key: "b", Timeout: 4, Lease: 30}
	overlong := wire.ReleaseRequest("c", strings.Repeat("t", 300), false)

	for _, req := range []wire.Request{blocking, overlong, {Cmd: wire.CmdStats}} {
		_, answered, err := owner.Request(ctx, req, nil)
		require.ErrorIs(t, err, errNotLaneSafe, "%s", req.Cmd)
		require.True(t, answered, "a refused request is answered at once")
	}

	type answer struct {
		i   int
		r   wire.Reply
		err error
	}
	got := make(chan answer, 4)
	owner.SendBatch([]wire.Request{blocking, wire.RenewRequest("a", r.Token, false, 30), overlong},
		func(i int, r wire.Reply, err error) { got <- answer{i, r, err} })
	byIndex := map[int]answer{}
	for range 3 {
		a := result(t, got, "an answer of the batch")
		byIndex[a.i] = a
	}
	require.ErrorIs(t, byIndex[0].err, errNotLaneSafe)
	require.ErrorIs(t, byIndex[2].err, errNotLaneSafe)
	require.NoError(t, byIndex[1].err, "the lane-safe renewal in the same batch is sent")
	require.Equal(t, wire.StatusOK, byIndex[1].r.Status)

	require.Zero(t, holder(srv, "b"), "the blocking acquire reached the server")
	require.Zero(t, waiters(srv, "b"))
	require.NoError(t, owner.Err(), "the lane broke")
	select {
	case ev := <-br.ch:
		t.Fatalf("a connection broke: %v", ev.err)
	default:
	}
}

// A nil callback discards the replies instead of panicking on the reader
// goroutine, where it ended the program (review "low").
func TestNilCallbacksDiscardReplies(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	ctx := ctxWait(t)
	r, owner, err := p.Do(ctx, lockReq("a"))
	require.NoError(t, err)

	owner.SendBatch([]wire.Request{wire.RenewRequest("a", r.Token, false, 30)}, nil)
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	_, answered, err := owner.Request(ended, wire.Request{Cmd: wire.CmdPing}, nil)
	require.False(t, answered)
	require.Error(t, err)

	h, err := p.Acquire(ctx)
	require.NoError(t, err)
	h.SendBatch([]wire.Request{{Cmd: wire.CmdPing}}, nil)
	_, answered, err = h.Request(ended, wire.Request{Cmd: wire.CmdPing}, nil)
	require.False(t, answered)
	require.Error(t, err)

	// Both connections still answer, in step.
	rr, _, err := p.Do(ctx, wire.ReleaseRequest("a", r.Token, false))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, rr.Status)
	rr, err = h.Do(ctx, lockReq("h"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, rr.Status)
	h.Destroy()
}

// A Conn handle whose acquisition ended sends nothing through its Owner
// methods either, as Do: the connection may be another caller's by then
// (review "low": both went out on the next caller's connection).
func TestEndedConnHandleSendsNothing(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), MaxConns: 1})
	ctx := ctxWait(t)
	h1, err := p.Acquire(ctx)
	require.NoError(t, err)
	h1.Release()
	h2, err := p.Acquire(ctx) // MaxConns 1: the same connection
	require.NoError(t, err)
	defer h2.Destroy()
	require.Same(t, h1.c, h2.c)

	_, answered, err := h1.Request(ctx, lockReq("x"), nil)
	require.True(t, answered)
	require.ErrorIs(t, err, ErrClosed)
	got := make(chan error, 1)
	h1.SendBatch([]wire.Request{lockReq("y")}, func(_ int, _ wire.Reply, err error) { got <- err })
	require.ErrorIs(t, result(t, got, "the batch's answer"), ErrClosed)

	r, err := h2.Do(ctx, lockReq("z")) // its own reply: nothing else was sent
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	require.NotZero(t, holder(srv, "z"))
	require.Zero(t, holder(srv, "x"))
	require.Zero(t, holder(srv, "y"))
}

// DialListener refuses a nil push handler, which would drop every signal.
func TestDialListenerRefusesANilPushHandler(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr()})
	l, err := p.DialListener(ctxWait(t), nil, nil)
	require.Nil(t, l)
	var ae *wire.ArgError
	require.True(t, errors.As(err, &ae), "%v", err)
	require.Equal(t, "onPush", ae.Arg)
}
