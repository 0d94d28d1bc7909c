package dflock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
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

	gotAll := recvUntil(t, all, func(s Signal) bool { return s.Channel == "lit.a" })
	// lit.a's server may be done before the others: wait for all three ends.
	ends := 0
	for _, s := range gotAll {
		if isEnd(s) {
			ends++
		}
	}
	if ends < 3 {
		gotAll = append(gotAll, recvUntil(t, all, endsSeen(3-ends))...)
	}
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
	srvs := threeServers(t, testutil.Config{})
	c1 := newClient(t, addrsOf(srvs...))
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

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), sub)
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
	assert.Equal(t, 1, logs.count("slow signal consumer"), "one warning per episode")
	assert.Zero(t, c.servers[0].pool.Stats().Broken, "no connection broke")
	assert.Equal(t, 0, logs.count("listener connection lost"))

	// A new episode warns again.
	for i := 0; i < buf+2; i++ {
		emit(t, c, "s.y", "again")
	}
	require.Eventually(t, func() bool { return logs.count("slow signal consumer") == 2 }, testTimeout, time.Millisecond)
}

func TestSignalsIdleListenerSurvivesServerReadTimeout(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{ReadTimeout: time.Second})
	c := newClient(t, addrsOf(srv), WithKeepAlive(300*time.Millisecond))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "idle.>")
	require.NoError(t, err)
	time.Sleep(3500 * time.Millisecond) // three read timeouts of idleness: time-based, not synchronisation
	assert.Equal(t, 1, emit(t, c, "idle.a", "still here"))
	assert.Equal(t, Signal{Channel: "idle.a", Payload: "still here"}, next(t, sub))
	assertEmpty(t, sub)
	assert.Zero(t, c.servers[0].pool.Stats().Broken)
	assert.Positive(t, c.servers[0].pool.Stats().Pings)
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
		sig := next(t, sub)
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
			start := time.Now()
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
			assert.Less(t, time.Since(start), 2*time.Second, "promptly")
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
	} {
		_, err := c.Listen(ctx, tc.pattern, tc.opts...)
		require.ErrorIs(t, err, ErrInvalidArgument, "%q", tc.pattern)
		var ae *ArgError
		require.ErrorAs(t, err, &ae)
		assert.Equal(t, tc.arg, ae.Arg, "%q", tc.pattern)
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

func TestSignalsCancelledListenDoesNotDisturbOthers(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "k.>")
	require.NoError(t, err)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = c.Listen(cctx, "k.other")
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 1, emit(t, c, "k.other", "p"))
	assert.Equal(t, "p", next(t, sub).Payload)
	assertEmpty(t, sub)
	assert.Zero(t, c.servers[0].pool.Stats().Broken)
	require.Eventually(t, func() bool {
		return len(srv.Stats().SignalChannels) == 1
	}, testTimeout, time.Millisecond, "the cancelled pattern is not left listening")
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
