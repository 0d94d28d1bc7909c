package pool

import (
	"context"
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
