package dflock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// threeServers starts three signal-era servers.
func threeServers(t *testing.T, cfg testutil.Config) []*testutil.Server {
	return []*testutil.Server{newServer(t, cfg), newServer(t, cfg), newServer(t, cfg)}
}

// channelOn returns the first channel prefix+N (N = 0, 1, ...) that the
// Client places on server addr, skipping the channels in skip.
func channelOn(t *testing.T, c *Client, prefix, addr string, skip map[string]bool) string {
	t.Helper()
	for i := 0; i < 10000; i++ {
		ch := prefix + strconv.Itoa(i)
		if c.ServerFor(ch) == addr && !skip[ch] {
			return ch
		}
	}
	t.Fatalf("no channel %s* on %s", prefix, addr)
	return ""
}

// next receives one signal within the test timeout.
func next(t *testing.T, s *Subscription) Signal {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	sig, err := s.Next(ctx)
	require.NoError(t, err)
	return sig
}

// nextPastResume is next for a subscription that took a break's gap marker
// while the reconnect may still have been under way: the resumed marker
// (GapError.Resumed) then comes first, and is taken on the way.
func nextPastResume(t *testing.T, s *Subscription) Signal {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for resumed := 0; ; resumed++ {
		sig, err := s.Next(ctx)
		if g := (*GapError)(nil); errors.As(err, &g) && g.Resumed && resumed == 0 {
			continue
		}
		require.NoError(t, err)
		return sig
	}
}

// recvUntil receives signals until stop reports true for one of them, and
// returns all of them (the last one included).
func recvUntil(t *testing.T, s *Subscription, stop func(Signal) bool) []Signal {
	t.Helper()
	var got []Signal
	for {
		sig := next(t, s)
		got = append(got, sig)
		if stop(sig) {
			return got
		}
	}
}

func channels(sigs []Signal) []string {
	out := make([]string, len(sigs))
	for i, s := range sigs {
		out[i] = s.Channel
	}
	return out
}

func emit(t *testing.T, c *Client, channel, payload string) int {
	t.Helper()
	n, err := c.Emit(testCtx(t), channel, payload)
	require.NoError(t, err)
	return n
}

// waitClientListening waits until c's listener on srv has processed the
// server's answer to its listen of pattern on its current connection: a
// gap marker the consumer takes from then on gets no resumed marker.
// (waitListening sees the server register the listen, a moment before.)
func waitClientListening(t *testing.T, c *Client, srv *server, pattern string) {
	t.Helper()
	c.signals.mu.Lock()
	l := c.signals.listeners[listenerKey{srv: srv}]
	c.signals.mu.Unlock()
	require.NotNil(t, l, "no listener on %s", srv.addr)
	require.Eventually(t, func() bool {
		l.mu.RLock()
		defer l.mu.RUnlock()
		p := l.pats[pattern]
		return l.cur != nil && p != nil && p.on && p.live.Load() == l.cur
	}, testTimeout, time.Millisecond, "the client never took in the listen of %q on %s", pattern, srv.addr)
}

// assertEmpty checks that nothing (signal or gap) is buffered.
func assertEmpty(t *testing.T, s *Subscription) {
	t.Helper()
	select {
	case sig, ok := <-s.C():
		assert.Failf(t, "unexpected item", "signal %+v (open %v)", sig, ok)
	default:
	}
}

func TestSignalsWildcardAndLiteralPatternsAcrossServers(t *testing.T) {
	t.Parallel()
	srvs := threeServers(t, testutil.Config{})
	c := newClient(t, addrsOf(srvs...))
	ctx := testCtx(t)

	all, err := c.Listen(ctx, ">")
	require.NoError(t, err)
	star, err := c.Listen(ctx, "t.*")
	require.NoError(t, err)
	lit, err := c.Listen(ctx, "lit.a")
	require.NoError(t, err)

	// On every server: channels that t.* matches and must not match, then
	// an end marker on that server. A connection delivers in order, so the
	// marker proves that everything emitted on that server before it has
	// been dispatched.
	var wantAll, wantStar []string
	for _, s := range srvs {
		in := channelOn(t, c, "t.", s.Addr(), nil)
		deep := channelOn(t, c, "t.x.", s.Addr(), nil)
		other := channelOn(t, c, "u.", s.Addr(), nil)
		end := channelOn(t, c, "t.end", s.Addr(), nil)
		for _, ch := range []string{in, deep, other, "t", end} {
			if ch == "t" && c.ServerFor("t") != s.Addr() {
				continue
			}
			assert.Equal(t, 1, emit(t, c, ch, "p-"+ch), "receivers of %s", ch)
			wantAll = append(wantAll, ch)
			if ch == in || ch == end {
				wantStar = append(wantStar, ch)
			}
		}
	}
	emit(t, c, "lit.b", "x") // not lit.a
	emit(t, c, "lit.a", "end")
	wantAll = append(wantAll, "lit.b", "lit.a")

	isEnd := func(sig Signal) bool { return strings.HasPrefix(sig.Channel, "t.end") }
	endsSeen := func(n int) func(Signal) bool {
		seen := 0
		return func(sig Signal) bool {
			if isEnd(sig) {
				seen++
			}
			return seen == n
		}
	}
	gotStar := recvUntil(t, star, endsSeen(3))
	assert.ElementsMatch(t, wantStar, channels(gotStar))
	for _, sig := range gotStar {
		assert.Equal(t, "p-"+sig.Channel, sig.Payload)
	}

	// Servers deliver independently (lit.b and lit.a may live on different
	// ones, each after the end markers of its own): take as many signals
	// as were sent; a wrong one shows as a mismatch, a missing one as a
	// timeout.
	n := 0
	gotAll := recvUntil(t, all, func(Signal) bool { n++; return n == len(wantAll) })
	assert.ElementsMatch(t, wantAll, channels(gotAll))

	assert.Equal(t, Signal{Channel: "lit.a", Payload: "end"}, next(t, lit))
	assertEmpty(t, lit)
	assertEmpty(t, star)
	assertEmpty(t, all)

	// Placement: the literal subscription is on its channel's server only;
	// the wildcard ones on all three.
	for _, s := range srvs {
		var pats []string
		for _, sc := range s.Stats().SignalChannels {
			pats = append(pats, sc.Pattern)
		}
		want := []string{">", "t.*"}
		if s.Addr() == c.ServerFor("lit.a") {
			want = append(want, "lit.a")
		}
		assert.ElementsMatch(t, want, pats, "subscriptions on %s", s.Addr())
	}
	for _, s := range c.servers {
		assert.Equal(t, 1, s.pool.Stats().ListenerConns, "one shared listener connection to %s", s.addr)
	}
}

