package pool

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

var statsReq = wire.Request{Cmd: wire.CmdStats}

// Query needs no wait-pool slot: it succeeds while every one of MaxConns
// wait-pool connections is acquired (as when each is pinned by a held
// lock), where an Acquire would wait for its context.
func TestQueryWorksWhileEveryWaitPoolConnIsAcquired(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), MaxConns: 2})
	ctx := ctxWait(t)
	for range 2 {
		c, err := p.Acquire(ctx)
		require.NoError(t, err)
		defer c.Release()
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := p.Acquire(short)
	require.ErrorIs(t, err, context.DeadlineExceeded, "precondition: the wait pool is exhausted")

	dials := p.Stats().Dials
	r, err := p.Query(ctx, statsReq, 0)
	require.NoError(t, err)
	assert.Equal(t, wire.StatusOK, r.Status)
	assert.Contains(t, r.Text, `"connections"`)
	st := p.Stats()
	assert.Equal(t, dials+1, st.Dials, "Query's connection counts as a dial")
	assert.Equal(t, 2, st.AcquiredConns)
	// The connection is closed when Query returns.
	require.Eventually(t, func() bool { return srv.Stats().Connections == 2 }, wait, 5*time.Millisecond)
}

// A stats reply over the pool's 1 MiB line cap succeeds with a larger
// per-request cap, and fails with a smaller one with an error that names the
// cap and does not claim the server is unavailable.
func TestQueryLineCapIsPerRequest(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{MaxLocks: -1})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	ctx := ctxWait(t)
	fillServer(t, p, wire.DefaultMaxLine+(64<<10))

	_, err := p.Query(ctx, statsReq, 0)
	require.ErrorIs(t, err, wire.ErrLineTooLong)
	require.ErrorIs(t, err, wire.ErrConnBroken)
	assert.NotErrorIs(t, err, ErrUnavailable, "the server is fine; a larger cap cures it")
	assert.Contains(t, err.Error(), "stats reply longer than the 1048576-byte line cap")

	r, err := p.Query(ctx, statsReq, 4<<20)
	require.NoError(t, err)
	assert.Greater(t, len(r.Text), wire.DefaultMaxLine)
	assert.NoError(t, p.Err())

	_, err = p.Query(ctx, statsReq, -1)
	require.ErrorIs(t, err, wire.ErrInvalidArgument)
	assert.Contains(t, err.Error(), "maxLine")
}

// fillServer holds locks with long keys on the lane until the server's stats
// document exceeds size bytes.
func fillServer(t *testing.T, p *Pool, size int) {
	t.Helper()
	ctx := ctxWait(t)
	_, lane, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.NoError(t, err)
	prefix := strings.Repeat("k", 240)
	const batch = 500
	n := size/len(prefix) + 1
	for start := 0; start < n; start += batch {
		reqs := make([]wire.Request, 0, batch)
		for i := start; i < min(start+batch, n); i++ {
			reqs = append(reqs, wire.Request{Cmd: wire.CmdLock, Key: prefix + strconv.Itoa(i), Lease: 300})
		}
		var wg sync.WaitGroup
		wg.Add(len(reqs))
		var mu sync.Mutex
		var firstErr error
		lane.SendBatch(reqs, func(_ int, r wire.Reply, err error) {
			if err == nil && r.Status != wire.StatusOK {
				err = assert.AnError
			}
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
			}
			wg.Done()
		})
		wg.Wait()
		require.NoError(t, firstErr)
	}
}

// A Query whose context ends while it waits for the reply returns with the
// context's error (not ErrUnavailable) and closes its connection.
func TestQueryCancelledDuringTheExchangeReturns(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	sent := make(chan struct{})
	var once sync.Once
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &swallowConn{Conn: nc, prefix: []byte("stats\n"), onSwallow: func() { once.Do(func() { close(sent) }) }}, nil
	}
	p := newPool(t, Config{Addr: srv.Addr(), Dial: dial})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := p.Query(ctx, statsReq, 0)
		done <- err
	}()
	select {
	case <-sent:
	case <-time.After(wait):
		t.Fatal("Query never sent its request")
	}
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
		assert.NotErrorIs(t, err, ErrUnavailable)
	case <-time.After(wait):
		t.Fatal("Query did not return after its context was cancelled")
	}
	require.Eventually(t, func() bool { return srv.Stats().Connections == 0 }, wait, 5*time.Millisecond)
}

// Query refuses requests whose effect would die with its connection, and
// fails fast while the server is down.
func TestQueryRefusesConnectionBoundRequestsAndFailsFastWhileDown(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr()})
	ctx := ctxWait(t)
	for _, req := range []wire.Request{
		lockReq("k"),
		{Cmd: wire.CmdEnqueue, Key: "k"},
		{Cmd: wire.CmdWait, Key: "k", Timeout: 1},
		{Cmd: wire.CmdListen, Key: "a.>"},
		{Cmd: wire.CmdAuth, Arg: "secret"},
	} {
		_, err := p.Query(ctx, req, 0)
		require.ErrorIs(t, err, wire.ErrInvalidArgument, req.Cmd.String())
	}
	assert.Zero(t, p.Stats().Dials, "refused before any dial")

	r, err := p.Query(ctx, wire.Request{Cmd: wire.CmdPing}, 0)
	require.NoError(t, err)
	assert.Equal(t, wire.StatusOK, r.Status)

	require.NoError(t, srv.Stop())
	_, _, err = p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
	require.ErrorIs(t, err, ErrUnavailable)
	require.Error(t, p.Err(), "precondition: the server is marked down")
	dials := p.Stats().Dials + p.Stats().DialFailures
	_, err = p.Query(ctx, statsReq, 0)
	require.ErrorIs(t, err, ErrUnavailable)
	assert.Equal(t, dials, p.Stats().Dials+p.Stats().DialFailures, "no dial while down")
}

// swallowConn pretends to write a write that starts with prefix and calls
// onSwallow instead: the server never sees the request and never answers.
type swallowConn struct {
	net.Conn
	prefix    []byte
	onSwallow func()
}

func (c *swallowConn) Write(b []byte) (int, error) {
	if bytes.HasPrefix(b, c.prefix) {
		c.onSwallow()
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// A cap too small for the handshake's own replies is refused up front: the
// dial would fail with a line too long, taken for the server being down,
// and a healthy server would be marked down (wire review).
func TestQueryRefusesACapTooSmallForTheHandshake(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	for _, n := range []int{1, minQueryLine - 1} {
		_, err := p.Query(ctxWait(t), statsReq, n)
		var ae *wire.ArgError
		require.ErrorAs(t, err, &ae, "cap %d", n)
		assert.Equal(t, "maxLine", ae.Arg)
	}
	require.NoError(t, p.Err(), "a healthy server was marked down")
	_, err := p.Query(ctxWait(t), wire.Request{Cmd: wire.CmdPing}, minQueryLine)
	require.NoError(t, err, "the smallest cap taken")
}
