package dflock

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/shard"
	"github.com/dflock-sdk/go/testutil"
)

// checkSeq consumes s until it has seen a signal with sequence >= last, and
// fails on a duplicate, a reordering, or a hole with no gap marker before it.
func checkSeq(t *testing.T, s *Subscription, last int, unsure func(int) bool, dump func()) (gaps, holes int) {
	t.Helper()
	ctx := testCtx(t)
	prev := -1
	gapSince := true // the first signal may come after anything
	for prev < last {
		sig, err := s.Next(ctx)
		if errors.Is(err, ErrSignalGap) {
			gaps++
			gapSince = true
			continue
		}
		if err != nil {
			dumpListeners(t, s.c)
			if dump != nil {
				dump()
			}
		}
		require.NoError(t, err, "after seq %d", prev)
		n, err := strconv.Atoi(sig.Payload)
		require.NoError(t, err)
		if n <= prev && unsure(n) {
			// An Emit that failed may still have been read by the server,
			// and relayed late (after later Emits on a new connection).
			t.Logf("late delivery of failed emit %d after %d", n, prev)
			continue
		}
		require.Greater(t, n, prev, "duplicate or out of order")
		missing := false
		for k := prev + 1; k < n; k++ {
			if unsure == nil || !unsure(k) {
				missing = true
			}
		}
		if missing && !gapSince {
			holes++
			t.Errorf("signals %d..%d lost with no gap marker before %d (dropped %d)", prev+1, n-1, n, s.Dropped())
		}
		prev, gapSince = n, false
	}
	return gaps, holes
}

// Every loss between two delivered signals must be reported by a gap,
// whatever breaks the listener connection.
func TestSignalFaultsNoSilentLossUnderResets(t *testing.T) {
	t.Parallel()
	for _, fault := range []string{"reset", "drop"} {
		t.Run(fault, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{})
			px := newProxy(t, srv.Addr())
			sub := newClient(t, []string{px.Addr()}, WithKeepAlive(200*time.Millisecond))
			pub := newClient(t, addrsOf(srv))
			ctx := testCtx(t)
			s, err := sub.Listen(ctx, "ord", Buffer(MaxSignalBuffer))
			require.NoError(t, err)

			const total = 3000
			stop := make(chan struct{})
			var mu sync.Mutex
			failed := map[int]bool{}
			unsure := func(k int) bool { mu.Lock(); defer mu.Unlock(); return failed[k] }
			var lastSeq, lastN atomic.Int64
			var wg sync.WaitGroup
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
					if fault == "reset" {
						px.ResetAll()
					} else {
						srv.DropConnections()
					}
				}
			})
			wg.Go(func() {
				for i := 0; i <= total; i++ {
					n, err := pub.Emit(ctx, "ord", strconv.Itoa(i))
					lastSeq.Store(int64(i))
					lastN.Store(int64(n))
					if err != nil {
						// The publisher's own connection may be dropped
						// too: that signal may or may not have gone out.
						mu.Lock()
						failed[i] = true
						mu.Unlock()
						time.Sleep(time.Millisecond)
						continue
					}
					if i%20 == 0 {
						time.Sleep(time.Millisecond)
					}
				}
				// The end marker, until the checker has it.
				for {
					select {
					case <-stop:
						return
					case <-ctx.Done():
						return
					case <-time.After(5 * time.Millisecond):
					}
					_, _ = pub.Emit(ctx, "ord", strconv.Itoa(total+1))
				}
			})
			gaps, holes := checkSeq(t, s, total+1, func(k int) bool { return k == total+1 || unsure(k) }, func() {
				st := srv.Stats()
				t.Logf("server conns %d channels %+v; proxy pairs %d; last emit %d counted %d", st.Connections, st.SignalChannels, px.Conns(), lastSeq.Load(), lastN.Load())
			})
			close(stop)
			wg.Wait()
			t.Logf("gaps %d", gaps)
			require.Zero(t, holes)
			require.Zero(t, s.Dropped())
		})
	}
}

