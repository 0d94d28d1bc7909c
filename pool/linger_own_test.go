//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// gatedServer answers ping at once and every l request with a grant
// (token "tok-<key>") only once gate[key] is closed.
func gatedServer(t *testing.T, keys ...string) (string, map[string]chan struct{}) {
	t.Helper()
	gates := make(map[string]chan struct{}, len(keys))
	for _, k := range keys {
		gates[k] = make(chan struct{})
	}
	quit := make(chan struct{})
	addr := testutil.ServeRequests(t, func(nc net.Conn, req [3]string) bool {
		switch req[0] {
		case "ping":
			_, err := nc.Write([]byte("ok\n"))
			return err == nil
		case "l":
			g, ok := gates[req[1]]
			if !ok {
				return false
			}
			select {
			case <-g:
			case <-quit:
				return false
			}
			_, err := nc.Write([]byte("ok tok-" + req[1] + " 30\n"))
			return err == nil
		}
		return false
	})
	t.Cleanup(func() { close(quit) }) // runs before ServeRaw's cleanup
	return addr, gates
}

// The keepalive cuts a connection (errNoReply) whose caller has just read
// its own reply (a grant), before finishOwn takes c.mu, while another
// grant-carrying request written behind it is still unanswered. The
// connection lingers so that the second grant reaches OnReleaseLost.
// lingersLocked forced the read deadline into the past for the caller
// (c.own != nil); finishOwn's broken branch must clear it before it hands
// the socket on, or linger's first read fails at once, the socket closes,
// and the second grant is held by nobody (found in review: it did not). It
// looks at every goroutine's stack (breakAsTheGrantIsRead), so it is not
// parallel.
func TestLingerAfterOwnReadKeepsReadingOrphans(t *testing.T) {
	addr, gates := gatedServer(t, "a", "b")
	lost := make(chan wire.Request, 8)
	p := newPool(t, Config{Addr: addr, LaneConns: 1, KeepAlive: time.Hour,
		OnReleaseLost: func(req wire.Request) { lost <- req }})
	ctx := ctxWait(t)
	h, err := p.Acquire(ctx)
	require.NoError(t, err)
	defer h.Destroy()
	c := h.c
	settle(t, c)

	type res struct {
		r   wire.Reply
		err error
	}
	do := func(key string) <-chan res {
		ch := make(chan res, 1)
		go func() {
			r, _, _, err := c.do(ctx, &wire.Request{Cmd: wire.CmdLock, Key: key, Lease: 30}, "")
			ch <- res{r, err}
		}()
		return ch
	}
	resA := do("a")
	awaitReading(t, c)
	resB := do("b")
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.onWireLocked() == 2 && !c.flushing
	}, wait, time.Millisecond, "b is written behind a")

	// The keepalive's fail queues on c.mu first; then a's reply arrives
	// and its caller, having read it, queues behind.
	breakAsTheGrantIsRead(t, c, func() { close(gates["a"]) }, "(*conn).finishOwn")

	require.ErrorIs(t, result(t, resA, "do a").err, errNoReply)
	require.ErrorIs(t, result(t, resB, "do b").err, errNoReply)
	relA := result(t, lost, "OnReleaseLost for a")
	assert.Equal(t, "a", relA.Key)

	close(gates["b"]) // the server answers b: the lingering reader must read it
	require.Eventually(t, c.readerExited, wait, time.Millisecond)
	select {
	case rel := <-lost:
		assert.Equal(t, "b", rel.Key)
	default:
		t.Fatal("b's grant, answered on the lingering connection, never reached OnReleaseLost: the linger ended at once")
	}
}
