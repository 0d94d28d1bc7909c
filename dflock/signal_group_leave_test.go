package dflock

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// consumeAll reads s.C until it is closed, counting signals; a gap fails
// the test (nothing breaks here).
func consumeAll(t *testing.T, s *Subscription, got *atomic.Int64, wg *sync.WaitGroup) {
	wg.Go(func() {
		for sig := range s.C() {
			if sig.Err != nil {
				t.Errorf("unexpected gap: %v", sig.Err)
				continue
			}
			got.Add(1)
		}
	})
}

// emitN emits on channel from n goroutines until stop is called, and
// returns the sum of Emit's counts (jobs the server queued for a member).
func emitN(ctx context.Context, c *Client, channel string, n int) (stop func() int64) {
	var counted atomic.Int64
	pctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for p := range n {
		wg.Go(func() {
			for i := 0; pctx.Err() == nil; i++ {
				if k, err := c.Emit(ctx, channel, strconv.Itoa(p)+"."+strconv.Itoa(i)); err == nil {
					counted.Add(int64(k))
				}
			}
		})
	}
	return func() int64 {
		cancel()
		wg.Wait()
		return counted.Load()
	}
}

// Members of a queue group join and leave one Client while jobs are
// emitted, one member staying throughout. Every job the server queued for
// one of the Client's members (Emit's count) is received by a member or
// counted dropped: the jobs the server sends a leaving member's connection
// before it withdraws it go to the member that stays (found by review:
// they were read and thrown away, uncounted). Buffer(32) keeps every
// queued signal in C, which the consumer reads until it closes.
func TestGroupMembersLeavingLoseNoJobUncounted(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{PushBuffer: 4096})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	var got atomic.Int64
	var cwg sync.WaitGroup
	stays, err := c.Listen(ctx, "jobs", Group("g"), Buffer(32))
	require.NoError(t, err)
	consumeAll(t, stays, &got, &cwg)

	stop := emitN(ctx, c, "jobs", 4)
	for range 20 {
		m, err := c.Listen(ctx, "jobs", Group("g"), Buffer(32))
		require.NoError(t, err)
		consumeAll(t, m, &got, &cwg)
		time.Sleep(10 * time.Millisecond)
		require.NoError(t, m.Close())
	}
	counted := stop()
	require.NoError(t, stays.Close())
	cwg.Wait()
	// Every member connection, withdrawn, has closed: nothing more arrives.
	require.Eventually(t, func() bool { return listenerConns(c) == 0 }, testTimeout, 5*time.Millisecond)
	dropped := c.Snapshot().SignalsDropped
	t.Logf("server counted %d, received %d, dropped %d", counted, got.Load(), dropped)
	require.Equal(t, counted, got.Load()+dropped, "jobs queued for this Client's members vanished without a count")
}

// The last member of a group in a Client leaves while jobs are emitted:
// what the server had already queued for it is nobody's in this Client, and
// is counted dropped, not lost silently.
func TestGroupLastMemberLeavingCountsWhatWasQueuedForIt(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{PushBuffer: 4096})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	var got atomic.Int64
	var cwg sync.WaitGroup
	m, err := c.Listen(ctx, "jobs", Group("g"), Buffer(32))
	require.NoError(t, err)
	consumeAll(t, m, &got, &cwg)
	stop := emitN(ctx, c, "jobs", 4)
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, m.Close())
	require.Eventually(t, func() bool { return groupListeners(srv, "jobs", "g") == 0 }, testTimeout, 5*time.Millisecond)
	counted := stop()
	cwg.Wait()
	require.Eventually(t, func() bool { return listenerConns(c) == 0 }, testTimeout, 5*time.Millisecond)
	dropped := c.Snapshot().SignalsDropped
	t.Logf("server counted %d, received %d, dropped %d", counted, got.Load(), dropped)
	require.Equal(t, counted, got.Load()+dropped, "jobs queued for the member vanished without a count")
}

// listenerConns is the number of c's open signal listener connections.
func listenerConns(c *Client) (n int) {
	for _, s := range c.Snapshot().Servers {
		n += s.Conns.Listener
	}
	return n
}