func TestSignalsQueueGroupDeliversEachSignalToOneMember(t *testing.T) {
	t.Parallel()
	// Push buffers the emits cannot fill, as for roundRobinServer: a
	// connection's writer left behind for 64 emits would pass a group's
	// turn on, or disconnect the plain subscription.
	srvs := threeServers(t, testutil.Config{PushBuffer: 1024})
	// c1's members share one connection per server (WithGroupConns(1)):
	// the server sees one member there, and they take turns on its share.
	c1 := newClient(t, addrsOf(srvs...), WithGroupConns(1))
	c2 := newClient(t, addrsOf(srvs...))
	ctx := testCtx(t)

	var members []*Subscription
	for _, c := range []*Client{c1, c1, c2} {
		s, err := c.Listen(ctx, "jobs.>", Group("workers"), Buffer(1000))
		require.NoError(t, err)
		members = append(members, s)
	}
	plain, err := c2.Listen(ctx, "jobs.>", Buffer(1000))
	require.NoError(t, err)

	const n = 300
	perServer := map[string]int{}
	for i := 0; i < n; i++ {
		ch := "jobs." + strconv.Itoa(i)
		perServer[c1.ServerFor(ch)]++
		// One copy for the group, one for the plain subscription.
		assert.Equal(t, 2, emit(t, c1, ch, strconv.Itoa(i)))
	}
	require.Len(t, perServer, 3, "the channels cover every server")

	got := make([]map[string]int, len(members)) // per member: per server count
	seen := make(map[string]int)                // payload → deliveries
	total := 0
	for total < n {
		select {
		case sig := <-members[0].C():
			seen[sig.Payload]++
			total++
			countOn(got, 0, c1.ServerFor(sig.Channel))
		case sig := <-members[1].C():
			seen[sig.Payload]++
			total++
			countOn(got, 1, c1.ServerFor(sig.Channel))
		case sig := <-members[2].C():
			seen[sig.Payload]++
			total++
			countOn(got, 2, c1.ServerFor(sig.Channel))
		case <-ctx.Done():
			t.Fatalf("only %d of %d signals delivered to the group", total, n)
		}
	}
	for i := 0; i < n; i++ {
		assert.Equal(t, 1, seen[strconv.Itoa(i)], "deliveries of signal %d", i)
	}
	for _, m := range members {
		assertEmpty(t, m)
		assert.Zero(t, m.Dropped())
	}
	// The server alternates between the two Clients' group connections;
	// c1's two members take turns on its share.
	for addr, k := range perServer {
		c1Share := got[0][addr] + got[1][addr]
		assert.InDelta(t, k/2, c1Share, 1, "c1's share on %s", addr)
		assert.InDelta(t, k/2, got[2][addr], 1, "c2's share on %s", addr)
		assert.InDelta(t, got[0][addr], got[1][addr], 1, "c1's members on %s", addr)
	}

	// The non-grouped subscription sees everything.
	var plainGot []string
	for len(plainGot) < n {
		plainGot = append(plainGot, next(t, plain).Payload)
	}
	want := make([]string, n)
	for i := range want {
		want[i] = strconv.Itoa(i)
	}
	assert.ElementsMatch(t, want, plainGot)
}

func countOn(got []map[string]int, i int, addr string) {
	if got[i] == nil {
		got[i] = map[string]int{}
	}
	got[i][addr]++
}

func TestSignalsOverlappingSubscriptionsEachGetOneCopy(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	wide, err := c.Listen(ctx, "a.>")
	require.NoError(t, err)
	narrow, err := c.Listen(ctx, "a.b")
	require.NoError(t, err)
	narrow2, err := c.Listen(ctx, "a.b")
	require.NoError(t, err)

	for i := 0; i < 20; i++ {
		// The server sends the shared connection one copy...
		assert.Equal(t, 1, emit(t, c, "a.b", strconv.Itoa(i)))
		assert.Equal(t, 1, emit(t, c, "a.c", strconv.Itoa(i)))
	}
	emit(t, c, "a.b", "end")
	// ...and each matching subscription gets exactly one.
	wideGot := recvUntil(t, wide, func(s Signal) bool { return s.Payload == "end" })
	assert.Len(t, wideGot, 41)
	for _, s := range []*Subscription{narrow, narrow2} {
		got := recvUntil(t, s, func(s Signal) bool { return s.Payload == "end" })
		require.Len(t, got, 21)
		for i, sig := range got[:20] {
			assert.Equal(t, Signal{Channel: "a.b", Payload: strconv.Itoa(i)}, sig)
		}
		assertEmpty(t, s)
	}
	assertEmpty(t, wide)
	// Two local subscriptions of a.b share one server-side listen.
	assert.Equal(t, []testutil.SignalChannelInfo{{Pattern: "a.>", Listeners: 1}, {Pattern: "a.b", Listeners: 1}}, srv.Stats().SignalChannels)
}

func TestSignalsSlowConsumerDropsWithoutStallingTheConnection(t *testing.T) {
	t.Parallel()
	// The push buffer is raised from its default of 64 because the
	// in-process server shares the CPUs with the test: under -race and
	// parallel tests its push writer can fall 64 lines behind a
	// sequential emitter by scheduling alone. A reader that waited for
	// the slow consumer would still fail the test: fast would miss
	// signals and nothing would be dropped.
	const buf, n = 8, 500
	srv := newServer(t, testutil.Config{PushBuffer: 2 * n})
	var logs syncBuffer
	c := newClient(t, addrsOf(srv), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	ctx := testCtx(t)
	slow, err := c.Listen(ctx, "s.>", Buffer(buf))
	require.NoError(t, err)
	fast, err := c.Listen(ctx, "s.x", Buffer(n))
	require.NoError(t, err)

	// fast is read concurrently; Emit is sequential, so the reader never
	// falls far behind the server and the server's push buffer never
	// fills — unless the reader waited for slow's consumer.
	fastGot := make(chan int)
	go func() {
		k := 0
		for range fast.C() {
			k++
			if k == n {
				break
			}
		}
		fastGot <- k
	}()
	for i := 0; i < n; i++ {
		emit(t, c, "s.x", strconv.Itoa(i))
	}
	select {
	case k := <-fastGot:
		assert.Equal(t, n, k)
	case <-ctx.Done():
		t.Fatalf("the fast subscription did not receive every signal: dropped %d, slow dropped %d, logs %s", fast.Dropped(), slow.Dropped(), logs.b.String())
	}
	emit(t, c, "s.y", "end") // only slow matches: dispatched after all the above
	require.Eventually(t, func() bool { return slow.Dropped() == n+1-buf }, testTimeout, time.Millisecond)

	received := 0
	for received < buf {
		sig := next(t, slow)
		assert.Equal(t, strconv.Itoa(received), sig.Payload)
		received++
	}
	assertEmpty(t, slow) // no gap: the connection never broke
	assert.Equal(t, uint64(n+1), uint64(received)+slow.Dropped())
	// The supervisor logs the warning (never the reader).
	require.Eventually(t, func() bool { return logs.count("slow signal consumer") == 1 }, testTimeout, time.Millisecond)
	assert.Equal(t, 1, logs.count("slow signal consumer"), "one warning per episode")
	assert.Zero(t, c.servers[0].pool.Stats().Broken, "no connection broke")
	assert.Equal(t, 0, logs.count("listener connection lost"))

	// A new episode warns again, once a second has passed since the last
	// warning (slowWarnEvery).
	time.Sleep(slowWarnEvery)
	for i := 0; i < buf+2; i++ {
		emit(t, c, "s.y", "again")
	}
	require.Eventually(t, func() bool { return logs.count("slow signal consumer") == 2 }, testTimeout, time.Millisecond)
}

// An idle listener connection is kept alive by pings: the server's read
// timeout, which also bounds the idle wait for the next request, never
// closes it.
//
// The read timeout runs on the server's clock, which the test moves by less
// than half of it at a time and only once every open connection has written
// again since the last move. The previous ping of each connection has then
// been answered, so its deadline was re-armed within the last two moves: a
// connection the keepalive pings is never cut, and one it does not ping is
// cut within three moves. Seven moves span more than three read timeouts.
func TestSignalsIdleListenerSurvivesServerReadTimeout(t *testing.T) {
	t.Parallel()
	clk := testutil.NewManualClock(time.Now().Round(0))
	const readTimeout = time.Second
	srv := newServer(t, testutil.Config{Clock: clk, ReadTimeout: readTimeout})
	cc := &connCounter{}
	c := newClient(t, addrsOf(srv), WithKeepAlive(200*time.Millisecond), WithDialer(cc.dial))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "idle.>")
	require.NoError(t, err)
	// The server counts a connection when it accepts it, possibly before
	// our dialer has returned: wait for both to agree before the baseline.
	require.Eventually(t, func() bool { return srv.Stats().Connections == int(cc.dials.Load()) }, testTimeout, time.Millisecond)
	dials := cc.dials.Load()
	require.Positive(t, dials)
	const steps = 7 // 7 × 0.45 s: more than three read timeouts
	for range steps {
		cc.awaitEveryOpenConnWrites(t, ctx)
		clk.Advance(readTimeout/2 - 50*time.Millisecond)
	}
	cc.awaitEveryOpenConnWrites(t, ctx)
	ps := c.servers[0].pool.Stats()
	assert.Equal(t, dials, cc.dials.Load(), "a connection was cut by the read timeout and re-dialled: %+v", ps)
	assert.Zero(t, ps.Broken, "a connection broke: %+v", ps)
	assert.Positive(t, ps.Pings)
	assert.Equal(t, 1, emit(t, c, "idle.a", "still here"))
	assert.Equal(t, Signal{Channel: "idle.a", Payload: "still here"}, next(t, sub))
	assertEmpty(t, sub)
	assert.Zero(t, c.servers[0].pool.Stats().Broken)
}

