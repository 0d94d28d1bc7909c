package pool

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// Withdraw half-closes a blocked wait's connection, and reads on until the
// server closes its side, where that can help: a server that watches the
// connection during a wait (one answering ping), and a pool that can
// release a grant elsewhere (OnReleaseLost). Otherwise it closes the
// connection at once, as Destroy does.
func TestWithdrawHalfClosesOnlyWhereAGrantCanStillBeReleased(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		version testutil.Version
		lost    bool
		lingers bool
	}{
		{"v1.16 with OnReleaseLost", testutil.V1_16, true, true},
		{"v1.16 without OnReleaseLost", testutil.V1_16, false, false},
		{"v1.10 (no ping)", testutil.V1_10, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{Version: tc.version})
			cfg := Config{Addr: srv.Addr()}
			released := make(chan wire.Request, 1)
			if tc.lost {
				cfg.OnReleaseLost = func(req wire.Request) { released <- req }
			}
			p := newPool(t, cfg)
			ctx := ctxWait(t)
			held, _, err := p.Do(ctx, lockReq("k"))
			require.NoError(t, err)
			require.Equal(t, wire.StatusOK, held.Status)

			c, err := p.Acquire(ctx)
			require.NoError(t, err)
			wctx, cancel := context.WithCancel(ctx)
			late := make(chan error, 1)
			go func() {
				for waiters(srv, "k") != 1 && ctx.Err() == nil {
					time.Sleep(time.Millisecond)
				}
				cancel()
			}()
			_, answered, err := c.Request(wctx, wire.Request{Cmd: wire.CmdLock, Key: "k", Timeout: 30},
				func(_ int, _ wire.Reply, err error) { late <- err })
			require.False(t, answered)
			require.ErrorIs(t, err, context.Canceled)

			// Stalled, the server acts on the FIN only once resumed, so a
			// connection that lingers is still lingering when counted.
			resume := srv.Stall(0)
			c.Withdraw()
			assert.Equal(t, tc.lingers, p.Stats().LingeringConns == 1, "lingering: %+v", p.Stats())
			resume()
			require.ErrorIs(t, <-late, wire.ErrConnBroken, "the wait's own answer is the withdrawal")
			c.Release() // no-op: the acquisition has ended
			assert.Zero(t, p.Stats().AcquiredConns)
			select {
			case <-c.ReaderDone():
			case <-ctx.Done():
				t.Fatal("the withdrawn connection's reader never exited")
			}
			assert.Zero(t, p.Stats().LingeringConns)
			if tc.version != testutil.V1_10 {
				// (v1.10 keeps an abandoned waiter until its timeout.)
				require.Eventually(t, func() bool { return waiters(srv, "k") == 0 }, wait, 5*time.Millisecond,
					"the server must withdraw the waiter")
			}
			select {
			case req := <-released:
				t.Fatalf("nothing was granted, yet OnReleaseLost got %v", req)
			default:
			}
		})
	}
}