// Client.Close does not wait for the withdrawal of a group member's
// connection: with the server stalled, the unlisten is never answered, and
// Close ends the withdrawal at once rather than after withdrawFor.
func TestCloseCutsAGroupConnectionsWithdrawalShort(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c, err := New(addrsOf(srv))
	require.NoError(t, err)
	ctx := testCtx(t)
	m, err := c.Listen(ctx, "jobs", Group("g"))
	require.NoError(t, err)
	resume := srv.Stall(0)
	defer resume()
	require.NoError(t, m.Close())
	// The supervisor has sent the unlisten when the listener has left the
	// hub; its connection is still open, waiting for the answer.
	require.Eventually(t, func() bool {
		c.signals.mu.Lock()
		defer c.signals.mu.Unlock()
		return len(c.signals.listeners) == 0
	}, testTimeout, time.Millisecond)
	require.Equal(t, 1, listenerConns(c), "the withdrawn connection waits for the unlisten's answer")
	start := time.Now()
	require.NoError(t, c.Close())
	require.Less(t, time.Since(start), withdrawFor, "Close waited for the withdrawal")
	require.Zero(t, listenerConns(c))
}

// Members of queue groups leave and join at once, over and over, while jobs
// are emitted and one member of each group stays throughout. The joiner
// takes the leaver's connection (memberListenerLocked prefers a connection
// whose members all left and that has not retired yet), so the supervisor,
// woken by the leave, sometimes finds a member there when retire looks and
// none when its sync looks a moment later (the joiner left again). That
// connection too must be withdrawn, its late jobs forwarded (found by
// review: the sync unlistened and forgot the pattern itself, and the jobs
// read afterwards were thrown away uncounted, 1–86 a run).
func TestGroupRejoinChurnLosesNoJobUncounted(t *testing.T) {
	t.Parallel()
	const groups = 4
	srv := newServer(t, testutil.Config{PushBuffer: 4096})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	var got atomic.Int64
	var cwg sync.WaitGroup
	var stays []*Subscription
	for g := range groups {
		s, err := c.Listen(ctx, "jobs", Group("g"+strconv.Itoa(g)), Buffer(32))
		require.NoError(t, err)
		consumeAll(t, s, &got, &cwg)
		stays = append(stays, s)
	}

	stop := emitN(ctx, c, "jobs", 2)
	deadline := time.Now().Add(2 * time.Second)
	var churn sync.WaitGroup
	for g := range groups {
		churn.Go(func() {
			for time.Now().Before(deadline) {
				m, err := c.Listen(ctx, "jobs", Group("g"+strconv.Itoa(g)), Buffer(32))
				if err != nil {
					t.Errorf("listen: %v", err)
					return
				}
				consumeAll(t, m, &got, &cwg)
				_ = m.Close()
			}
		})
	}
	churn.Wait()
	counted := stop()
	for _, s := range stays {
		require.NoError(t, s.Close())
	}
	cwg.Wait()
	require.Eventually(t, func() bool { return listenerConns(c) == 0 }, testTimeout, 5*time.Millisecond)
	dropped := c.Snapshot().SignalsDropped
	t.Logf("server counted %d, received %d, dropped %d", counted, got.Load(), dropped)
	require.Equal(t, counted, got.Load()+dropped, "jobs queued for this Client's members vanished without a count")
}

// gatedReadConn holds each Read while a gate is set, until that gate closes.
type gatedReadConn struct {
	net.Conn
	gate *atomic.Pointer[chan struct{}]
}

func (c *gatedReadConn) Read(b []byte) (int, error) {
	if g := c.gate.Load(); g != nil {
		<-*g
	}
	return c.Conn.Read(b)
}