func TestSignalsResumeAfterServerRestartAndReportTheGap(t *testing.T) {
	t.Parallel()
	srvs := threeServers(t, testutil.Config{})
	c := newClient(t, addrsOf(srvs...))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "r.>")
	require.NoError(t, err)
	victim := srvs[1]
	ch := channelOn(t, c, "r.", victim.Addr(), nil)
	assert.Equal(t, 1, emit(t, c, ch, "before"))
	assert.Equal(t, "before", next(t, sub).Payload)

	require.NoError(t, victim.Stop())
	_, err = sub.Next(ctx)
	require.ErrorIs(t, err, ErrSignalGap)
	var gap *GapError
	require.ErrorAs(t, err, &gap)
	assert.Equal(t, victim.Addr(), gap.Server)
	require.NoError(t, victim.Restart())

	// Emit until the re-listen has happened (the Client reconnects on its
	// own; Emit fails fast or reaches nobody until then).
	for {
		n, err := c.Emit(ctx, ch, "after")
		require.NoError(t, ctx.Err(), "no reconnect: last error %v", err)
		if err == nil && n == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for {
		sig := nextPastResume(t, sub)
		if sig.Payload == "after" {
			break
		}
	}
	// The other servers' subscriptions were not disturbed.
	other := channelOn(t, c, "r.", srvs[0].Addr(), nil)
	assert.Equal(t, 1, emit(t, c, other, "other"))
	for {
		sig := next(t, sub)
		if sig.Payload == "other" {
			break
		}
		assert.Equal(t, "after", sig.Payload)
	}
}

func TestSignalsGapMarkerOnChannelWhenBufferIsFull(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "g", Buffer(2))
	require.NoError(t, err)
	for i := 0; i < 5; i++ {
		emit(t, c, "g", strconv.Itoa(i))
	}
	require.Eventually(t, func() bool { return sub.Dropped() == 3 }, testTimeout, time.Millisecond)
	srv.DropConnections()
	// The reserved slot takes the gap marker although the buffer is full.
	var got []Signal
	for len(got) < 3 {
		select {
		case sig := <-sub.C():
			got = append(got, sig)
		case <-ctx.Done():
			t.Fatal("no gap marker")
		}
	}
	assert.Equal(t, "0", got[0].Payload)
	assert.Equal(t, "1", got[1].Payload)
	require.ErrorIs(t, got[2].Err, ErrSignalGap)
}

// Gap markers do not count against Buffer: with a marker waiting in the
// channel, Buffer(2) still takes two signals, and drops the third. (The
// marker used to take one of the two.)
func TestSignalsGapMarkerDoesNotTakeABufferSlot(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "g", Buffer(2))
	require.NoError(t, err)
	srv.DropConnections()
	waitListening(t, srv, "g", "") // re-listened; the marker waits in C
	for i := range 3 {
		assert.Equal(t, 1, emit(t, c, "g", strconv.Itoa(i)))
	}
	require.Eventually(t, func() bool { return sub.Dropped() == 1 }, testTimeout, time.Millisecond)
	require.ErrorIs(t, recvC(t, sub).Err, ErrSignalGap)
	assert.Equal(t, "0", recvC(t, sub).Payload)
	assert.Equal(t, "1", recvC(t, sub).Payload)
	assertEmpty(t, sub)
	assert.Equal(t, uint64(1), sub.Dropped())
}

// A buffer takes memory as signals queue up, not as Buffer says: the
// largest buffer allowed starts as a small channel, queues every signal
// beyond it in order, and drops and counts exactly what exceeds Buffer.
func TestSignalsBufferGrowsOnDemand(t *testing.T) {
	t.Parallel()
	const n = 300
	srv := newServer(t, testutil.Config{PushBuffer: 2 * n})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	huge, err := c.Listen(ctx, "o", Buffer(MaxSignalBuffer))
	require.NoError(t, err)
	assert.Equal(t, signalChanSlots+1, cap(huge.C()), "channel sized by use, not by Buffer")
	const limit = 100
	bounded, err := c.Listen(ctx, "o", Buffer(limit))
	require.NoError(t, err)

	for i := 0; i < n; i++ {
		emit(t, c, "o", strconv.Itoa(i)) // nobody reads meanwhile
	}
	require.Eventually(t, func() bool { return bounded.Dropped() == n-limit }, testTimeout, time.Millisecond)
	for i := 0; i < n; i++ {
		require.Equal(t, strconv.Itoa(i), next(t, huge).Payload)
	}
	for i := 0; i < limit; i++ {
		require.Equal(t, strconv.Itoa(i), next(t, bounded).Payload)
	}
	assertEmpty(t, huge)
	assertEmpty(t, bounded)
	assert.Zero(t, huge.Dropped())
	assert.EqualValues(t, n-limit, bounded.Dropped())

	// A gap queues behind the signals waiting in the overflow, even when
	// the buffer is full of them.
	for i := 0; i < limit; i++ {
		emit(t, c, "o", "again"+strconv.Itoa(i))
	}
	// The server pushes after it answers the Emit: drop the connection
	// only once everything pushed has arrived.
	require.Eventually(t, func() bool { return queued(bounded) == limit }, testTimeout, time.Millisecond)
	srv.DropConnections()
	waitListening(t, srv, "o", "")
	waitClientListening(t, c, c.servers[0], "o") // or the gap taken below may get a resumed one
	for i := 0; i < limit; i++ {
		require.Equal(t, "again"+strconv.Itoa(i), next(t, bounded).Payload)
	}
	_, err = bounded.Next(ctx)
	require.ErrorIs(t, err, ErrSignalGap)
	assertEmpty(t, bounded)
}

// A consumer that falls behind now and then receives every signal, in
// emission order, whether it passed through the channel alone or through
// the overflow queue and the drainer.
func TestSignalsOrderHoldsAcrossTheOverflowQueue(t *testing.T) {
	t.Parallel()
	const n = 2000
	srv := newServer(t, testutil.Config{PushBuffer: 2 * n})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "q", Buffer(n))
	require.NoError(t, err)
	done := make(chan []string)
	go func() {
		var got []string
		for sig := range sub.C() {
			got = append(got, sig.Payload)
			if len(got) == n {
				break
			}
			if len(got)%97 == 0 {
				runtime.Gosched()
			}
		}
		done <- got
	}()
	for i := 0; i < n; i++ {
		emit(t, c, "q", strconv.Itoa(i))
	}
	var got []string
	select {
	case got = <-done:
	case <-ctx.Done():
		t.Fatalf("not every signal arrived (dropped %d)", sub.Dropped())
	}
	for i, p := range got {
		require.Equal(t, strconv.Itoa(i), p)
	}
	assert.Zero(t, sub.Dropped())
}

// Close stops the drainer that waits for a consumer that is gone: it
// returns, C closes, and what the channel holds can still be read.
func TestSignalsCloseStopsTheOverflowDrainer(t *testing.T) {
	t.Parallel()
	const n = 3 * signalChanSlots
	srv := newServer(t, testutil.Config{PushBuffer: 2 * n})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "d", Buffer(n))
	require.NoError(t, err)
	for i := 0; i < n; i++ {
		emit(t, c, "d", strconv.Itoa(i))
	}
	require.Eventually(t, func() bool {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		return sub.ov != nil && len(sub.C())+sub.ov.sigs == n && sub.ov.draining
	}, testTimeout, time.Millisecond)

	closed := make(chan struct{})
	go func() { _ = sub.Close(); close(closed) }()
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("Close waits for the consumer")
	}
	var got []string
	for sig := range sub.C() {
		got = append(got, sig.Payload)
	}
	require.Len(t, got, cap(sub.C()))
	for i, p := range got {
		assert.Equal(t, strconv.Itoa(i), p)
	}
	sub.mu.Lock()
	assert.Zero(t, sub.ov.q.n)
	assert.Nil(t, sub.ov.q.buf, "the overflow queue is freed")
	sub.mu.Unlock()
}

func TestSignalsCloseLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	srvs := threeServers(t, testutil.Config{})
	c, err := New(addrsOf(srvs...))
	require.NoError(t, err)
	ctx := testCtx(t)

	a1, err := c.Listen(ctx, "c.>")
	require.NoError(t, err)
	a2, err := c.Listen(ctx, "c.>")
	require.NoError(t, err)
	g, err := c.Listen(ctx, "c.>", Group("q"))
	require.NoError(t, err)
	lit, err := c.Listen(ctx, "c.lit")
	require.NoError(t, err)
	conns := func() (n int) {
		for _, s := range srvs {
			n += s.Stats().Connections
		}
		return n
	}
	assert.Equal(t, 6, conns(), "one plain and one group listener connection per server")

	// Reference counting: the server-side listen goes with the last
	// local subscription of the pattern.
	require.NoError(t, a1.Close())
	require.NoError(t, a1.Close()) // idempotent
	_, err = a1.Next(ctx)
	require.ErrorIs(t, err, ErrSubscriptionClosed)
	require.NotErrorIs(t, err, ErrClosed)
	_, open := <-a1.C()
	assert.False(t, open)
	litSrv := srvs[0]
	for _, s := range srvs {
		if s.Addr() == c.ServerFor("c.lit") {
			litSrv = s
		}
	}
	assert.Contains(t, litSrv.Stats().SignalChannels, testutil.SignalChannelInfo{Pattern: "c.>", Listeners: 1})
	require.NoError(t, a2.Close())
	require.Eventually(t, func() bool {
		for _, sc := range litSrv.Stats().SignalChannels {
			if sc.Pattern == "c.>" && sc.Group == "" {
				return false
			}
		}
		return true
	}, testTimeout, time.Millisecond, "unlisten after the last local subscription")
	require.NoError(t, g.Close())
	require.Eventually(t, func() bool { return conns() == 1 }, testTimeout, time.Millisecond,
		"only the literal subscription's connection is left")

	// Client.Close ends the rest, and unblocks a waiting Next.
	nextErr := make(chan error)
	go func() {
		_, err := lit.Next(context.Background())
		nextErr <- err
	}()
	require.NoError(t, c.Close())
	select {
	case err := <-nextErr:
		require.ErrorIs(t, err, ErrSubscriptionClosed)
		require.ErrorIs(t, err, ErrClosed)
	case <-ctx.Done():
		t.Fatal("Next not unblocked by Close")
	}
	require.NoError(t, lit.Close())
	require.Eventually(t, func() bool { return conns() == 0 }, testTimeout, time.Millisecond)
	for _, s := range c.servers {
		assert.Zero(t, s.pool.Stats().ListenerConns)
	}
	_, err = c.Listen(ctx, "c.>")
	require.ErrorIs(t, err, ErrClosed)
	_, err = c.Emit(ctx, "c.x", "p")
	require.ErrorIs(t, err, ErrClosed)
}

func TestSignalsNotSupportedByOldAndNewServers(t *testing.T) {
	t.Parallel()
	for _, v := range []testutil.Version{testutil.V1_10, testutil.V2_1} {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{Version: v})
			c := newClient(t, addrsOf(srv))
			ctx := testCtx(t)
			// Each call must fail with ErrNotSupported itself; one that
			// retried until ctx ended would fail with ctx's error instead.
			_, err := c.Listen(ctx, "a.>")
			require.ErrorIs(t, err, ErrNotSupported)
			var e *Error
			require.ErrorAs(t, err, &e)
			assert.Equal(t, srv.Addr(), e.Server)
			_, err = c.Listen(ctx, "lit", Group("g"))
			require.ErrorIs(t, err, ErrNotSupported)
			_, err = c.Emit(ctx, "a.b", "payload")
			require.ErrorIs(t, err, ErrNotSupported)
			_, err = c.Emit(ctx, "a.b", strings.Repeat("x", 1000)) // exclusive connection
			require.ErrorIs(t, err, ErrNotSupported)
			require.NoError(t, ctx.Err())
			// The listener connections involved are gone; locks still work.
			require.Eventually(t, func() bool { return c.servers[0].pool.Stats().ListenerConns == 0 }, testTimeout, time.Millisecond)
			l, err := c.TryLock(ctx, "k")
			require.NoError(t, err)
			require.NoError(t, l.Release(ctx))
		})
	}
}

func TestSignalsRejectBadInputBeforeIO(t *testing.T) {
	t.Parallel()
	// No server listens here: anything that reached the network would
	// fail with a different error.
	c := newClient(t, []string{"127.0.0.1:1"})
	ctx := testCtx(t)
	for _, tc := range []struct {
		pattern string
		opts    []ListenOption
		arg     string
	}{
		{"a.b*", nil, "pattern"},
		{"a.>.b", nil, "pattern"},
		{"", nil, "pattern"},
		{"a b", nil, "pattern"},
		{"a..b", nil, "pattern"},
		{"a.\n", nil, "pattern"},
		{"a", []ListenOption{Group(" g")}, "group"},
		{"a", []ListenOption{Group("g\n")}, "group"},
		{"a", []ListenOption{Group(strings.Repeat("g", 300))}, "group"},
		{"a", []ListenOption{Buffer(0)}, "buffer"},
		{"a", []ListenOption{Buffer(math.MaxInt)}, "buffer"},             // was a makechan panic
		{"a", []ListenOption{Buffer(min(1<<40, math.MaxInt))}, "buffer"}, // was an out-of-memory crash (on 64 bits)
		{"a", []ListenOption{Buffer(MaxSignalBuffer + 1)}, "buffer"},
	} {
		_, err := c.Listen(ctx, tc.pattern, tc.opts...)
		require.ErrorIs(t, err, ErrInvalidArgument, "%q", tc.pattern)
		var ae *ArgError
		require.ErrorAs(t, err, &ae)
		assert.Equal(t, tc.arg, ae.Arg, "%q", tc.pattern)
		if tc.arg == "buffer" {
			assert.Contains(t, err.Error(), strconv.Itoa(MaxSignalBuffer), "the error names the bound")
		}
	}
	for _, tc := range []struct{ channel, payload, arg string }{
		{"a.*", "p", "channel"},
		{"a.>", "p", "channel"},
		{"", "p", "channel"},
		{"a b", "p", "channel"},
		{"a", "", "payload"},
		{"a", "  \t ", "payload"},
		{"a", "x\ny", "payload"},
		{"a", strings.Repeat("x", 65536-5), "payload"},
	} {
		_, err := c.Emit(ctx, tc.channel, tc.payload)
		require.ErrorIs(t, err, ErrInvalidArgument, "%q %.10q", tc.channel, tc.payload)
		var ae *ArgError
		require.ErrorAs(t, err, &ae)
		assert.Equal(t, tc.arg, ae.Arg)
	}
	var nilCtx context.Context
	_, err := c.Listen(nilCtx, "a")
	require.ErrorIs(t, err, ErrInvalidArgument)
	_, err = c.Emit(nilCtx, "a", "p")
	require.ErrorIs(t, err, ErrInvalidArgument)
	assert.Zero(t, c.servers[0].pool.Stats().DialFailures, "nothing was dialled")
}

// A nil ctx is an *ArgError naming ctx for every signal call, Next
// included, and a Next refused for it takes no signal.
func TestSignalsNilContextIsAnArgError(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "a")
	require.NoError(t, err)
	emit(t, c, "a", "kept")
	require.Eventually(t, func() bool { return queued(sub) == 1 }, testTimeout, time.Millisecond)

	var nilCtx context.Context
	for name, call := range map[string]func() error{
		"Listen": func() error { _, err := c.Listen(nilCtx, "b"); return err },
		"Emit":   func() error { _, err := c.Emit(nilCtx, "a", "p"); return err },
		"Next":   func() error { _, err := sub.Next(nilCtx); return err },
	} {
		err := call()
		require.ErrorIs(t, err, ErrInvalidArgument, name)
		var ae *ArgError
		require.ErrorAs(t, err, &ae, name)
		assert.Equal(t, "ctx", ae.Arg, name)
	}
	assert.Equal(t, "kept", next(t, sub).Payload)
	assertEmpty(t, sub)
}

