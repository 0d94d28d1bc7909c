package pool

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

func TestListenerReceivesPushesAndSurvivesCancelledCallers(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{ReadTimeout: time.Second})
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), KeepAlive: 200 * time.Millisecond, OnConnBroken: rec.hook})
	ctx := ctxWait(t)

	pushes := make(chan wire.Push, 16)
	broken := make(chan error, 1)
	lc, err := p.DialListener(ctx, func(m wire.Push) { pushes <- m }, func(err error) { broken <- err })
	require.NoError(t, err)
	r, err := lc.Do(ctx, wire.Request{Cmd: wire.CmdListen, Key: "a.>"})
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)
	assert.Equal(t, 1, p.Stats().ListenerConns)

	// A caller that gives up does not break the shared connection.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = lc.Do(cctx, wire.Request{Cmd: wire.CmdListen, Key: "b"})
	require.ErrorIs(t, err, context.Canceled)
	require.NoError(t, lc.Err())

	// Idle for more than the server's read timeout: the janitor's pings
	// keep it open.
	time.Sleep(1500 * time.Millisecond) // time-based behaviour under test
	r, _, err = p.Do(ctx, wire.Request{Cmd: wire.CmdSignal, Key: "a.b", Arg: "hello"})
	require.NoError(t, err)
	assert.Equal(t, int64(1), r.Count)
	select {
	case m := <-pushes:
		assert.Equal(t, wire.Push{Channel: "a.b", Payload: "hello"}, m)
	case <-ctx.Done():
		t.Fatal("no push")
	}
	require.NoError(t, lc.Err())

	// Close closes it and reports the break once.
	p.Close()
	select {
	case err := <-broken:
		assert.True(t, errors.Is(err, ErrClosed))
	case <-ctx.Done():
		t.Fatal("onBroken not called")
	}
	require.ErrorIs(t, lc.Err(), wire.ErrConnBroken)
	assert.Zero(t, p.Stats().ListenerConns)
}

func TestListenerDialFailsFastWhileDown(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr()})
	require.NoError(t, srv.Stop())
	_, err := p.DialListener(ctxWait(t), nil, nil)
	require.ErrorIs(t, err, ErrUnavailable)
	_, err = p.DialListener(ctxWait(t), nil, nil)
	require.ErrorIs(t, err, ErrUnavailable)
}
