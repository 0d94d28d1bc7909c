package dflock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/dflock-sdk/go/testutil"
)

// closeFaultMode is the state of the server (as the Client under test sees it)
// when Close comes.
type closeFaultMode int

const (
	modeHealthy closeFaultMode = iota
	modeBlackhole
	modeReset
	modeLingering   // blackholed until the keepalive gave up on connections
	modePauseResume // blackholed as Close begins, lifted well within its bound
)

func (m closeFaultMode) String() string {
	return [...]string{"healthy", "blackhole", "reset", "lingering", "pause-resume"}[m]
}

// inFlightCall records one call in flight: its name and, once it returned,
// its error and when.
type inFlightCall struct {
	name string
	err  error
	at   time.Time
	done chan struct{}
}

type inFlightCalls struct {
	tq    *Ticket
	tw    *SemaphoreTicket
	sub   *Subscription
	mu    sync.Mutex
	calls []*inFlightCall
	hsMu  sync.Mutex
	hs    []handle
}

func (r *inFlightCalls) start(name string, fn func() error) {
	rc := &inFlightCall{name: name, done: make(chan struct{})}
	r.mu.Lock()
	r.calls = append(r.calls, rc)
	r.mu.Unlock()
	go func() {
		err := fn()
		rc.err, rc.at = err, time.Now()
		close(rc.done)
	}()
}

func (r *inFlightCalls) keep(h handle) {
	r.hsMu.Lock()
	r.hs = append(r.hs, h)
	r.hsMu.Unlock()
}

// startEverythingInFlight starts, on c, one of every kind of call and
// leaves it in flight: held leases (lane and pinned), Lock and Semaphore
// calls queued behind holder's leases, tickets queued, granted and
// waiting, subscriptions (plain, grouped, wildcard) being read, and Emit,
// TryLock and Stats loops. It returns once the blocking calls are queued on
// the server.
func startEverythingInFlight(t *testing.T, ctx context.Context, srv *testutil.Server, holder, c *Client, calls *inFlightCalls, stop <-chan struct{}) (holderHandles []handle) {
	t.Helper()
	// Held by the holder: c's blocking calls queue behind these.
	for i := 0; i < 3; i++ {
		l, err := holder.Lock(ctx, fmt.Sprintf("busy%d", i))
		require.NoError(t, err)
		holderHandles = append(holderHandles, l)
	}
	for i := 0; i < 2; i++ {
		s, err := holder.Semaphore(ctx, "bsem", 2)
		require.NoError(t, err)
		holderHandles = append(holderHandles, s)
	}
	// Held by c: lane grants, a contended Lock's pinned grant, semaphore
	// slots, a ticket acquired at once.
	for i := 0; i < 6; i++ {
		l, err := c.Lock(ctx, fmt.Sprintf("held%d", i))
		require.NoError(t, err)
		calls.keep(l)
	}
	for i := 0; i < 3; i++ {
		s, err := c.Semaphore(ctx, "hsem", 4)
		require.NoError(t, err)
		calls.keep(s)
	}
	ta, err := c.Enqueue(ctx, "tacq")
	require.NoError(t, err)
	require.True(t, ta.Acquired())
	la, err := ta.Wait(ctx)
	require.NoError(t, err)
	calls.keep(la)
	// Tickets queued behind the holder: one never waited on, one waiting.
	tq, err := c.Enqueue(ctx, "busy0")
	require.NoError(t, err)
	require.False(t, tq.Acquired())
	tw, err := c.EnqueueSemaphore(ctx, "bsem", 2)
	require.NoError(t, err)
	require.False(t, tw.Acquired())
	calls.start("ticket wait bsem", func() error {
		s, err := tw.Wait(context.Background())
		if err == nil {
			calls.keep(s)
		}
		return err
	})
	calls.tq, calls.tw = tq, tw
	// Blocking Locks and Semaphores queued behind the holder.
	for i := 0; i < 3; i++ {
		key := fmt.Sprintf("busy%d", i)
		for j := 0; j < 2; j++ {
			calls.start("lock "+key, func() error {
				l, err := c.Lock(context.Background(), key)
				if err == nil {
					calls.keep(l)
				}
				return err
			})
		}
	}
	for j := 0; j < 2; j++ {
		calls.start("semaphore bsem", func() error {
			s, err := c.Semaphore(context.Background(), "bsem", 2)
			if err == nil {
				calls.keep(s)
			}
			return err
		})
	}
	// WithLock whose function runs until its ctx ends.
	calls.start("withlock", func() error {
		return c.WithLock(context.Background(), "wl", func(ctx context.Context) error {
			<-ctx.Done()
			return context.Cause(ctx)
		})
	})
	// Subscriptions, read until they end.
	for _, sc := range []struct {
		pat  string
		opts []ListenOption
	}{{"ev.a", nil}, {"ev.>", nil}, {"ev.a", []ListenOption{Group("g")}}, {"ev.*", []ListenOption{Group("g2")}}} {
		sub, err := c.Listen(ctx, sc.pat, sc.opts...)
		require.NoError(t, err)
		calls.sub = sub
		calls.start("next "+sc.pat, func() error {
			for {
				if _, err := sub.Next(context.Background()); err != nil && !errors.Is(err, ErrSignalGap) {
					return err
				}
			}
		})
	}
	// Loops: each call ends at once after Close.
	loop := func(name string, fn func() error) {
		calls.start(name, func() error {
			for {
				if err := fn(); errors.Is(err, ErrClosed) {
					return err
				}
				select {
				case <-stop:
					return fn()
				default:
				}
			}
		})
	}
	loop("emit", func() error { _, err := c.Emit(context.Background(), "ev.a", "p"); return err })
	loop("trylock", func() error {
		l, err := c.TryLock(context.Background(), "busy1")
		if err == nil {
			calls.keep(l)
		}
		return err
	})
	loop("stats", func() error { _, err := c.Stats(context.Background()); return err })
	loop("listen", func() error {
		s, err := c.Listen(context.Background(), "ev.b", Group("g3"))
		if err == nil {
			_ = s.Close()
		}
		return err
	})
	// Wait until the blocking calls are queued on the server.
	require.Eventually(t, func() bool {
		w := 0
		for i := 0; i < 3; i++ {
			w += lockWaiters(srv, fmt.Sprintf("busy%d", i))
		}
		return w >= 7 && semWaiters(srv, "bsem") >= 3
	}, 5*time.Second, 2*time.Millisecond, "waiters never queued: %+v", srv.Stats())
	return holderHandles
}