// A Listen whose ctx ends while its listen is in flight on the shared
// connection fails with the ctx error, leaves no server-side subscription
// behind, and does not disturb the subscriptions sharing the connection.
func TestSignalsCancelledListenDoesNotDisturbOthers(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{ReadTimeout: 2 * time.Minute})
	// No pings: the requests written are ours.
	c := newClient(t, addrsOf(srv), WithKeepAlive(time.Minute), WithServerReadTimeout(2*time.Minute))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "k.>")
	require.NoError(t, err)

	// The server does not read: the listen is written but not answered.
	resume := srv.Stall(0)
	t.Cleanup(resume)
	written := c.servers[0].pool.Stats().Requests
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	listenErr := make(chan error, 1)
	go func() {
		_, err := c.Listen(cctx, "k.other")
		listenErr <- err
	}()
	require.Eventually(t, func() bool { return c.servers[0].pool.Stats().Requests > written }, testTimeout, time.Millisecond,
		"the listen is written")
	cancel()
	require.ErrorIs(t, <-listenErr, context.Canceled)
	resume()

	// The server answers the listen, then gets the unlisten.
	require.Eventually(t, func() bool {
		st := srv.Stats()
		return st.Requests["listen"] == 2 && st.Requests["unlisten"] == 1
	}, testTimeout, time.Millisecond)
	assert.Equal(t, []testutil.SignalChannelInfo{{Pattern: "k.>", Listeners: 1}}, srv.Stats().SignalChannels,
		"the cancelled pattern is not left listening")
	assert.Equal(t, 1, emit(t, c, "k.other", "p"))
	assert.Equal(t, "p", next(t, sub).Payload)
	assertEmpty(t, sub)
	assert.Zero(t, c.servers[0].pool.Stats().Broken)
}

func TestSignalsLongPayloadsAndWildcardServerDown(t *testing.T) {
	t.Parallel()
	srvs := threeServers(t, testutil.Config{})
	c := newClient(t, addrsOf(srvs...))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "big")
	require.NoError(t, err)
	payload := strings.Repeat("y", 65531-len("big"))
	assert.Equal(t, 1, emit(t, c, "big", payload))
	assert.Equal(t, payload, next(t, sub).Payload)

	require.NoError(t, srvs[2].Stop())
	// Make the Client notice that the server is down.
	_, err = c.Emit(ctx, channelOn(t, c, "z.", srvs[2].Addr(), nil), "p")
	require.Error(t, err)
	// A wildcard pattern needs every server: it fails fast.
	_, err = c.Listen(ctx, "w.>")
	require.ErrorIs(t, err, ErrServerUnavailable)
	var e *Error
	require.True(t, errors.As(err, &e))
	assert.Equal(t, srvs[2].Addr(), e.Server)
	// A literal pattern on a live server still works.
	live := channelOn(t, c, "w.", srvs[0].Addr(), nil)
	s2, err := c.Listen(ctx, live)
	require.NoError(t, err)
	assert.Equal(t, 1, emit(t, c, live, "ok"))
	assert.Equal(t, "ok", next(t, s2).Payload)
}

// waitListening waits until srv shows a listener for pattern (and group).
func waitListening(t *testing.T, srv *testutil.Server, pattern, group string) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, sc := range srv.Stats().SignalChannels {
			if sc.Pattern == pattern && sc.Group == group {
				return true
			}
		}
		return false
	}, testTimeout, time.Millisecond, "%s listening on %s", pattern, srv.Addr())
}

// setListenReplyHook installs hook as testHookListenReply for the rest of
// the test. The hook is package-wide: the test must not be parallel, and
// hook should ignore listeners of other Clients.
func setListenReplyHook(t *testing.T, hook func(*listener)) {
	t.Helper()
	require.True(t, testHookListenReply.CompareAndSwap(nil, &hook), "another listen-reply hook is installed")
	t.Cleanup(func() { testHookListenReply.Store(nil) })
}

// queued returns how many signals s holds for its consumer.
func queued(s *Subscription) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.ch)
	if s.ov != nil {
		n += s.ov.sigs
	}
	return n
}

// recvC receives one item from C within the test timeout.
func recvC(t *testing.T, s *Subscription) Signal {
	t.Helper()
	select {
	case sig, ok := <-s.C():
		require.True(t, ok, "C closed")
		return sig
	case <-time.After(testTimeout):
		t.Fatal("nothing received")
		return Signal{}
	}
}

// A signal can be delivered on a new connection as soon as the server has
// answered the re-listen, before the supervisor has processed that answer.
// If the connection breaks in between, the gap must still be reported.
// Not parallel: it sets a test hook.
func TestSignalsGapWhenBrokenBeforeRelistenIsProcessed(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	inWindow := make(chan struct{})
	release := make(chan struct{})
	var armed atomic.Bool
	setListenReplyHook(t, func(l *listener) {
		if l.c == c && armed.CompareAndSwap(true, false) {
			close(inWindow)
			<-release
		}
	})
	ctx := testCtx(t)
	a, err := c.Listen(ctx, "a")
	require.NoError(t, err)
	armed.Store(true)

	srv.DropConnections()
	_, err = a.Next(ctx)
	require.ErrorIs(t, err, ErrSignalGap)
	<-inWindow // the server answered the re-listen; the supervisor has not processed it
	assert.Equal(t, 1, emit(t, c, "a", "x1"))
	assert.Equal(t, "x1", nextPastResume(t, a).Payload, "served by the new connection already")
	srv.DropConnections() // the second break, inside the window
	// Let the Client notice the break before the supervisor goes on.
	waitListenerDown(t, c, 0)
	close(release)

	waitListening(t, srv, "a", "")
	assert.Equal(t, 1, emit(t, c, "a", "y"))
	_, err = a.Next(ctx)
	require.ErrorIs(t, err, ErrSignalGap, "a gap must come before the next signal")
	assert.Equal(t, "y", nextPastResume(t, a).Payload)
	assertEmpty(t, a)
}

func TestSignalsWildcardReportsAGapPerServerWhenBufferIsFull(t *testing.T) {
	t.Parallel()
	srvs := threeServers(t, testutil.Config{})
	c := newClient(t, addrsOf(srvs...))
	ctx := testCtx(t)
	s, err := c.Listen(ctx, ">", Buffer(1))
	require.NoError(t, err)
	emit(t, c, "x", "fill")
	require.Eventually(t, func() bool { return len(s.C()) == 1 }, testTimeout, time.Millisecond)
	for _, sv := range srvs {
		sv.DropConnections()
	}
	// Re-listened everywhere: every break has been handled. On the client
	// side too: a gap taken before the client has read a server's answer
	// to the re-listen is followed by a second, resumed one (GapError),
	// which the hunt for flaky tests once found here, under load.
	for _, sv := range srvs {
		waitListening(t, sv, ">", "")
	}
	for _, sv := range c.servers {
		waitClientListening(t, c, sv, ">")
	}
	assert.Equal(t, "fill", next(t, s).Payload)
	servers := map[string]bool{}
	for len(servers) < 3 {
		_, err := s.Next(ctx) // the reserved slot's gap, then the pending ones
		var g *GapError
		require.ErrorAs(t, err, &g)
		assert.False(t, servers[g.Server], "one gap per server")
		servers[g.Server] = true
	}
	assertEmpty(t, s)
	assert.Zero(t, s.Dropped())
}