// A queue-group member leaves while the server still has jobs on their way
// to its connection; another member is joining on a second connection, its
// Listen not answered yet (its dial slow), and then its Listen fails. The
// leaving connection's late jobs are not lost uncounted in that joiner's
// subscription (found by review: forward handed them to it, and its failed
// Listen threw them away): forward takes only confirmed members, and a
// failed Listen counts what its subscription held as dropped.
func TestJobsForwardedToAJoinerWhoseListenFailsAreCounted(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{PushBuffer: 4096})
	var dials atomic.Int32
	readGate := &atomic.Pointer[chan struct{}]{}
	dialGate := make(chan struct{})
	var d net.Dialer
	c := newClient(t, addrsOf(srv), WithDialer(func(ctx context.Context, network, addr string) (net.Conn, error) {
		switch dials.Add(1) {
		case 1: // A's listener connection: its reads are gated
			nc, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &gatedReadConn{Conn: nc, gate: readGate}, nil
		default: // B's listener connection: slow to dial
			select {
			case <-dialGate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return d.DialContext(ctx, network, addr)
		}
	}))
	emitter := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	a, err := c.Listen(ctx, "jobs", Group("g"))
	require.NoError(t, err)
	var gotA atomic.Int64
	var cwg sync.WaitGroup
	consumeAll(t, a, &gotA, &cwg)

	// B joins on a connection of its own (a free slot), whose dial hangs.
	bctx, bcancel := context.WithCancel(ctx)
	defer bcancel()
	bErr := make(chan error, 1)
	go func() {
		s, err := c.Listen(bctx, "jobs", Group("g"))
		if s != nil {
			_ = s.Close()
		}
		bErr <- err
	}()
	require.Eventually(t, func() bool {
		c.signals.mu.Lock()
		defer c.signals.mu.Unlock()
		return len(c.signals.listeners) == 2
	}, testTimeout, time.Millisecond)

	// Jobs for A's connection (the server's only member), not read yet.
	gate := make(chan struct{})
	readGate.Store(&gate)
	const jobs = 20
	counted := 0
	for i := range jobs {
		n, err := emitter.Emit(ctx, "jobs", "job"+strconv.Itoa(i))
		require.NoError(t, err)
		counted += n
	}
	require.Equal(t, jobs, counted, "every job queued for A's connection")

	// A leaves: its connection is withdrawn; the jobs read now are orphans.
	start := time.Now()
	require.NoError(t, a.Close())
	readGate.Store(nil)
	close(gate)
	// Every job has been read off A's connection: received by A, taken
	// by B's subscription (forwarded), or counted dropped.
	inB := func() (n int) {
		c.signals.mu.Lock()
		defer c.signals.mu.Unlock()
		for s := range c.signals.subs {
			if s != a {
				n += len(s.ch)
			}
		}
		return n
	}
	require.Eventually(t, func() bool {
		return gotA.Load()+int64(inB())+c.Snapshot().SignalsDropped == int64(counted)
	}, testTimeout, time.Millisecond, "the jobs never reached the client")
	t.Logf("after %v: A received %d, B's pending subscription holds %d, dropped %d",
		time.Since(start), gotA.Load(), inB(), c.Snapshot().SignalsDropped)
	// B's Listen gives up before its dial completes.
	bcancel()
	err = <-bErr
	require.Error(t, err)
	t.Logf("B's Listen: %v", err)
	cwg.Wait()

	dropped := c.Snapshot().SignalsDropped
	t.Logf("server counted %d, received %d, dropped %d", counted, gotA.Load(), dropped)
	require.Equal(t, int64(counted), gotA.Load()+dropped,
		"jobs queued for this Client's members vanished without a count")
}

// A queue group has two members in one Client, each on a connection of its
// own. B's connection breaks and cannot be re-dialled for a while (the
// network is down for new connections), so B is an established member whose
// listener is reconnecting. A then leaves while jobs are emitted: the jobs
// the server had queued for A's connection before its unlisten are
// forwarded (signalHub.forward), and B, a member whose Listen returned long
// ago, takes them: none is dropped while a member in the Client can take it
// (found by review: a filter on the pattern's confirmed listen dropped
// them). Whether jobs are in flight to A at its unlisten is timing, so the
// scenario is run a few times; any drop fails.
func TestForwardedJobsGoToAMemberWhoseConnectionIsReconnecting(t *testing.T) {
	t.Parallel()
	var dropped int64
	for range 5 {
		dropped += forwardWhileReconnecting(t)
	}
	require.Zero(t, dropped, "jobs forwarded from a withdrawn member were dropped although member B is in the Client")
}

func forwardWhileReconnecting(t *testing.T) int64 {
	srv := newServer(t, testutil.Config{PushBuffer: 4096})
	var (
		block atomic.Bool
		mu    sync.Mutex
		conns []net.Conn
	)
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if block.Load() {
			return nil, errors.New("test: network down for new connections")
		}
		var d net.Dialer
		nc, err := d.DialContext(ctx, network, addr)
		if err == nil {
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
		}
		return nc, err
	}
	c := newClient(t, addrsOf(srv), WithGroupConns(2), WithDialer(dial))
	ctx := testCtx(t)

	var got atomic.Int64
	var cwg sync.WaitGroup
	a, err := c.Listen(ctx, "jobs", Group("g"), Buffer(1<<16))
	require.NoError(t, err)
	b, err := c.Listen(ctx, "jobs", Group("g"), Buffer(1<<16))
	require.NoError(t, err)
	require.Equal(t, 2, groupListeners(srv, "jobs", "g"))
	for _, s := range []*Subscription{a, b} {
		cwg.Go(func() {
			for sig := range s.C() {
				if sig.Err == nil {
					got.Add(1)
				}
			}
		})
	}
	mu.Lock()
	require.Len(t, conns, 2)
	bConn := conns[1] // A's listener was dialled first, B's second
	mu.Unlock()
	// The lane, dialled now, serves the Emits throughout.
	_, err = c.Emit(ctx, "warmup", "x")
	require.NoError(t, err)

	stop := emitN(ctx, c, "jobs", 8)
	time.Sleep(20 * time.Millisecond)
	block.Store(true)
	require.NoError(t, bConn.Close()) // B's listener reconnects, and cannot
	require.Eventually(t, func() bool { return groupListeners(srv, "jobs", "g") == 1 }, testTimeout, time.Millisecond)
	require.NoError(t, a.Close())
	require.Eventually(t, func() bool { return groupListeners(srv, "jobs", "g") == 0 }, testTimeout, time.Millisecond)
	time.Sleep(300 * time.Millisecond) // A's withdrawal ends (quiet)
	counted := stop()
	dropped := c.Snapshot().SignalsDropped
	t.Logf("server counted %d, received %d, dropped %d", counted, got.Load(), dropped)
	require.NoError(t, b.Close())
	cwg.Wait()
	return dropped
}