// waitResumed emits on channel from pub until the server counts want
// receivers.
func waitResumed(t *testing.T, pub *Client, channel string, want int) {
	t.Helper()
	ctx := testCtx(t)
	for {
		n, err := pub.Emit(ctx, channel, "probe")
		require.NoError(t, ctx.Err(), "never resumed: %v", err)
		if err == nil && n == want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSignalFaultsBlackholeThenHeal(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"lift", "reset-lift"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{})
			px := newProxy(t, srv.Addr())
			sub := newClient(t, []string{px.Addr()}, WithKeepAlive(100*time.Millisecond), WithDialTimeout(300*time.Millisecond))
			pub := newClient(t, addrsOf(srv))
			ctx := testCtx(t)
			s, err := sub.Listen(ctx, "bh")
			require.NoError(t, err)
			g, err := sub.Listen(ctx, "bh", Group("w"))
			require.NoError(t, err)
			require.Equal(t, 2, emit(t, pub, "bh", "before"))
			require.Equal(t, "before", next(t, s).Payload)
			require.Equal(t, "before", next(t, g).Payload)

			px.Blackhole(true)
			// Listen and Emit through the partition honour their contexts.
			lctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			_, err = sub.Listen(lctx, "other")
			cancel()
			require.Error(t, err)
			ectx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			_, err = sub.Emit(ectx, "bh", "x")
			cancel()
			require.Error(t, err)

			_, err = s.Next(ctx)
			require.ErrorIs(t, err, ErrSignalGap)
			_, err = g.Next(ctx)
			require.ErrorIs(t, err, ErrSignalGap)
			emit(t, pub, "bh", "lost")
			if mode == "reset-lift" {
				px.ResetAll()
			}
			px.Blackhole(false)
			// Until the server has dropped the old connections (it may
			// count them for a while) and taken the re-listens, a signal
			// may reach nobody: emit until each subscription has one.
			for _, x := range []*Subscription{s, g} {
				for i := 0; ; i++ {
					require.NoError(t, ctx.Err())
					emit(t, pub, "bh", "after"+strconv.Itoa(i))
					rctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
					sig, err := x.Next(rctx)
					cancel()
					if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrSignalGap) {
						continue
					}
					require.NoError(t, err)
					require.NotEqual(t, "lost", sig.Payload, "delivered from the old connection")
					break
				}
			}
			// Signals of the loops above may still be on their way: a
			// last one, after them on the same channel, marks the end.
			emit(t, pub, "bh", "end")
			for _, x := range []*Subscription{s, g} {
				for {
					sig := next(t, x)
					require.NotEqual(t, "lost", sig.Payload, "delivered from the old connection")
					if sig.Payload == "end" {
						break
					}
				}
			}
			assertEmpty(t, s)
			assertEmpty(t, g)
		})
	}
}

// At the server's --max-subscriptions, replacing a subscription (Close one
// pattern, then Listen another) must not fail: the supervisor sends the
// unlisten and the listen in one write, and the server makes room only if
// the unlisten comes first. due() appends them in map order.
func TestSignalFaultsReplaceAtMaxSubscriptions(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{MaxSubscriptions: 1})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	s, err := c.Listen(ctx, "p0")
	require.NoError(t, err)
	const rounds = 200
	fails := 0
	for i := 1; i <= rounds; i++ {
		require.NoError(t, s.Close())
		s, err = c.Listen(ctx, "p"+strconv.Itoa(i))
		if err != nil {
			if fails == 0 {
				t.Logf("round %d: %v", i, err)
			}
			fails++
			s, err = c.Listen(ctx, "again"+strconv.Itoa(i)) // the unlisten went out by now
			require.NoError(t, err)
		}
	}
	require.Zero(t, fails, "Listen after Close refused at the cap, of %d rounds", rounds)
}

func TestSignalFaultsResumeAfterRefusedAndClosedDials(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"refuse", "closenew"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{})
			px := newProxy(t, srv.Addr())
			// The default keepalive: the faults break the connections
			// at once, and a short one would also cut the resumed
			// listener of a machine too loaded to answer its ping in
			// time (a second gap, after the one this test waits out).
			sub := newClient(t, []string{px.Addr()})
			pub := newClient(t, addrsOf(srv))
			ctx := testCtx(t)
			s, err := sub.Listen(ctx, "rf")
			require.NoError(t, err)
			set := px.RefuseNew
			if mode == "closenew" {
				set = px.CloseNew
			}
			set(true)
			px.ResetAll()
			_, err = s.Next(ctx)
			require.ErrorIs(t, err, ErrSignalGap)
			time.Sleep(500 * time.Millisecond) // several failed re-dials
			start := time.Now()
			set(false)
			waitResumed(t, pub, "rf", 1)
			t.Logf("resumed after %v", time.Since(start))
			require.Equal(t, 1, emit(t, pub, "rf", "after"))
			for {
				sig := nextPastResume(t, s)
				if sig.Payload == "after" {
					break
				}
			}
			assertEmpty(t, s)
		})
	}
}