// A gap that finds the channel full waits in the overflow queue and is
// delivered in order, as soon as the consumer makes room: it does not wait
// for the next signal.
func TestSignalsGapBehindAFullChannelComesInOrder(t *testing.T) {
	t.Parallel()
	for _, useNext := range []bool{false, true} {
		t.Run(fmt.Sprintf("next=%v", useNext), func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{})
			c := newClient(t, addrsOf(srv))
			ctx := testCtx(t)
			s, err := c.Listen(ctx, "p", Buffer(2))
			require.NoError(t, err)
			emit(t, c, "p", "s1")
			emit(t, c, "p", "s2")
			require.Eventually(t, func() bool { return len(s.C()) == 2 }, testTimeout, time.Millisecond)
			srv.DropConnections() // gap 1 takes the reserved slot
			require.Eventually(t, func() bool { return len(s.C()) == 3 }, testTimeout, time.Millisecond)
			waitListening(t, srv, "p", "")
			srv.DropConnections() // gap 2 finds the channel full: queued behind it
			waitListening(t, srv, "p", "")
			srv.DropConnections() // gap 3 merges into the queued gap 2
			waitListening(t, srv, "p", "")
			waitClientListening(t, c, c.servers[0], "p") // or gap 2 taken below may get a resumed one

			recv := func() (Signal, error) {
				if useNext {
					return s.Next(ctx)
				}
				sig := recvC(t, s)
				return sig, sig.Err
			}
			for _, want := range []string{"s1", "s2"} {
				sig, err := recv()
				require.NoError(t, err)
				assert.Equal(t, want, sig.Payload)
			}
			_, err = recv()
			require.ErrorIs(t, err, ErrSignalGap, "gap 1")
			_, err = recv()
			require.ErrorIs(t, err, ErrSignalGap, "gap 2")
			assertEmpty(t, s)
			assert.Equal(t, 1, emit(t, c, "p", "s3"))
			sig, err := recv()
			require.NoError(t, err)
			assert.Equal(t, "s3", sig.Payload)
			assertEmpty(t, s)
			assert.Zero(t, s.Dropped())
		})
	}
}

// A re-listen the server refuses is retried while the subscription exists,
// whatever other Listen calls and steps happen meanwhile.
func TestSignalsRefusedRelistenIsRetried(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	addr := srv.Addr()
	c := newClient(t, []string{addr})
	ctx := testCtx(t)
	a, err := c.Listen(ctx, "a")
	require.NoError(t, err)
	b, err := c.Listen(ctx, "b")
	require.NoError(t, err)
	require.NoError(t, srv.Stop())
	for _, s := range []*Subscription{a, b} {
		_, err := s.Next(ctx)
		require.ErrorIs(t, err, ErrSignalGap)
	}
	// The replacement takes one subscription per connection: of the two
	// re-listens (one write), one is refused and retried.
	srv2, err := testutil.Start(testutil.Config{Addr: addr, MaxSubscriptions: 1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv2.Close() })
	var kept, refused *Subscription
	require.Eventually(t, func() bool {
		sc := srv2.Stats().SignalChannels
		if len(sc) != 1 {
			return false
		}
		kept, refused = a, b
		if sc[0].Pattern == "b" {
			kept, refused = b, a
		}
		return true
	}, testTimeout, time.Millisecond)

	// A Listen that gives up before the supervisor ran (its add and remove
	// coalesce into one wake-up; simulated here with the hub's lock, which
	// every supervisor step takes first, and by draining the wake-up), and
	// one that the server refuses, must not end the retries of the
	// existing subscription.
	h := &c.signals
	h.mu.Lock()
	l := h.listeners[listenerKey{srv: c.servers[0]}]
	gone := &Subscription{c: c, pattern: refused.Pattern(), size: 1, ch: make(chan Signal, 2), gapsAt: make([]uint64, 3)}
	l.add(gone)
	l.remove(gone)
	select {
	case <-l.wake:
	default:
	}
	h.mu.Unlock()
	listens := srv2.Stats().Requests["listen"]
	require.Eventually(t, func() bool { return srv2.Stats().Requests["listen"] >= listens+2 }, testTimeout, time.Millisecond,
		"the re-listen is still retried")
	_, err = c.Listen(ctx, refused.Pattern())
	require.ErrorIs(t, err, ErrNotSupported)
	listens = srv2.Stats().Requests["listen"]
	require.Eventually(t, func() bool { return srv2.Stats().Requests["listen"] >= listens+2 }, testTimeout, time.Millisecond,
		"the re-listen is still retried")

	// Make room: a retry succeeds (the unlisten's step does not cancel the
	// pending retry).
	require.NoError(t, kept.Close())
	waitListening(t, srv2, refused.Pattern(), "")
	assert.Equal(t, 1, emit(t, c, refused.Pattern(), "back"))
	assert.Equal(t, "back", nextPastResume(t, refused).Payload)
}

// Long payloads do not use the wait pool, which blocked Locks can fill.
func TestSignalsLongEmitDoesNotWaitForTheWaitPool(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv), WithMaxConnsPerServer(1))
	holder := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "ch")
	require.NoError(t, err)
	l, err := holder.TryLock(ctx, "k")
	require.NoError(t, err)
	lockErr := make(chan error, 1)
	lctx, stopLock := context.WithCancel(ctx)
	go func() {
		_, err := c.Lock(lctx, "k") // holds the only wait-pool connection
		lockErr <- err
	}()
	require.Eventually(t, func() bool { return lockWaiters(srv, "k") == 1 }, testTimeout, time.Millisecond)

	payload := strings.Repeat("x", 300)
	ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ { // dialled once, then shared
		n, err := c.Emit(ectx, "ch", payload)
		require.NoError(t, err)
		assert.Equal(t, 1, n)
		assert.Equal(t, payload, next(t, sub).Payload)
	}
	assert.Equal(t, 1, lockWaiters(srv, "k"), "the Lock still waits")
	stopLock()
	require.ErrorIs(t, <-lockErr, context.Canceled)
	require.NoError(t, l.Release(ctx))
}

// A server before v1.15 closes the connection of a long Emit: that
// connection only, so locks keep working, and the next long Emit re-dials.
func TestSignalsLongEmitOnOldServerLeavesLocksAlone(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{Version: testutil.V1_10})
	c := newClient(t, addrsOf(srv), WithMaxConnsPerServer(1))
	ctx := testCtx(t)
	for i := 0; i < 10; i++ {
		_, err := c.Emit(ctx, "a.b", strings.Repeat("x", 300))
		require.ErrorIs(t, err, ErrNotSupported)
		l, err := c.Lock(ctx, "k"+strconv.Itoa(i))
		require.NoError(t, err)
		require.NoError(t, l.Release(ctx))
	}
}

// blockingHandler is a slog handler that blocks on records whose message
// contains match until release is closed.
type blockingHandler struct {
	match   string
	entered chan struct{} // closed at the first blocked record
	once    *sync.Once
	release chan struct{}
}

func newBlockingHandler(match string) *blockingHandler {
	return &blockingHandler{match: match, entered: make(chan struct{}), once: new(sync.Once), release: make(chan struct{})}
}

func (h *blockingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *blockingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *blockingHandler) WithGroup(string) slog.Handler            { return h }
func (h *blockingHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.match) {
		h.once.Do(func() { close(h.entered) })
		<-h.release
	}
	return nil
}

// The reader never runs user code: a log handler that blocks on the
// slow-consumer warning does not stop deliveries.
func TestSignalsSlowLogHandlerDoesNotStallTheReader(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	h := newBlockingHandler("slow signal consumer")
	c := newClient(t, addrsOf(srv), WithLogger(slog.New(h)))
	t.Cleanup(func() { close(h.release) }) // before the Client's Close (cleanups run last-in first-out)
	ctx := testCtx(t)
	slow, err := c.Listen(ctx, "slow", Buffer(1))
	require.NoError(t, err)
	fast, err := c.Listen(ctx, "fast")
	require.NoError(t, err)
	emit(t, c, "slow", "1")
	emit(t, c, "slow", "2") // dropped: the warning blocks in the handler
	<-h.entered
	for i := 0; i < 5; i++ {
		emit(t, c, "fast", strconv.Itoa(i))
		assert.Equal(t, strconv.Itoa(i), next(t, fast).Payload)
	}
	assert.Equal(t, uint64(1), slow.Dropped())
	assert.Zero(t, c.servers[0].pool.Stats().Broken)
}