// Close with every kind of call in flight on a healthy server with
// auto-release off, called from many goroutines at once and from a hook,
// while the holder releases what c's blocked calls wait for (their grants
// cross Close): every call returns ErrClosed within Close's bound, nothing
// granted to c stays held on the server, the counters balance, and no
// connection, goroutine or FD is left behind.
func TestCloseWithEverythingInFlightHealthyAutoReleaseOff(t *testing.T) {
	for i := 0; i < 3; i++ {
		t.Run(fmt.Sprint(i), func(t *testing.T) { closeEverythingRound(t, modeHealthy) })
		if t.Failed() {
			return
		}
	}
}

// The same with the server paused (a blackhole proxy) or reset as Close
// begins: Close stays within its bound and leaks nothing.
func TestCloseWithEverythingInFlightBlackhole(t *testing.T) {
	closeEverythingRound(t, modeBlackhole)
}

func TestCloseWithEverythingInFlightReset(t *testing.T) {
	closeEverythingRound(t, modeReset)
}

func TestCloseWithEverythingInFlightLingering(t *testing.T) {
	closeEverythingRound(t, modeLingering)
}

// Paused as Close begins and resumed well within DefaultReleaseTimeout,
// while the holder let go of what c's calls were queued for: the server
// answers everything within Close's deadline, so (auto-release off)
// nothing granted to c may stay held.
func TestCloseWithEverythingInFlightPauseResume(t *testing.T) {
	closeEverythingRound(t, modePauseResume)
}