func TestSignalFaultsEmitLoadKeepsPerChannelOrder(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{PushBuffer: 1 << 16})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	s, err := c.Listen(ctx, "load.>", Buffer(MaxSignalBuffer))
	require.NoError(t, err)
	const pubs, each = 16, 300
	long := string(make([]byte, 0)) + strings.Repeat("x", 300)
	var wg sync.WaitGroup
	for g := range pubs {
		wg.Go(func() {
			ch := "load." + strconv.Itoa(g)
			for i := range each {
				p := strconv.Itoa(i)
				if i%3 == 0 {
					p += " " + long
				}
				n, err := c.Emit(ctx, ch, p)
				if !assert.NoError(t, err) || !assert.Equal(t, 1, n) {
					return
				}
			}
		})
	}
	last := make(map[string]int)
	for got := 0; got < pubs*each; got++ {
		sig, err := s.Next(ctx)
		require.NoError(t, err, "after %d", got)
		f, _, _ := strings.Cut(sig.Payload, " ")
		n, err := strconv.Atoi(f)
		require.NoError(t, err)
		prev, ok := last[sig.Channel]
		if !ok {
			prev = -1
		}
		require.Equal(t, prev+1, n, "channel %s", sig.Channel)
		last[sig.Channel] = n
	}
	wg.Wait()
	assertEmpty(t, s)
	require.Zero(t, s.Dropped())
}

func TestSignalFaultsServerStall(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	sub := newClient(t, addrsOf(srv), WithKeepAlive(100*time.Millisecond), WithDialTimeout(300*time.Millisecond))
	pub := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	s, err := sub.Listen(ctx, "st")
	require.NoError(t, err)
	g, err := sub.Listen(ctx, "st", Group("w"))
	require.NoError(t, err)
	resume := srv.Stall(0)
	for _, x := range []*Subscription{s, g} {
		_, err = x.Next(ctx)
		require.ErrorIs(t, err, ErrSignalGap)
	}
	time.Sleep(700 * time.Millisecond) // re-dials time out meanwhile
	resume()
	for _, x := range []*Subscription{s, g} {
		got := false
		for i := 0; !got; i++ {
			require.NoError(t, ctx.Err())
			emit(t, pub, "st", "after"+strconv.Itoa(i))
			rctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			sig, err := x.Next(rctx)
			cancel()
			if err == nil {
				require.Contains(t, sig.Payload, "after")
				got = true
			}
		}
	}
}