// Nor does the break handler log: the gap arrives while the handler blocks
// on the "connection lost" warning.
func TestSignalsSlowLogHandlerDoesNotDelayTheGap(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	h := newBlockingHandler("listener connection lost")
	c := newClient(t, addrsOf(srv), WithLogger(slog.New(h)))
	t.Cleanup(func() { close(h.release) })
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "g.>")
	require.NoError(t, err)
	srv.DropConnections()
	_, err = sub.Next(ctx)
	require.ErrorIs(t, err, ErrSignalGap)
	<-h.entered
}

// A subscription of a pattern whose unlisten is still due finds the
// pattern listening: no duplicate listen (a server before v1.16 refuses
// one at --max-subscriptions).
func TestSignalsResubscribeBeforeUnlistenSendsNoDuplicateListen(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{ReadTimeout: 2 * time.Minute})
	c := newClient(t, addrsOf(srv), WithKeepAlive(time.Minute), WithServerReadTimeout(2*time.Minute))
	ctx := testCtx(t)
	a, err := c.Listen(ctx, "a")
	require.NoError(t, err)

	// Keep the supervisor busy: it waits for the reply to a listen that
	// the stalled server does not read.
	resume := srv.Stall(0)
	written := c.servers[0].pool.Stats().Requests
	otherErr := make(chan error, 1)
	go func() {
		_, err := c.Listen(ctx, "other")
		otherErr <- err
	}()
	require.Eventually(t, func() bool { return c.servers[0].pool.Stats().Requests > written }, testTimeout, time.Millisecond)
	require.NoError(t, a.Close())
	t.Cleanup(resume)
	a2, err := c.Listen(ctx, "a")
	require.NoError(t, err, "answered at once (the server is stalled): still listening")
	resume()
	require.NoError(t, <-otherErr)
	assert.Equal(t, 1, emit(t, c, "a", "p"))
	assert.Equal(t, "p", next(t, a2).Payload)
	st := srv.Stats()
	assert.EqualValues(t, 2, st.Requests["listen"], "a and other, once each")
	assert.EqualValues(t, 0, st.Requests["unlisten"])
}

// Many subscriptions of one pattern: removal from the middle (O(1) swap)
// leaves every other subscription served exactly once.
func TestSignalsManySubscriptionsCloseInAnyOrder(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	var subs []*Subscription
	for i := 0; i < 50; i++ {
		pattern := "m.x"
		if i%2 == 1 {
			pattern = "m.>"
		}
		s, err := c.Listen(ctx, pattern)
		require.NoError(t, err)
		subs = append(subs, s)
	}
	closed := map[int]bool{}
	for _, i := range []int{0, 49, 25, 10, 11, 3, 48} {
		require.NoError(t, subs[i].Close())
		closed[i] = true
	}
	assert.Equal(t, 1, emit(t, c, "m.x", "p"))
	for i, s := range subs {
		if closed[i] {
			continue
		}
		assert.Equal(t, "p", next(t, s).Payload, "subscription %d", i)
		assertEmpty(t, s)
	}
}

func TestSignalsQueueGroupFullMemberHandsOverAndDropsCountOnTheTurn(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv), WithGroupConns(1)) // the members share a connection
	ctx := testCtx(t)
	m1, err := c.Listen(ctx, "q", Group("g"), Buffer(1))
	require.NoError(t, err)
	m2, err := c.Listen(ctx, "q", Group("g"), Buffer(1))
	require.NoError(t, err)
	// Turns: m1, m2, m1, m2, m1.
	assert.Equal(t, 1, emit(t, c, "q", "s1")) // m1
	require.Eventually(t, func() bool { return len(m1.C()) == 1 }, testTimeout, time.Millisecond)
	assert.Equal(t, 1, emit(t, c, "q", "s2")) // m2
	assert.Equal(t, "s2", next(t, m2).Payload)
	assert.Equal(t, 1, emit(t, c, "q", "s3")) // m1's turn, but full: m2 takes it
	require.Eventually(t, func() bool { return len(m2.C()) == 1 }, testTimeout, time.Millisecond)
	assert.Zero(t, m1.Dropped()+m2.Dropped())
	assert.Equal(t, 1, emit(t, c, "q", "s4")) // m2's turn; both full: dropped on m2
	require.Eventually(t, func() bool { return m2.Dropped() == 1 }, testTimeout, time.Millisecond)
	assert.Equal(t, 1, emit(t, c, "q", "s5")) // m1's turn; both full: dropped on m1
	require.Eventually(t, func() bool { return m1.Dropped() == 1 }, testTimeout, time.Millisecond)
	assert.Equal(t, "s1", next(t, m1).Payload)
	assert.Equal(t, "s3", next(t, m2).Payload)
	assertEmpty(t, m1)
	assertEmpty(t, m2)
	assert.Equal(t, uint64(1), m2.Dropped())
}

func TestSignalsQueueGroupReconnectsAndReportsTheGap(t *testing.T) {
	t.Parallel()
	srvs := threeServers(t, testutil.Config{})
	c := newClient(t, addrsOf(srvs...))
	ctx := testCtx(t)
	m, err := c.Listen(ctx, "w.>", Group("g"))
	require.NoError(t, err)
	victim := srvs[1]
	victim.DropConnections()
	_, err = m.Next(ctx)
	var g *GapError
	require.ErrorAs(t, err, &g)
	assert.Equal(t, victim.Addr(), g.Server)
	waitListening(t, victim, "w.>", "g")
	ch := channelOn(t, c, "w.", victim.Addr(), nil)
	assert.Equal(t, 1, emit(t, c, ch, "after"))
	assert.Equal(t, "after", nextPastResume(t, m).Payload)
	assertEmpty(t, m)
}

func TestSignalsRangeOverCEndsOnClientClose(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c, err := New(addrsOf(srv))
	require.NoError(t, err)
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "r")
	require.NoError(t, err)
	assert.Equal(t, 1, emit(t, c, "r", "one"))
	done := make(chan []string)
	first := make(chan struct{})
	go func() {
		var got []string
		for sig := range sub.C() {
			if got = append(got, sig.Payload); len(got) == 1 {
				close(first)
			}
		}
		done <- got
	}()
	// Emit's count means the server queued the push, not that it arrived:
	// close only once the consumer has it.
	select {
	case <-first:
	case <-ctx.Done():
		t.Fatal("the signal never arrived")
	}
	require.NoError(t, c.Close())
	select {
	case got := <-done:
		assert.Equal(t, []string{"one"}, got)
	case <-ctx.Done():
		t.Fatal("range over C did not end")
	}
}

// Listen, Close, Emit, connection drops and Client.Close all at once (run
// with -race): nothing hangs, and nothing is left behind.
func TestSignalsStressListenCloseAndBreaks(t *testing.T) {
	t.Parallel()
	srvs := threeServers(t, testutil.Config{})
	churn := func(c *Client, ctx context.Context, stop chan struct{}, drain bool) *sync.WaitGroup {
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Go(func() {
				pats := []string{"s.>", "s.a", "s.*", ">", "s.b"}
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					// Buffers above the channel's slots exercise the
					// overflow queue and its drainer under Close.
					opts := []ListenOption{Buffer([]int{1, 3, signalChanSlots + 8, 200}[i%4])}
					if i%3 == 0 {
						opts = append(opts, Group("g"))
					}
					lctx, cancel := context.WithTimeout(ctx, time.Duration(i%5)*time.Millisecond)
					s, err := c.Listen(lctx, pats[(g+i)%len(pats)], opts...)
					cancel()
					if err != nil {
						continue
					}
					if drain {
						wg.Go(func() {
							for range s.C() {
							}
						})
					}
					if i%2 == 0 {
						_ = s.Close()
					} else {
						wg.Go(func() { _ = s.Close() })
					}
				}
			})
		}
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = c.Emit(ctx, "s.a", "p")
			}
		})
		return &wg
	}
	dropSome := func() {
		for i := 0; i < 5; i++ {
			time.Sleep(50 * time.Millisecond) // the subject: churn for a while between drops
			srvs[i%3].DropConnections()
		}
	}

	t.Run("close-client-under-load", func(t *testing.T) {
		for round := 0; round < 3; round++ {
			c, err := New(addrsOf(srvs...), WithKeepAlive(200*time.Millisecond))
			require.NoError(t, err)
			stop := make(chan struct{})
			wg := churn(c, testCtx(t), stop, true)
			dropSome()
			closed := make(chan struct{})
			go func() { _ = c.Close(); close(closed) }()
			select {
			case <-closed:
			case <-time.After(testTimeout):
				t.Fatal("Client.Close hung")
			}
			close(stop)
			wg.Wait()
		}
	})

	t.Run("nothing-left-behind", func(t *testing.T) {
		c := newClient(t, addrsOf(srvs...), WithKeepAlive(200*time.Millisecond))
		stop := make(chan struct{})
		wg := churn(c, testCtx(t), stop, false)
		dropSome()
		close(stop)
		wg.Wait()
		require.Eventually(t, func() bool {
			for _, s := range c.servers {
				if s.pool.Stats().ListenerConns != 0 {
					return false
				}
			}
			for _, s := range srvs {
				if len(s.Stats().SignalChannels) != 0 {
					return false
				}
			}
			c.signals.mu.Lock()
			defer c.signals.mu.Unlock()
			return len(c.signals.listeners) == 0 && len(c.signals.subs) == 0
		}, testTimeout, 10*time.Millisecond)
	})
}

