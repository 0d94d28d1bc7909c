package pool

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// tlsStallPool is a TLS pool whose connections can be made to stop taking
// writes (a server that stopped reading, its receive window closed).
func tlsStallPool(t *testing.T, sd *stallDialer) (*testutil.Server, *Pool) {
	certs, err := testutil.NewTLSCerts()
	require.NoError(t, err)
	srv := newServer(t, testutil.Config{TLS: certs.ServerConfig()})
	return srv, newPool(t, Config{Addr: srv.Addr(), Dial: sd.dial, LaneConns: 1, TLS: certs.ClientConfig()})
}

// wroteWhileStalled reports whether anything tried to write on the
// connection after stall.
func wroteWhileStalled(blocked <-chan struct{}) bool {
	select {
	case <-blocked:
		return true
	default:
		return false
	}
}

// Closing a TLS connection writes nothing. crypto/tls's Close sends a
// close_notify alert under a 5 s write deadline of its own: with the
// peer's window closed it waited those 5 s, once per connection, in
// Pool.Close (and in every report of a broken connection).
func TestClosingStalledTLSConnectionsWritesNothing(t *testing.T) {
	var sd stallDialer
	_, p := tlsStallPool(t, &sd)
	_, _, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing}) // the lane connection
	require.NoError(t, err)
	c, err := p.Acquire(ctxWait(t)) // a wait-pool connection, then idle
	require.NoError(t, err)
	c.Release()
	lane, idle := sd.conn(0).stall(), sd.conn(1).stall()

	p.Close()
	require.False(t, wroteWhileStalled(lane), "Close wrote on the lane connection")
	require.False(t, wroteWhileStalled(idle), "Close wrote on the idle connection")
}

// A caller whose context ends while its blocking wait is queued on a TLS
// connection that stopped taking writes returns when its context ends: the
// withdrawal (half-close, then close) writes nothing. It used to return
// after the close_notify alert's 5 s.
func TestTLSWaitWhoseCtxEndsOnAStalledConnectionWritesNothing(t *testing.T) {
	var sd stallDialer
	srv, p := tlsStallPool(t, &sd)
	_, _, err := p.Do(ctxWait(t), lockReq("held")) // the lane holds "held"
	require.NoError(t, err)
	c, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	defer c.Release()

	ctx, cancel := context.WithCancel(ctxWait(t))
	defer cancel()
	stalled := make(chan (<-chan struct{}), 1)
	go func() {
		defer cancel()
		for waiters(srv, "held") != 1 {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
		stalled <- sd.conn(1).stall()
	}()
	_, err = c.Do(ctx, wire.Request{Cmd: wire.CmdLock, Key: "held", Timeout: 10})
	require.ErrorIs(t, err, context.Canceled)
	select {
	case blocked := <-stalled:
		require.False(t, wroteWhileStalled(blocked), "the withdrawal wrote on the stalled connection")
	default:
		t.Fatal("the wait never queued on the server")
	}
}