func closeEverythingRound(t *testing.T, mode closeFaultMode) {
	srv := testutil.NewServer(t, testutil.Config{DisableAutoRelease: true})
	ign := goleak.IgnoreCurrent()
	fdBase := chaosFDs()
	px, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	defer px.Close()
	holder, err := New(addrsOf(srv))
	require.NoError(t, err)
	defer holder.Close()

	var c *Client
	var hookCloses atomic.Int64
	hookClose := func() {
		hookCloses.Add(1)
		_ = c.Close()
	}
	c, err = New([]string{px.Addr()}, WithKeepAlive(200*time.Millisecond), WithHooks(Hooks{
		OnConnBroken: func(string, error) { hookClose() },
		OnLeaseLost:  func(LeaseInfo, error) { hookClose() },
	}))
	require.NoError(t, err)
	ctx := testCtx(t)
	calls := &inFlightCalls{}
	stop := make(chan struct{})
	hh := startEverythingInFlight(t, ctx, srv, holder, c, calls, stop)

	switch mode {
	case modeHealthy:
		// The holder lets go: c's queued calls are granted as Close runs.
		for _, h := range hh {
			go func() { _ = h.Release(ctx) }()
		}
	case modeBlackhole:
		px.Blackhole(true)
	case modeReset:
		go px.ResetAll()
	case modeLingering:
		px.Blackhole(true)
		if !waitFor(ctx, 5*time.Second, func() bool { return c.Snapshot().Servers[0].Conns.Lingering > 0 }) {
			t.Fatalf("no connection lingers: %+v", c.Snapshot().Servers[0])
		}
	case modePauseResume:
		// The holder lets go while c cannot hear: the server grants c's
		// queued calls, and c learns of it only once the pause ends,
		// during Close.
		px.Blackhole(true)
		for _, h := range hh {
			require.NoError(t, h.Release(ctx))
		}
		time.AfterFunc(500*time.Millisecond, func() { px.Blackhole(false) })
	}
	start := time.Now()
	const closers = 16
	closeDone := make(chan time.Time, closers)
	for i := 0; i < closers; i++ {
		go func() { _ = c.Close(); closeDone <- time.Now() }()
	}
	// Close's bound: the drain (at once), one DefaultReleaseTimeout for
	// the give-backs, and one for the callbacks; plus slack for -race on
	// a shared 2-CPU machine.
	bound := 2*DefaultReleaseTimeout + 2*time.Second
	timeout := time.After(bound + 5*time.Second)
	var last time.Time
	for i := 0; i < closers; i++ {
		select {
		case at := <-closeDone:
			last = at
		case <-timeout:
			t.Fatalf("%v: Close did not return within %v", mode, bound+5*time.Second)
		}
	}
	t.Logf("%v: Close took %v", mode, last.Sub(start))
	if d := last.Sub(start); d > bound {
		t.Errorf("%v: Close took %v, bound %v", mode, d, bound)
	}
	close(stop)
	// Every call in flight returned, with ErrClosed, by the time Close did.
	calls.mu.Lock()
	cs := append([]*inFlightCall(nil), calls.calls...)
	calls.mu.Unlock()
	for _, rc := range cs {
		select {
		case <-rc.done:
		case <-time.After(5 * time.Second):
			t.Errorf("%v: %s still in flight 5 s after Close returned", mode, rc.name)
			continue
		}
		if rc.at.After(last.Add(100 * time.Millisecond)) {
			t.Errorf("%v: %s returned %v after Close", mode, rc.name, rc.at.Sub(last))
		}
		if rc.err == nil {
			continue // granted before Close: its handle is checked below
		}
		if (mode == modeReset || mode == modeLingering) && (errors.Is(rc.err, ErrLockLost) || errors.Is(rc.err, ErrServerUnavailable)) {
			continue // the reset may come first
		}
		if !errors.Is(rc.err, ErrClosed) && !errors.Is(rc.err, ErrSubscriptionClosed) {
			t.Errorf("%v: %s: %v, want ErrClosed", mode, rc.name, rc.err)
		}
	}
	// Calls after Close.
	callsAfterCloseFail(t, c)
	bg := context.Background()
	if _, err := calls.tq.Wait(bg); !errors.Is(err, ErrClosed) {
		t.Errorf("%v: Ticket.Wait after Close: %v, want ErrClosed", mode, err)
	}
	if _, err := calls.tw.Wait(bg); !errors.Is(err, ErrClosed) {
		t.Errorf("%v: SemaphoreTicket.Wait after Close: %v, want ErrClosed", mode, err)
	}
	if err := calls.tq.Cancel(); err != nil {
		t.Errorf("%v: Ticket.Cancel after Close: %v, want nil", mode, err)
	}
	if err := calls.tw.Cancel(); err != nil {
		t.Errorf("%v: SemaphoreTicket.Cancel after Close: %v, want nil", mode, err)
	}
	if _, err := calls.sub.Next(bg); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrSubscriptionClosed) {
		t.Errorf("%v: Subscription.Next after Close: %v, want ErrClosed and ErrSubscriptionClosed", mode, err)
	}
	if err := calls.sub.Close(); err != nil {
		t.Errorf("%v: Subscription.Close after Close: %v", mode, err)
	}
	calls.hsMu.Lock()
	for _, h := range calls.hs {
		if err := h.Renew(bg); !errors.Is(err, ErrClosed) {
			t.Errorf("%v: %T %q Renew after Close: %v, want ErrClosed", mode, h, h.Key(), err)
		}
		if err := h.Release(bg); err != nil && !errors.Is(err, ErrLockLost) {
			t.Errorf("%v: %T %q Release after Close: %v", mode, h, h.Key(), err)
		}
	}
	calls.hsMu.Unlock()
	// Every handle ended.
	calls.hsMu.Lock()
	for _, h := range calls.hs {
		select {
		case <-h.Done():
		default:
			t.Errorf("%v: %T %q not ended after Close", mode, h, h.Key())
		}
	}
	calls.hsMu.Unlock()
	snap := c.Snapshot()
	if snap.Acquired != snap.Released+snap.Lost || snap.Held != 0 {
		t.Errorf("%v: counters after Close: acquired %d released %d lost %d held %d", mode, snap.Acquired, snap.Released, snap.Lost, snap.Held)
	}
	if ss := snap.Servers[0]; ss.Conns != (ConnCounts{}) || ss.WaitsInFlight != 0 || ss.LeasesHeld != 0 {
		t.Errorf("%v: server snapshot after Close: %+v", mode, ss)
	}
	if mode == modeHealthy || mode == modePauseResume {
		// Nothing of c's is held or queued on the server; only the
		// holder's connections remain.
		ok := waitFor(ctx, 3*time.Second, func() bool { return heldTotal(srv) == 0 })
		if !ok {
			t.Errorf("%v: held on the server after Close (auto-release off): %+v", mode, srv.Stats())
		}
	}
	if mode == modeBlackhole || mode == modeLingering {
		px.Blackhole(false) // the client's closes were held by the partition
	}
	if !waitFor(ctx, 3*time.Second, func() bool { return px.Conns() == 0 }) {
		t.Errorf("%v: %d proxied connections open after Close", mode, px.Conns())
	}
	_ = holder.Close()
	px.Blackhole(false)
	_ = px.Close()
	if !waitFor(ctx, 3*time.Second, func() bool { return srv.Stats().Connections == 0 }) {
		t.Errorf("%v: server connections after both Clients closed: %d", mode, srv.Stats().Connections)
	}
	if err := goleak.Find(ign); err != nil {
		t.Errorf("%v: goroutine leak: %v", mode, err)
	}
	if !waitFor(ctx, 3*time.Second, func() bool { return chaosFDs() <= fdBase+2 }) {
		t.Errorf("%v: FDs grew from %d to %d", mode, fdBase, chaosFDs())
	}
}