// signalsInChLocked counts exactly the signals, not the gap markers, that
// the channel holds, whatever the interleaving of sends and reads.
func TestSubscriptionCountsTheSignalsInItsChannel(t *testing.T) {
	t.Parallel()
	for _, size := range []int{1, 2, 5, signalChanSlots, 1000} {
		s := &Subscription{size: size, ch: make(chan Signal, min(size, signalChanSlots)+1)}
		s.gapsAt = make([]uint64, cap(s.ch)+1)
		var kinds []bool // what the channel holds, oldest first: true = marker
		rng := rand.New(rand.NewPCG(uint64(size), 1))
		for range 10000 {
			if len(kinds) < cap(s.ch) && (len(kinds) == 0 || rng.IntN(2) == 0) {
				gap := rng.IntN(3) == 0
				sig := Signal{Payload: "p"}
				if gap {
					sig = Signal{Err: &GapError{Server: "s"}}
				}
				s.mu.Lock()
				s.sendLocked(sig)
				s.mu.Unlock()
				kinds = append(kinds, gap)
			} else {
				got := <-s.ch
				require.Equal(t, kinds[0], got.Err != nil)
				kinds = kinds[1:]
			}
			want := 0
			for _, gap := range kinds {
				if !gap {
					want++
				}
			}
			s.mu.Lock()
			require.Equal(t, want, s.signalsInChLocked(), "size %d", size)
			s.mu.Unlock()
		}
	}
}

// A gap that merges into one still waiting in the overflow queue (same
// server, no signal behind it) is not a gap of its own: of three breaks the
// consumer sees two markers (one took the channel's reserved slot, the
// third merged into the second), and Snapshot and OnSignalGap count two.
func TestSignalsMergedGapIsCountedOnce(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	gaps := make(chan SignalGapInfo, 8)
	c := newClient(t, addrsOf(srv), WithHooks(Hooks{OnSignalGap: func(g SignalGapInfo) { gaps <- g }}))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "g", Buffer(1))
	require.NoError(t, err)
	assert.Equal(t, 1, emit(t, c, "g", "s"))
	require.Eventually(t, func() bool { return len(sub.C()) == 1 }, testTimeout, time.Millisecond)
	for range 3 { // the first marker takes the reserved slot, the others queue and merge
		srv.DropConnections()
		waitListening(t, srv, "g", "")
	}
	waitClientListening(t, c, c.servers[0], "g") // or the gap taken below may get a resumed one
	require.Eventually(t, func() bool { return c.Snapshot().SignalGaps >= 2 }, testTimeout, time.Millisecond)
	assert.Equal(t, "s", recvC(t, sub).Payload)
	require.ErrorIs(t, recvC(t, sub).Err, ErrSignalGap)
	require.ErrorIs(t, recvC(t, sub).Err, ErrSignalGap)
	assertEmpty(t, sub)
	assert.Equal(t, int64(2), c.Snapshot().SignalGaps)
	require.NoError(t, c.Close()) // runs the hooks queued before it
	assert.Len(t, gaps, 2)
}

// A server shutting down (v1.16+) answers the next request with
// error_draining and closes the connection. When that request is a
// keepalive ping, the break says so (ErrDraining), not that the server
// violated the protocol.
func TestSignalsDrainingServerAnswersAKeepalivePing(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{ShutdownTimeout: time.Minute})
	broken := make(chan error, 16)
	c := newClient(t, addrsOf(srv), WithKeepAlive(200*time.Millisecond), WithHooks(Hooks{
		OnConnBroken: func(_ string, err error) { broken <- err },
	}))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "a.>")
	require.NoError(t, err)

	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(context.Background()) }()
	_, err = sub.Next(ctx) // the listener's next ping finds the drain
	require.ErrorIs(t, err, ErrSignalGap)
	assert.ErrorIs(t, err, ErrDraining)
	assert.NotContains(t, err.Error(), "protocol violation")
	select {
	case err := <-broken:
		assert.ErrorIs(t, err, ErrDraining)
	case <-ctx.Done():
		t.Fatal("OnConnBroken was not called")
	}
	require.NoError(t, sub.Close())
	require.NoError(t, c.Close()) // its last connections: the drain ends
	require.NoError(t, <-done)
}

// While the drainer sends a gap marker without the subscription's lock
// (the channel was full), the marker may already be in the channel though
// not yet recorded: a signal offered then is still not counted against the
// buffer by the marker. Buffer(1); the channel holds A and a marker, a
// second marker waits for room; the consumer takes A.
func TestSubscriptionCountsAMarkerTheDrainerIsSending(t *testing.T) {
	t.Parallel()
	s := &Subscription{size: 1, ch: make(chan Signal, 2)}
	s.gapsAt = make([]uint64, cap(s.ch)+1)
	defer s.finish(ErrSubscriptionClosed)
	require.True(t, s.offer(Signal{Channel: "c", Payload: "A"}))
	require.True(t, s.gap(&GapError{Server: "s1"})) // the channel: A, marker
	require.True(t, s.gap(&GapError{Server: "s2"})) // overflow: the drainer waits for room
	require.Eventually(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.sending
	}, testTimeout, time.Millisecond, "the drainer is not sending")

	s.mu.Lock()
	require.Equal(t, "A", (<-s.ch).Payload)
	// The drainer's send completes now; it records it only once it has
	// the lock, which this test holds.
	require.Eventually(t, func() bool { return len(s.ch) == 2 }, testTimeout, time.Millisecond)
	assert.Zero(t, s.signalsInChLocked(), "two markers in the channel counted as a signal")
	s.mu.Unlock()
	assert.True(t, s.offer(Signal{Channel: "c", Payload: "B"}), "B dropped: a marker took its place in the buffer")
}

// Next, like every other call, keeps the cause of a context cancelled with
// one (it returned the bare ctx.Err(): review "ctx").
func TestNextKeepsTheCancellationCause(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	s, err := c.Listen(testCtx(t), "n.a")
	require.NoError(t, err)
	defer s.Close()
	cause := errors.New("shutting down the consumer")
	for _, before := range []bool{true, false} {
		ctx, cancel := context.WithCancelCause(context.Background())
		if before {
			cancel(cause)
		} else {
			time.AfterFunc(20*time.Millisecond, func() { cancel(cause) })
		}
		_, err := s.Next(ctx)
		require.ErrorIs(t, err, context.Canceled)
		require.ErrorIs(t, err, cause, "cancelled before: %v", before)
	}
}

// Stats and a long Emit whose context has already ended dial nothing, and
// count no dial failure (Stats.DialFailures feeds a dial-failure metric
// that fired on a healthy server: review "ctx").
func TestEndedContextCountsNoDialFailure(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.Stats(ctx)
	require.ErrorIs(t, err, context.Canceled)
	_, err = c.Emit(ctx, "n.a", strings.Repeat("p", 300))
	require.ErrorIs(t, err, context.Canceled)
	ps := c.servers[0].pool.Stats()
	require.Zero(t, ps.DialFailures)
	require.Zero(t, ps.Dials)
}