// Long-lived subscriptions (literal and wildcard, over two servers behind
// proxies) keep their guarantees while other subscriptions of the same
// Client come and go and the connections break: per channel, no duplicate,
// no reordering, and no hole without a gap marker of that server before it.
func TestSignalFaultsInvariantsUnderChurnAndFaults(t *testing.T) {
	t.Parallel()
	srvs := []*testutil.Server{newServer(t, testutil.Config{}), newServer(t, testutil.Config{})}
	pxs := []*testutil.Proxy{newProxy(t, srvs[0].Addr()), newProxy(t, srvs[1].Addr())}
	sub := newClient(t, []string{pxs[0].Addr(), pxs[1].Addr()}, WithKeepAlive(200*time.Millisecond), WithSharding(shard.CRC32))
	pub := newClient(t, addrsOf(srvs...), WithSharding(shard.CRC32))
	ctx := testCtx(t)
	// Channels: one per server, named after the proxied address.
	var chans []string
	for i := range 2 {
		chans = append(chans, channelOn(t, sub, "iv.", pxs[i].Addr(), nil))
	}
	for i, ch := range chans {
		require.Equal(t, srvs[i].Addr(), pub.ServerFor(ch), "same placement through the proxies")
	}
	wild, err := sub.Listen(ctx, "iv.*", Buffer(MaxSignalBuffer))
	require.NoError(t, err)
	lit, err := sub.Listen(ctx, chans[0], Buffer(MaxSignalBuffer))
	require.NoError(t, err)

	const total = 1500
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := map[string]bool{}
	// Churn: other subscriptions, some on the same patterns.
	for g := range 4 {
		wg.Go(func() {
			pats := []string{"iv.*", chans[0], chans[1], "iv.>", "other"}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				lctx, cancel := context.WithTimeout(ctx, time.Duration(1+i%7)*time.Millisecond)
				s, err := sub.Listen(lctx, pats[(g+i)%len(pats)], Buffer(1+i%3))
				cancel()
				if err == nil {
					time.Sleep(time.Duration(i%3) * time.Millisecond)
					_ = s.Close()
				}
			}
		})
	}
	// The faults stop once every numbered signal is emitted, so that the
	// listeners can settle and deliver the end marker: on a slow machine a
	// reconnect and re-listen can take longer than the faults' period, and
	// with no end to them the checkers would wait forever.
	emitted := make(chan struct{})
	var emitting sync.WaitGroup
	emitting.Add(len(chans))
	go func() { emitting.Wait(); close(emitted) }()
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-emitted:
				return
			case <-time.After(37 * time.Millisecond):
			}
			switch i % 3 {
			case 0:
				pxs[i%2].ResetAll()
			case 1:
				srvs[i%2].DropConnections()
			}
		}
	})
	pubDone := make(chan struct{})
	for _, ch := range chans {
		wg.Go(func() {
			for i := 0; i <= total; i++ {
				if _, err := pub.Emit(ctx, ch, strconv.Itoa(i)); err != nil {
					mu.Lock()
					failed[ch+"/"+strconv.Itoa(i)] = true
					mu.Unlock()
				}
				if i%10 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			emitting.Done()
			// The end marker, until every checker has it.
			for {
				select {
				case <-pubDone:
					return
				case <-ctx.Done():
					return
				case <-time.After(5 * time.Millisecond):
				}
				_, _ = pub.Emit(ctx, ch, strconv.Itoa(total+1))
			}
		})
	}
	unsure := func(ch string, k int) bool {
		mu.Lock()
		defer mu.Unlock()
		return k == total+1 || failed[ch+"/"+strconv.Itoa(k)]
	}
	check := func(s *Subscription, want []string) {
		prev := map[string]int{}
		gapSince := map[string]bool{}
		for i, ch := range want {
			prev[ch] = -1
			gapSince[pxs[i].Addr()] = true
		}
		done := 0
		for done < len(want) {
			sig, err := s.Next(ctx)
			var g *GapError
			if errors.As(err, &g) {
				gapSince[g.Server] = true
				continue
			}
			if err != nil {
				dumpListeners(t, sub)
				for i, sv := range srvs {
					st := sv.Stats()
					t.Logf("server %d conns %d channels %+v; proxy pairs %d; prev %v", i, st.Connections, st.SignalChannels, pxs[i].Conns(), prev)
				}
			}
			require.NoError(t, err)
			n, err := strconv.Atoi(sig.Payload)
			require.NoError(t, err)
			p, ok := prev[sig.Channel]
			require.True(t, ok, sig.Channel)
			if p > total {
				continue // after the end marker
			}
			if n <= p && unsure(sig.Channel, n) {
				t.Logf("%s: late delivery of failed emit %d after %d", sig.Channel, n, p)
				continue
			}
			require.Greater(t, n, p, "%s: duplicate or out of order", sig.Channel)
			server := sub.ServerFor(sig.Channel)
			for k := p + 1; k < n; k++ {
				if !unsure(sig.Channel, k) && !gapSince[server] {
					t.Errorf("%s: %d lost with no gap before %d", sig.Channel, k, n)
					break
				}
			}
			prev[sig.Channel], gapSince[server] = n, false
			if n == total+1 {
				done++
			}
		}
	}
	var cw sync.WaitGroup
	cw.Go(func() { check(wild, chans) })
	cw.Go(func() { check(lit, chans[:1]) })
	cw.Wait()
	close(pubDone)
	close(stop)
	wg.Wait()
	require.Zero(t, wild.Dropped())
	require.Zero(t, lit.Dropped())
}

func dumpListeners(t *testing.T, c *Client) {
	h := &c.signals
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, l := range h.listeners {
		l.mu.RLock()
		t.Logf("listener %s group=%q cur=%v wanted=%d dirty=%d retry=%d", k.srv.addr, k.group, l.cur != nil, l.wanted, len(l.dirty), len(l.retry))
		if l.cur != nil {
			t.Logf("  conn err=%v dead=%v", l.cur.conn.err(), l.cur.dead.Load())
		}
		for _, p := range l.pats {
			t.Logf("  pat %q subs=%d on=%v sentOn=%v waiters=%d", p.pattern, len(p.subs), p.on, p.sentOn != nil, len(p.waiters))
		}
		l.mu.RUnlock()
	}
	for _, s := range c.servers {
		t.Logf("pool %s stats %+v err=%v", s.addr, s.pool.Stats(), s.pool.Err())
	}
}