// A job the server picks a new member for between registering it and
// answering its listen comes before the `ok` (the real server and testutil
// both register first). It was read and thrown away, neither delivered nor
// counted (review "grp": with that window widened, exactly the jobs missing
// from TestGroupRejoinChurnLosesNoJobUncounted, which failed once so).
func TestGroupJobPushedBeforeTheListensAnswerIsDelivered(t *testing.T) {
	t.Parallel()
	srv := newScriptedServer(t, func(cmd, key, arg string) string {
		if cmd == "listen" {
			return "sig jobs early\nok"
		}
		return "ok"
	})
	c := newClient(t, []string{srv.addr})
	s, err := c.Listen(testCtx(t), "jobs", Group("g"))
	require.NoError(t, err)
	defer s.Close()
	select {
	case sig := <-s.C():
		require.Equal(t, Signal{Channel: "jobs", Payload: "early"}, sig)
	case <-time.After(10 * time.Second):
		t.Fatalf("the job was not delivered (dropped: %d)", c.Snapshot().SignalsDropped)
	}
}

// A member that closes with more jobs buffered than its channel still
// offers hands the rest to another member of its group (review "grp": 67
// of 200 jobs were discarded uncounted; with the default Buffer, a worker's
// graceful shutdown could lose 223).
func TestClosedGroupMemberHandsItsBufferedJobsToAnotherMember(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{PushBuffer: 4096})
	c := newClient(t, addrsOf(srv))
	pub := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	a, err := c.Listen(ctx, "jobs", Group("g")) // not read until closed
	require.NoError(t, err)
	b, err := c.Listen(ctx, "jobs", Group("g"))
	require.NoError(t, err)
	var gotB atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for sig := range b.C() {
			if sig.Err == nil {
				gotB.Add(1)
			}
		}
	})
	counted := 0
	for i := range 200 {
		n, err := pub.Emit(ctx, "jobs", strconv.Itoa(i))
		require.NoError(t, err)
		counted += n
	}
	require.Eventually(t, func() bool { return int64(a.held())+gotB.Load() == int64(counted) }, testTimeout, time.Millisecond)
	require.Greater(t, a.held(), cap(a.ch), "a's buffer must hold more than its channel for the test to mean anything")
	require.NoError(t, a.Close())
	gotA := 0
	for sig := range a.C() {
		if sig.Err == nil {
			gotA++
		}
	}
	require.Eventually(t, func() bool { return int64(gotA)+gotB.Load() == int64(counted) }, testTimeout, time.Millisecond,
		"server counted %d; a received %d, b %d; dropped %d", counted, gotA, gotB.Load(), c.Snapshot().SignalsDropped)
	require.Zero(t, c.Snapshot().SignalsDropped)
	require.NoError(t, b.Close())
	wg.Wait()
}

// A plain subscription closed with more buffered than its channel offers
// counts the rest in SignalsDropped: nothing vanishes uncounted.
func TestClosedSubscriptionCountsWhatItsChannelCannotOffer(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{PushBuffer: 4096})
	c := newClient(t, addrsOf(srv))
	pub := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	s, err := c.Listen(ctx, "news")
	require.NoError(t, err)
	const n = 100
	for i := range n {
		_, err := pub.Emit(ctx, "news", strconv.Itoa(i))
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return s.held() == n }, testTimeout, time.Millisecond)
	require.NoError(t, s.Close())
	got := 0
	for range s.C() {
		got++
	}
	require.Less(t, got, n)
	require.EqualValues(t, n, int64(got)+c.Snapshot().SignalsDropped)
}