// A withdrawn connection lingers at most withdrawLingerFor, whatever a
// server that never closes its side sends after the FIN: nothing, a flood
// of pushes (skipped, so they cannot extend it), or a line that is no
// reply to the wait (which ends the linger at once). Nothing it read is
// taken for a grant.
func TestWithdrawnConnLingersBoundedWhateverTheServerSends(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		after func(c net.Conn, stop <-chan struct{})
	}{
		{"silent", func(_ net.Conn, stop <-chan struct{}) { <-stop }},
		{"flooding pushes", func(c net.Conn, stop <-chan struct{}) {
			push := []byte(strings.Repeat("sig ch payload\n", 64))
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Write(push); err != nil {
					return // the client closed the socket
				}
			}
		}},
		{"garbage", func(c net.Conn, stop <-chan struct{}) {
			_, _ = io.WriteString(c, "what?\nok tok 30\n")
			<-stop
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			waiting := make(chan struct{})
			stop := make(chan struct{})
			addr := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
				for {
					cmd, err := readRequest(r)
					if err != nil {
						return
					}
					if cmd == wire.CmdPing.String() {
						_, _ = io.WriteString(c, "ok\n")
						continue
					}
					break // the wait: never answered
				}
				close(waiting)
				_, _ = io.Copy(io.Discard, r) // until the client's FIN
				tc.after(c, stop)
			})
			t.Cleanup(func() { close(stop) }) // before the server's: its handler waits on stop
			lost := make(chan wire.Request, 1)
			p := newPool(t, Config{Addr: addr, OnReleaseLost: func(req wire.Request) { lost <- req }})
			ctx := ctxWait(t)
			c, err := p.Acquire(ctx)
			require.NoError(t, err)
			wctx, cancel := context.WithCancel(ctx)
			go func() {
				select {
				case <-waiting:
				case <-ctx.Done():
				}
				cancel()
			}()
			_, answered, err := c.Request(wctx, wire.Request{Cmd: wire.CmdLock, Key: "k", Timeout: 30},
				func(int, wire.Reply, error) {})
			require.False(t, answered)
			require.ErrorIs(t, err, context.Canceled)
			require.True(t, c.c.supportsPing(), "the server answered the handshake's ping")

			c.Withdraw()
			if tc.name != "garbage" { // (which may end it before it is counted)
				assert.Equal(t, 1, p.Stats().LingeringConns, "it lingers")
			}
			c.Release()
			select {
			case <-c.ReaderDone():
			case <-time.After(withdrawLingerFor + wait):
				t.Fatalf("the withdrawn connection still lingers %v after Withdraw: %+v",
					withdrawLingerFor+wait, p.Stats())
			}
			assert.Zero(t, p.Stats().LingeringConns)
			select {
			case req := <-lost:
				t.Fatalf("nothing was granted, yet OnReleaseLost got %v", req)
			default:
			}
		})
	}
}

// Lingering sockets are outside every cap, so their number is bounded on
// its own, at what the pool may have open in its roles (MaxConns +
// LaneConns): a server that never closes its side of a withdrawn wait
// (v1.14, or a path that swallows the FIN) would otherwise let them pile up
// with the rate of cancelled waits, to the process's descriptor limit
// (found by review: 1,313 lingering with a cap of 4). A withdrawal past the
// bound closes at once, as one to a server without ping does.
func TestWithdrawnConnsLingerNoMoreThanThePoolsConnections(t *testing.T) {
	t.Parallel()
	addr := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
		for {
			cmd, err := readRequest(r)
			if err != nil {
				break
			}
			if cmd == wire.CmdPing.String() {
				_, _ = io.WriteString(c, "ok\n")
			} // a wait: never answered
		}
		_, _ = io.Copy(io.Discard, r) // v1.14: the FIN changes nothing
		<-t.Context().Done()
	})
	p := newPool(t, Config{Addr: addr, MaxConns: 1, LaneConns: 1, OnReleaseLost: func(wire.Request) {}})
	const limit = 2
	ctx := ctxWait(t)
	refused := false
	for i := 0; i < 50 && !refused; i++ {
		h, err := p.Acquire(ctx)
		require.NoError(t, err)
		wctx, cancel := context.WithCancel(ctx)
		res := make(chan error, 1)
		go func() {
			_, _, err := h.Request(wctx, wire.Request{Cmd: wire.CmdLock, Key: "k", Timeout: 30}, func(int, wire.Reply, error) {})
			res <- err
		}()
		require.Eventually(t, func() bool {
			h.c.mu.Lock()
			defer h.c.mu.Unlock()
			return h.c.onWireLocked() == 1
		}, wait, time.Millisecond, "the wait is written")
		cancel()
		require.ErrorIs(t, result(t, res, "Request"), context.Canceled)
		before := p.Stats().LingeringConns
		h.Withdraw()
		h.c.mu.Lock()
		lingers := !h.c.lingerUntil.IsZero()
		h.c.mu.Unlock()
		h.Release()
		require.LessOrEqual(t, p.Stats().LingeringConns, limit, "withdrawal %d", i)
		if before >= limit {
			require.False(t, lingers, "withdrawal %d lingers with %d lingering already", i, before)
			select {
			case <-h.ReaderDone():
			case <-time.After(wait):
				t.Fatalf("withdrawal %d past the bound was not closed", i)
			}
			refused = true
		} else {
			require.True(t, lingers, "withdrawal %d, %d lingering: within the bound it lingers", i, before)
		}
	}
	require.True(t, refused, "no withdrawal met the bound")
}