func TestSignalFaultsBufferAccountingExact(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 2, 5, signalChanSlots - 1, signalChanSlots, signalChanSlots + 1, 100} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{PushBuffer: 4096})
			c := newClient(t, addrsOf(srv))
			ctx := testCtx(t)
			s, err := c.Listen(ctx, "acc", Buffer(n))
			require.NoError(t, err)
			const extra = 50
			for i := range n + extra {
				require.Equal(t, 1, emit(t, c, "acc", strconv.Itoa(i)))
			}
			require.Eventually(t, func() bool { return s.Dropped() == extra }, testTimeout, time.Millisecond, "dropped %d", s.Dropped())
			srv.DropConnections()
			waitListening(t, srv, "acc", "")
			for i := range n {
				sig, err := s.Next(ctx)
				require.NoError(t, err, "signal %d", i)
				require.Equal(t, strconv.Itoa(i), sig.Payload)
			}
			_, err = s.Next(ctx)
			require.ErrorIs(t, err, ErrSignalGap)
			assertEmpty(t, s)
			require.EqualValues(t, extra, s.Dropped())
		})
	}
}

// A queue group under connection resets: every signal reaches at most one
// member, and each member sees its share in order.
func TestSignalFaultsQueueGroupNoDuplicatesUnderResets(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	a := newClient(t, []string{px.Addr()}, WithKeepAlive(200*time.Millisecond), WithGroupConns(2))
	b := newClient(t, []string{px.Addr()}, WithKeepAlive(200*time.Millisecond))
	pub := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	var members []*Subscription
	for range 3 {
		s, err := a.Listen(ctx, "q.*", Group("g"), Buffer(MaxSignalBuffer))
		require.NoError(t, err)
		members = append(members, s)
	}
	s, err := b.Listen(ctx, "q.*", Group("g"), Buffer(MaxSignalBuffer))
	require.NoError(t, err)
	members = append(members, s)

	const total = 3000
	var mu sync.Mutex
	seen := map[int]int{}
	var rw sync.WaitGroup
	for i, m := range members {
		rw.Go(func() {
			prev := -1
			for {
				sig, err := m.Next(ctx)
				if errors.Is(err, ErrSignalGap) {
					continue
				}
				if err != nil {
					return
				}
				n, err := strconv.Atoi(sig.Payload)
				if !assert.NoError(t, err) {
					return
				}
				assert.Greater(t, n, prev, "member %d out of order", i)
				prev = n
				mu.Lock()
				seen[n]++
				mu.Unlock()
			}
		})
	}
	stop := make(chan struct{})
	var fw sync.WaitGroup
	fw.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(25 * time.Millisecond):
			}
			px.ResetAll()
		}
	})
	for i := range total {
		_, err := pub.Emit(ctx, "q.x", strconv.Itoa(i))
		require.NoError(t, err)
	}
	close(stop)
	fw.Wait()
	time.Sleep(200 * time.Millisecond)
	for _, m := range members {
		require.NoError(t, m.Close())
	}
	rw.Wait()
	mu.Lock()
	defer mu.Unlock()
	for n, k := range seen {
		require.Equal(t, 1, k, "signal %d delivered %d times", n, k)
	}
	t.Logf("delivered %d of %d", len(seen), total)
}

// A listener whose last subscription closes while it waits out its re-dial
// backoff retires at once: it neither dials again nor lingers for the rest
// of the pause (up to listenMaxBackoff).
func TestSignalListenerRetiresDuringRedialBackoff(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	sub := newClient(t, []string{px.Addr()})
	ctx := testCtx(t)
	s, err := sub.Listen(ctx, "bo")
	require.NoError(t, err)
	px.CloseNew(true)
	px.ResetAll()
	_, err = s.Next(ctx)
	require.ErrorIs(t, err, ErrSignalGap)
	// Four re-dials turned away put the backoff at 400 ms or more; right
	// after the fifth the supervisor is pausing (a draw below the few
	// microseconds this takes is the only way to race the Close).
	for px.TurnedAway() < 4 {
		require.NoError(t, ctx.Err(), "the listener stopped re-dialling")
		time.Sleep(time.Millisecond)
	}
	n := px.TurnedAway()
	for px.TurnedAway() == n {
		require.NoError(t, ctx.Err(), "the listener stopped re-dialling")
		runtime.Gosched()
	}
	require.NoError(t, s.Close())
	dials := px.TurnedAway()
	listeners := func() int {
		sub.signals.mu.Lock()
		defer sub.signals.mu.Unlock()
		return len(sub.signals.listeners)
	}
	require.Eventually(t, func() bool { return listeners() == 0 }, testTimeout, time.Millisecond,
		"the listener never retired")
	assert.Equal(t, dials, px.TurnedAway(), "the listener dialled for no subscription")
}
