package dflock

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"sync"
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

// A log handler that blocks must not stall the goroutines that renew leases
// or read their replies: lease a's loss is logged (and blocks the handler),
// and lease b, on the same lane connection, keeps being renewed.
//
// The scheduler runs on a clock of the test's (the server keeps the real
// one, and the 10 s leases outlast the test on it): each step lets one
// renewal interval pass, once the previous renewal has been answered.
func TestBlockedLogHandlerDoesNotLoseOtherLeases(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	h := newStuckWarnHandler()
	defer close(h.release)
	clk := testutil.NewManualClock(time.Now().Round(0))
	// Renewals every 500 ms of the scheduler's clock (as much slack before
	// a loss as the default ratio leaves a 2 s lease).
	const ttl, interval = 10 * time.Second, 500 * time.Millisecond
	// Close waits for the stuck handler at most callbackWait, not the
	// default DefaultReleaseTimeout: the test proves that the wait is
	// bounded, and that does not need the full default bound.
	c := newClient(t, []string{srv.Addr()}, WithLogger(slog.New(h)), WithLaneConns(1),
		WithRenewRatio(float64(interval)/float64(ttl)), withClock(clk), withCallbackWait(50*time.Millisecond))
	ctx := testCtx(t)

	a, err := c.TryLock(ctx, "a", LeaseTTL(ttl))
	require.NoError(t, err)
	b, err := c.TryLock(ctx, "b", LeaseTTL(ttl))
	require.NoError(t, err)
	require.Same(t, a.h.owner, b.h.owner, "both leases must be owned by the one lane connection")

	releaseBehindClientsBack(t, srv.Addr(), "a", a.Token())
	require.False(t, stepRenewals(t, ctx, c, clk, interval, 1<<30, a.Done()))
	require.ErrorIs(t, a.Err(), ErrLockLost, "lease a was not lost by its refused renewal")
	select {
	case <-h.blocked:
	case <-ctx.Done():
		t.Fatal("the loss of a was never logged at Warn")
	}
	// The handler is now stuck. Renewals of b confirmed over more than its
	// TTL prove that nothing waits for the handler.
	require.True(t, stepRenewals(t, ctx, c, clk, interval, int64(ttl/interval)+5, b.Done()),
		"lease b was lost while the log handler blocked: %v", b.Err())
	assert.NoError(t, b.Err())
	require.NoError(t, b.Release(ctx))

	// Nor does the Client's own work: losses are delivered (and Close waits
	// for them) on a goroutine the handler must not hold either. Close
	// returns, at most callbackWait late for the stuck record.
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
	clk := testutil.NewManualClock(time.Now().Round(0))
	const ttl, interval = 10 * time.Second, 500 * time.Millisecond
	c := newClient(t, []string{srv.Addr()}, WithHooks(hooks), WithLaneConns(1),
		WithRenewRatio(float64(interval)/float64(ttl)), withClock(clk))
	defer close(release)
	ctx := testCtx(t)

	a, err := c.TryLock(ctx, "a", LeaseTTL(ttl))
	require.NoError(t, err)
	b, err := c.TryLock(ctx, "b", LeaseTTL(ttl))
	require.NoError(t, err)
	releaseBehindClientsBack(t, srv.Addr(), "a", a.Token())
	require.False(t, stepRenewals(t, ctx, c, clk, interval, 1<<30, a.Done()))
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("OnLeaseLost was not called for a")
	}
	require.True(t, stepRenewals(t, ctx, c, clk, interval, int64(ttl/interval)+5, b.Done()),
		"lease b was lost while a hook blocked: %v", b.Err())

	// Flood the stuck callback goroutine: the excess is counted, nothing
	// waits for it.
	for range dispatchQueueLen + 10 {
		c.disp.do(func() {})
	}
	assert.GreaterOrEqual(t, c.localStats(Stats{Servers: make([]ServerStats, 1)}).Client.CallbacksDropped, int64(10))
	require.NoError(t, b.Release(ctx))
}

// mutexHandler is a common hand-written slog handler: one mutex guards its
// level and its sink, so Enabled and Handle both take it. Its sink is stuck:
// the first Handle holds the mutex until release is closed.
type mutexHandler struct {
	mu      sync.Mutex
	release chan struct{}
	stuck   chan struct{} // closed when the first Handle blocks
	once    sync.Once
}

func (h *mutexHandler) Enabled(context.Context, slog.Level) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return true
}
func (h *mutexHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *mutexHandler) WithGroup(string) slog.Handler      { return h }
func (h *mutexHandler) Handle(context.Context, slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.once.Do(func() { close(h.stuck) })
	<-h.release
	return nil
}

// The handler's Enabled is user code too: a reader that logs must not call
// it. Here the lane reader releases grants whose callers gave up, and logs
// each; with the handler stuck in Handle (holding the mutex its Enabled
// takes), a reader asking Enabled would stop reading, and every reply on
// the lane — renewals included — would wait with it. Likewise the loss
// notifier, which Close waits for.
func TestLogHandlerEnabledNeverRunsOnTheClientsGoroutines(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	h := &mutexHandler{release: make(chan struct{}), stuck: make(chan struct{})}
	defer close(h.release)
	c := newClient(t, []string{p.Addr()}, WithLogger(slog.New(h)), WithLaneConns(1),
		withCallbackWait(50*time.Millisecond))
	ctx := testCtx(t)
	a, err := c.TryLock(ctx, "a", LeaseTTL(2*time.Second)) // renewed, and its loss found, within a second
	require.NoError(t, err)

	// Two tries given up before their grants arrive: the reader releases
	// each grant and logs it.
	p.SetLatency(150 * time.Millisecond)
	for _, k := range []string{"x", "y"} {
		tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		_, err := c.TryLock(tctx, k)
		cancel()
		require.Error(t, err)
	}
	select {
	case <-h.stuck:
	case <-ctx.Done():
		t.Fatal("no record reached the handler")
	}
	p.SetLatency(0)
	require.Eventually(t, func() bool { return heldTotal(srv) == 1 }, 5*time.Second, time.Millisecond,
		"the abandoned grants were not released")

	// The lane still answers: its reader is not waiting for the handler.
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	z, err := c.TryLock(tctx, "z")
	require.NoError(t, err, "the lane's reader is stuck in the log handler")
	require.NoError(t, z.Release(tctx))

	// A loss is logged by the notifier, which Close waits for.
	releaseBehindClientsBack(t, srv.Addr(), "a", a.Token())
	select {
	case <-a.Done():
	case <-ctx.Done():
		t.Fatal("the loss of a was not noticed")
	}
	closed := make(chan struct{})
	go func() { _ = c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waits for the stuck log handler")
	}
}
