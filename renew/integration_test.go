package renew

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// wireOwner is a minimal pipelined Owner on a wire.Conn: SendBatch writes
// under a mutex and queues the callbacks; one reader answers them in FIFO
// order (what *pool.Conn does, without the pool).
type wireOwner struct {
	c       *wire.Conn
	mu      sync.Mutex
	pending chan pendingReply
	closed  bool
	readerQ chan struct{}
}

type pendingReply struct {
	cmd  wire.Command
	i    int
	done func(int, wire.Reply, error)
}

func dialOwner(t *testing.T, addr string) *wireOwner {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	o := &wireOwner{c: wire.NewConn(nc, wire.ConnOptions{}), pending: make(chan pendingReply, 4096), readerQ: make(chan struct{})}
	go func() {
		defer close(o.readerQ)
		for p := range o.pending {
			r, err := o.c.ReadReply(p.cmd)
			p.done(p.i, r, err)
		}
	}()
	t.Cleanup(o.close)
	return o
}

func (o *wireOwner) SendBatch(reqs []wire.Request, done func(int, wire.Reply, error)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		for i := range reqs {
			done(i, wire.Reply{}, wire.ErrConnBroken)
		}
		return
	}
	for i, r := range reqs {
		o.pending <- pendingReply{cmd: r.Cmd, i: i, done: done}
	}
	_ = o.c.WriteRequests(reqs...) // a failure surfaces through the reader
}

func (o *wireOwner) do(req wire.Request) (wire.Reply, error) {
	type res struct {
		r   wire.Reply
		err error
	}
	ch := make(chan res, 1)
	o.SendBatch([]wire.Request{req}, func(_ int, r wire.Reply, err error) { ch <- res{r, err} })
	x := <-ch
	return x.r, x.err
}

func (o *wireOwner) Err() error { return o.c.Err() }

func (o *wireOwner) close() {
	o.mu.Lock()
	if !o.closed {
		o.closed = true
		_ = o.c.Close()
		close(o.pending)
	}
	o.mu.Unlock()
	<-o.readerQ
}

// TestRealServerRenewalKeepsALeasePastItsTTL shows that renewals from the
// scheduler (n with the TTL) keep a 2 s lease alive on a real in-process
// server for two TTLs, while an untracked 1 s lease on the same server
// expires. The keepalive renews every 200 ms, so a loaded machine has
// 1.6 s to get each renewal through, not a fraction of a second.
func TestRealServerRenewalKeepsALeasePastItsTTL(t *testing.T) {
	t.Parallel()
	srv := testutil.NewServer(t, testutil.Config{SweepInterval: 100 * time.Millisecond})
	holder := dialOwner(t, srv.Addr())
	other := dialOwner(t, srv.Addr())
	s := newTestScheduler(t, Config{KeepAlive: 200 * time.Millisecond})

	acquire := func(key string, lease int64) (wire.Reply, time.Time) {
		sent := time.Now()
		r, err := holder.do(wire.Request{Cmd: wire.CmdLock, Key: key, Timeout: 0, Lease: lease})
		require.NoError(t, err)
		require.Equal(t, wire.StatusOK, r.Status, "grant of %s", key)
		return r, sent
	}
	g, sent := acquire("renewed", 2)
	l := s.Track(Spec{Key: "renewed", Token: g.Token, TTL: time.Duration(g.Lease) * time.Second, Owner: holder, Sent: sent})
	acquire("control", 1) // not tracked: expires after 1 s

	// Time passing is the subject: hold for 2 TTLs.
	time.Sleep(time.Until(sent.Add(2 * l.TTL())))

	require.NoError(t, l.Err())
	assert.GreaterOrEqual(t, s.Stats().Renewed, int64(2), "a 2 s lease held for 4 s")
	r, err := other.do(wire.Request{Cmd: wire.CmdLock, Key: "renewed", Timeout: 0, Lease: 5})
	require.NoError(t, err)
	assert.Equal(t, wire.StatusTimeout, r.Status, "a renewed lease must still be held")
	// The control expired 3 s ago; the server's sweeper frees it.
	deadline := time.Now().Add(waitShort)
	for {
		r, err = other.do(wire.Request{Cmd: wire.CmdLock, Key: "control", Timeout: 0, Lease: 5})
		require.NoError(t, err)
		if r.Status == wire.StatusOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling the server's state
	}
	assert.Equal(t, wire.StatusOK, r.Status, "an unrenewed 1 s lease must have expired")

	// Explicit renew, then release.
	require.NoError(t, l.Renew(context.Background()))
	require.True(t, l.Untrack())
	r, err = holder.do(wire.Request{Cmd: wire.CmdRelease, Key: "renewed", Token: g.Token})
	require.NoError(t, err)
	assert.Equal(t, wire.StatusOK, r.Status)
}

// TestRealServerOwnerCloseLosesTheLease: closing the owning connection makes
// the server auto-release; the next renewal (within the 100 ms keepalive)
// fails and the lease is lost for that reason, long before its loss
// deadline by the clock (9 s). Its batch is reported as failed, and
// counted as unanswered.
func TestRealServerOwnerCloseLosesTheLease(t *testing.T) {
	t.Parallel()
	srv := testutil.NewServer(t, testutil.Config{SweepInterval: 100 * time.Millisecond})
	holder := dialOwner(t, srv.Addr())
	rec := make(batchRecorder, 16)
	var c Counters
	s := newTestScheduler(t, Config{KeepAlive: 100 * time.Millisecond, OnBatch: rec.onBatch})
	sent := time.Now()
	g, err := holder.do(wire.Request{Cmd: wire.CmdLock, Key: "k", Timeout: 0, Lease: 10})
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, g.Status)
	l := s.Track(Spec{Key: "k", Token: g.Token, TTL: 10 * time.Second, Owner: holder, Sent: sent, Counters: &c})
	holder.close()
	waitDone(t, l, waitShort)
	assert.ErrorIs(t, l.Err(), ErrLost)
	assert.ErrorIs(t, l.Err(), ErrOwnerFailed)

	// Renewals answered before the close are batches of their own.
	var b BatchInfo
	for b = rec.next(t); b.Err == nil; b = rec.next(t) {
		assert.Equal(t, BatchInfo{Counters: &c, Size: 1, Renewed: 1, Latency: b.Latency}, b)
	}
	assert.Equal(t, 1, b.Size)
	assert.Zero(t, b.Renewed+b.Refused)
	assert.Error(t, b.Err)
	assert.Equal(t, int64(1), c.Unanswered.Load())
	assert.Equal(t, int64(1), c.Lost.Load())
	assert.Equal(t, c.Sent.Load(), c.Renewed.Load()+c.Unanswered.Load())
}