// callsAfterCloseFail: every call made after Close fails with ErrClosed.
func callsAfterCloseFail(t *testing.T, c *Client) {
	t.Helper()
	bg := context.Background()
	check := func(name string, err error) {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	_, err := c.Lock(bg, "x")
	check("Lock", err)
	_, err = c.TryLock(bg, "x")
	check("TryLock", err)
	err = c.WithLock(bg, "x", func(context.Context) error { return nil })
	check("WithLock", err)
	_, err = c.Semaphore(bg, "xs", 2)
	check("Semaphore", err)
	err = c.WithSemaphore(bg, "xs", 2, func(context.Context) error { return nil })
	check("WithSemaphore", err)
	_, err = c.Enqueue(bg, "x")
	check("Enqueue", err)
	_, err = c.EnqueueSemaphore(bg, "xs", 2)
	check("EnqueueSemaphore", err)
	_, err = c.Listen(bg, "ev.a")
	check("Listen", err)
	_, err = c.Listen(bg, "ev.a", Group("g"))
	check("Listen group", err)
	_, err = c.Emit(bg, "ev.a", "p")
	check("Emit", err)
	_, err = c.Stats(bg)
	check("Stats", err)
	if err := c.Close(); err != nil {
		t.Errorf("Close again: %v", err)
	}
}
