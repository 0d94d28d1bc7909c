package dflock

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// stuckWarnHandler is a slog handler whose Handle blocks at Warn and above
// until release is closed (a full stderr pipe, a stuck network log sink).
type stuckWarnHandler struct {
	release chan struct{}
	blocked chan struct{} // closed the first time Handle blocks
	once    atomic.Bool
}

func newStuckWarnHandler() *stuckWarnHandler {
	return &stuckWarnHandler{release: make(chan struct{}), blocked: make(chan struct{})}
}

func (h *stuckWarnHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *stuckWarnHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *stuckWarnHandler) WithGroup(string) slog.Handler            { return h }
func (h *stuckWarnHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return nil
	}
	if h.once.CompareAndSwap(false, true) {
		close(h.blocked)
	}
	<-h.release
	return nil
}

// releaseBehindClientsBack releases key with token on a connection of its
// own, as any holder of the token may: the Client's next renewal of it is
// then refused.
func releaseBehindClientsBack(t *testing.T, addr, key, token string) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer nc.Close()
	_, err = nc.Write([]byte("r\n" + key + "\n" + token + "\n"))
	require.NoError(t, err)
	line, err := bufio.NewReader(nc).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ok\n", line)
}

// awaitRenewals waits until the scheduler has confirmed n more renewals
// than it had at the call, or until done closes. It reports whether the
// renewals came first.
func awaitRenewals(c *Client, n int64, done <-chan struct{}) bool {
	target := c.renewStats().Renewed + n
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for c.renewStats().Renewed < target {
		select {
		case <-done:
			return false
		case <-tick.C:
		}
	}
	return true
}

// A log handler that blocks must not stall the goroutines that renew leases
// or read their replies: lease a's loss is logged (and blocks the handler),
// and lease b, on the same lane connection, keeps being renewed.
func TestBlockedLogHandlerDoesNotLoseOtherLeases(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	h := newStuckWarnHandler()
	defer close(h.release)
	// Renewals every ~50 ms (as much slack before a loss as the default
	// ratio leaves a 2 s lease), so that many happen while the handler blocks.
	c := newClient(t, []string{srv.Addr()}, WithLogger(slog.New(h)), WithLaneConns(1), WithRenewRatio(0.05))
	ctx := testCtx(t)

	a, err := c.TryLock(ctx, "a", LeaseTTL(time.Second))
	require.NoError(t, err)
	b, err := c.TryLock(ctx, "b", LeaseTTL(time.Second))
	require.NoError(t, err)
	require.Same(t, a.h.owner, b.h.owner, "both leases must be owned by the one lane connection")

	releaseBehindClientsBack(t, srv.Addr(), "a", a.Token())
	select {
	case <-a.Done():
	case <-ctx.Done():
		t.Fatal("lease a was not reported lost after its renewal was refused")
	}
	select {
	case <-h.blocked:
	case <-ctx.Done():
		t.Fatal("the loss of a was never logged at Warn")
	}
	// The handler is now stuck. Renewals of b confirmed over more than its
	// 1 s TTL prove that nothing waits for the handler.
	require.True(t, awaitRenewals(c, 25, b.Done()), "lease b was lost while the log handler blocked: %v", b.Err())
	assert.NoError(t, b.Err())
	require.NoError(t, b.Release(ctx))

	// Nor does the Client's own work: losses are delivered (and Close waits
	// for them) on a goroutine the handler must not hold either. Close
	// returns, at most DefaultReleaseTimeout late for the stuck record.
	closed := make(chan struct{})
	go func() { _ = c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("Close waited for a stuck log handler")
	}
}

// The same for hooks: an OnLeaseLost that blocks delays other callbacks,
// never renewals; callbacks past the queue bound are dropped and counted.
func TestBlockedHookDoesNotLoseOtherLeases(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	hooks := Hooks{
		OnLeaseLost: func(LeaseInfo, error) {
			select {
			case entered <- struct{}{}:
			default:
			}
			<-release
		},
		OnConnBroken: func(string, error) {},
	}
	c := newClient(t, []string{srv.Addr()}, WithHooks(hooks), WithLaneConns(1), WithRenewRatio(0.05))
	defer close(release)
	ctx := testCtx(t)

	a, err := c.TryLock(ctx, "a", LeaseTTL(time.Second))
	require.NoError(t, err)
	b, err := c.TryLock(ctx, "b", LeaseTTL(time.Second))
	require.NoError(t, err)
	releaseBehindClientsBack(t, srv.Addr(), "a", a.Token())
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("OnLeaseLost was not called for a")
	}
	require.True(t, awaitRenewals(c, 25, b.Done()), "lease b was lost while a hook blocked: %v", b.Err())

	// Flood the stuck callback goroutine: the excess is counted, nothing
	// waits for it.
	for range dispatchQueueLen + 10 {
		c.disp.do(func() {})
	}
	assert.GreaterOrEqual(t, c.localStats(Stats{Servers: make([]ServerStats, 1)}).Client.CallbacksDropped, int64(10))
	require.NoError(t, b.Release(ctx))
}
