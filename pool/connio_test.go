//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// echoServer is a hostile but protocol-correct dflockd stand-in: `n key
// <token> <lease>` is answered `ok <lease>`, so every reply says which
// request it answers; everything else gets `ok`. hostile adds, at random,
// push lines before a reply, replies split in two writes with a pause
// (a partial line), and delays.
func echoServer(t *testing.T, hostile bool) string {
	t.Helper()
	return testutil.ServeRequests(t, func(nc net.Conn, req [3]string) bool {
		reply := "ok\n"
		if req[0] == "n" {
			f := strings.Fields(req[2])
			reply = "ok " + f[1] + "\n"
		}
		if hostile {
			switch rand.IntN(8) {
			case 0:
				reply = "sig some.chan payload\n" + reply
			case 1:
				if _, err := nc.Write([]byte(reply[:2])); err != nil {
					return false
				}
				time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
				reply = reply[2:]
			case 2:
				time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
			}
		}
		_, err := nc.Write([]byte(reply))
		return err == nil
	})
}

// Stress: many callers on the lane, with contexts that end at random
// moments (also while a caller reads its own reply), renewals by
// SendBatch and releases by Owner.Request: every answered request gets
// its own reply, and every request is answered or handed to late exactly
// once.
func TestConnIOStressRepliesMatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		hostile bool
		n       int
	}{{false, 12}, {true, 12}, {false, 2}, {true, 2}} {
		hostile := tc.hostile
		t.Run(fmt.Sprintf("hostile=%v/goroutines=%d", hostile, tc.n), func(t *testing.T) {
			t.Parallel()
			addr := echoServer(t, hostile)
			p := newPool(t, Config{Addr: addr, LaneConns: 2})
			var next atomic.Int64
			var mismatch, abandoned, ok, lates atomic.Int64
			var wg sync.WaitGroup
			deadline := time.Now().Add(time.Second)
			pending := sync.WaitGroup{}
			for g := range tc.n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(g), 2))
					for time.Now().Before(deadline) {
						lease := next.Add(1) + 1000
						req := wire.Request{Cmd: wire.CmdRenew, Key: "k", Token: "t", Lease: lease}
						ctx, cancel := context.Background(), context.CancelFunc(func() {})
						if rng.IntN(2) == 0 {
							ctx, cancel = context.WithTimeout(context.Background(), time.Duration(rng.IntN(400))*time.Microsecond)
						}
						switch rng.IntN(4) {
						case 0, 1:
							r, _, err := p.Do(ctx, req)
							if err == nil {
								ok.Add(1)
								if r.Lease != lease {
									mismatch.Add(1)
									t.Errorf("Do: sent lease %d, reply %d", lease, r.Lease)
								}
							} else if ctx.Err() != nil {
								abandoned.Add(1)
							} else {
								t.Errorf("Do: %v", err)
							}
						case 2:
							o, err := p.Lane(context.Background())
							if err != nil { // not require: this is not the test's goroutine
								t.Errorf("Lane: %v", err)
								cancel()
								return
							}
							pending.Add(1)
							var once atomic.Bool
							o.SendBatch([]wire.Request{req}, func(_ int, r wire.Reply, err error) {
								defer pending.Done()
								if !once.CompareAndSwap(false, true) {
									t.Errorf("batch callback twice")
								}
								if err != nil {
									t.Errorf("batch: %v", err)
								} else if r.Lease != lease {
									mismatch.Add(1)
									t.Errorf("batch: sent lease %d, reply %d", lease, r.Lease)
								}
							})
						case 3:
							o, err := p.Lane(context.Background())
							if err != nil { // not require: this is not the test's goroutine
								t.Errorf("Lane: %v", err)
								cancel()
								return
							}
							var once atomic.Bool
							pending.Add(1)
							r, answered, err := o.Request(ctx, req, func(_ int, r wire.Reply, err error) {
								defer pending.Done()
								lates.Add(1)
								if !once.CompareAndSwap(false, true) {
									t.Errorf("late twice")
								}
								if err != nil {
									t.Errorf("late: %v", err)
								} else if r.Lease != lease {
									mismatch.Add(1)
									t.Errorf("late: sent lease %d, reply %d", lease, r.Lease)
								}
							})
							if answered {
								pending.Done()
								if err != nil {
									t.Errorf("Request: %v", err)
								} else if r.Lease != lease {
									mismatch.Add(1)
									t.Errorf("Request: sent lease %d, reply %d", lease, r.Lease)
								}
							}
						}
						cancel()
						if tc.n < 4 {
							time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
						}
					}
				}()
			}
			wg.Wait()
			done := make(chan struct{})
			go func() { pending.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(wait):
				t.Fatal("some batch callback or late never came")
			}
			t.Logf("ok %d abandoned %d lates %d mismatches %d; broken %d", ok.Load(), abandoned.Load(), lates.Load(), mismatch.Load(), p.Stats().Broken)
			require.Zero(t, p.Stats().Broken)
		})
	}
}

// A context.AfterFunc interrupt that comes late — the context of the
// caller that read the last reply ended just as it finished, and its
// interruptRead runs only now — may find the turn taken by Acquire's
// brokenWhileIdle check (turnCaller during its probe). brokenWhileIdle then
// gives the turn back to nobody without clearing the forced read deadline,
// so the reader, resumed by the quiet watch, reads with a deadline in the
// past and breaks a healthy connection (i/o timeout) that Acquire has just
// handed out.
func TestConnIOLateInterruptDuringAcquireProbe(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), OnConnBroken: rec.hook})
	h, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	c := h.c
	settle(t, c) // the reader stands aside, as right after a reply
	h.Release()
	ageLastRead(c) // the next Acquire probes the socket
	c.mu.Lock()
	// The late AfterFunc of the last caller runs while the probe looks
	// at the socket (after its deadline check, before it returns).
	peek := c.peekFn
	c.peekFn = func(fd uintptr) bool {
		done := peek(fd)
		c.interruptRead()
		return done
	}
	c.mu.Unlock()

	h2, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	require.Same(t, c, h2.c, "the idle connection is handed out")
	c.mu.Lock()
	c.peekFn = peek
	forced := c.forced
	// What the reader's own readerTurn would have done had the test not
	// frozen the watch: stand aside until the quiet is complete.
	if !c.aside {
		c.p.quiet.add(c)
	}
	c.mu.Unlock()
	time.Sleep(50 * time.Millisecond) // well past watchDelay: the reader watches
	require.NoError(t, h2.Err(), "the healthy connection Acquire handed out broke")
	require.False(t, forced, "brokenWhileIdle left the forced read deadline set")
	h2.Release()
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

// Connections breaking (resets, a blackhole) under load: every call
// returns within a little of its context's end, whatever the socket does,
// and once the pool is closed no descriptor is left open (goroutines:
// goleak in TestMain).
func TestConnIOBreaksUnderLoad(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	px, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	before := openFDs(t)
	p, err := New(Config{Addr: px.Addr(), DialTimeout: 200 * time.Millisecond, KeepAlive: 300 * time.Millisecond})
	require.NoError(t, err)
	stop := make(chan struct{})
	var faults sync.WaitGroup
	faults.Add(1)
	go func() {
		defer faults.Done()
		rng := rand.New(rand.NewPCG(7, 7))
		for {
			select {
			case <-stop:
				px.Blackhole(false)
				return
			case <-time.After(time.Duration(5+rng.IntN(30)) * time.Millisecond):
			}
			switch rng.IntN(3) {
			case 0:
				px.ResetAll()
			case 1:
				px.Blackhole(true)
				time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
				px.Blackhole(false)
			}
		}
	}()
	var worst atomic.Int64
	var worstMu sync.Mutex
	worstWhat := ""
	note := func(what string, over time.Duration) {
		worstMu.Lock()
		defer worstMu.Unlock()
		if int64(over) > worst.Load() {
			worst.Store(int64(over))
			worstWhat = what
		}
	}
	var wg sync.WaitGroup
	deadline := time.Now().Add(3 * time.Second)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 3))
			for time.Now().Before(deadline) {
				d := time.Duration(1+rng.IntN(20)) * time.Millisecond
				ctx, cancel := context.WithTimeout(context.Background(), d)
				start := time.Now()
				key := fmt.Sprintf("k%d", g)
				switch rng.IntN(3) {
				case 0, 1:
					r, l, err := p.Do(ctx, lockReq(key))
					note("Do", time.Since(start)-d)
					if err == nil && r.Status == wire.StatusOK {
						pending := make(chan struct{})
						l.SendBatch([]wire.Request{wire.ReleaseRequest(key, r.Token, false)}, func(int, wire.Reply, error) { close(pending) })
						select {
						case <-pending:
						case <-time.After(10 * time.Second):
							t.Errorf("a release's callback never came")
						}
					}
				case 2:
					h, err := p.Acquire(ctx)
					note("Acquire", time.Since(start)-d)
					if err == nil {
						r, err := h.Do(ctx, wire.Request{Cmd: wire.CmdLock, Key: key + "w", Lease: 5, Timeout: 1})
						note("Conn.Do", time.Since(start)-d)
						if err == nil && r.Status == wire.StatusOK {
							_, _, _ = h.Request(ctx, wire.ReleaseRequest(key+"w", r.Token, false), func(int, wire.Reply, error) {})
							note("Conn.Request", time.Since(start)-d)
						}
						h.Release()
					}
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	close(stop)
	faults.Wait()
	t.Logf("worst overrun past the context's end: %v in %s; stats %+v", time.Duration(worst.Load()), worstWhat, p.Stats())
	assert.Less(t, time.Duration(worst.Load()), 500*time.Millisecond, "a call outlived its context")
	p.Close()
	require.Eventually(t, func() bool { return openFDs(t) <= before }, wait, 10*time.Millisecond, "descriptors left open: %d before, %d after", before, openFDs(t))
}

// A blocking acquire on a fresh wait-pool connection is read by its
// caller (the turn is claimed: the connection was active a moment ago).
// While it waits — for as long as the lock is held elsewhere, minutes or
// hours for a leader election — the quiet watch keeps the connection
// (resumeIfQuiet: turnCaller → "look again in watchDelay") and wakes every
// 2 ms, although the caller itself notices a close at once and nothing
// else is standing aside: ~500 wake-ups a second for an idle process.
func TestConnIOQuietWatchSleepsDuringABlockingWait(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr()})
	held, _, err := p.Do(ctxWait(t), lockReq("busy"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, held.Status)
	h, done := blockingWaitReadByCaller(t, p, srv, "busy", 2)
	time.Sleep(20 * time.Millisecond) // every other reader is watching by now

	// Count the watch's passes over 500 ms: each sets wakeAt anew.
	passes, last := 0, int64(-1)
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); {
		p.quiet.mu.Lock()
		w := p.quiet.wakeAt
		p.quiet.mu.Unlock()
		if w != last && w != 0 {
			passes++
		}
		last = w
		time.Sleep(200 * time.Microsecond)
	}
	h.Destroy()
	<-done
	t.Logf("quiet-watch passes seen in 500 ms of a blocking wait: %d", passes)
	require.Less(t, passes, 10, "the quiet watch polls every watchDelay while a caller waits in a blocking acquire")
}

// A request refused by framing in the middle of a batch is reported at
// once, and the others' replies still go to their own callbacks.
func TestConnIOFramingRefusalMidBatch(t *testing.T) {
	t.Parallel()
	addr := echoServer(t, true)
	p := newPool(t, Config{Addr: addr, LaneConns: 1})
	o, err := p.Lane(ctxWait(t))
	require.NoError(t, err)
	for round := range 50 {
		reqs := make([]wire.Request, 5)
		for i := range reqs {
			reqs[i] = wire.Request{Cmd: wire.CmdRenew, Key: "k", Token: "t", Lease: int64(100*round + i + 1)}
		}
		reqs[2].Token = "bad\ntoken"
		got := make(chan string, 5)
		o.SendBatch(reqs, func(i int, r wire.Reply, err error) {
			switch {
			case i == 2 && err != nil:
				got <- "refused"
			case err != nil:
				got <- fmt.Sprintf("%d: %v", i, err)
			case r.Lease != reqs[i].Lease:
				got <- fmt.Sprintf("%d: lease %d, want %d", i, r.Lease, reqs[i].Lease)
			default:
				got <- "ok"
			}
		})
		for range 5 {
			select {
			case s := <-got:
				if s != "ok" && s != "refused" {
					t.Fatal(s)
				}
			case <-time.After(wait):
				t.Fatal("a callback never came")
			}
		}
		r, _, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdRenew, Key: "k", Token: "t", Lease: 7})
		require.NoError(t, err)
		require.EqualValues(t, 7, r.Lease)
	}
}

// Config.Lifetime ends while many callers wait (some reading their own
// replies, some queued, some arriving after): every one returns promptly,
// and every Owner.Request's outcome arrives exactly once.
func TestConnIOLifetimeEndsUnderLoad(t *testing.T) {
	t.Parallel()
	for round := range 20 {
		addr := echoServer(t, true)
		life, end := context.WithCancel(context.Background())
		p := newPool(t, Config{Addr: addr, Lifetime: life})
		var wg, lates sync.WaitGroup
		for g := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					lease := int64(g*100000 + i + 1)
					req := wire.Request{Cmd: wire.CmdRenew, Key: "k", Token: "t", Lease: lease}
					var err error
					var r wire.Reply
					if i%2 == 0 {
						r, _, err = p.Do(context.Background(), req)
					} else {
						o, lerr := p.Lane(context.Background())
						if lerr != nil {
							return
						}
						lates.Add(1)
						var once atomic.Bool
						var answered bool
						r, answered, err = o.Request(context.Background(), req, func(_ int, lr wire.Reply, lerr error) {
							if !once.CompareAndSwap(false, true) {
								t.Error("late twice")
							}
							if lerr == nil && lr.Lease != lease {
								t.Errorf("late: lease %d want %d", lr.Lease, lease)
							}
							lates.Done()
						})
						if answered {
							lates.Done()
						}
					}
					if err != nil {
						return
					}
					if r.Lease != lease {
						t.Errorf("round %d: lease %d want %d", round, r.Lease, lease)
					}
				}
			}()
		}
		time.Sleep(time.Duration(5+round) * time.Millisecond)
		end()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(wait):
			t.Fatal("a caller did not return after Lifetime ended")
		}
		ld := make(chan struct{})
		go func() { lates.Wait(); close(ld) }()
		select {
		case <-ld:
		case <-time.After(wait):
			t.Fatal("a late outcome never came")
		}
		p.Close()
	}
}

// blockingWaitReadByCaller starts, on a wait-pool connection of p, a
// blocking l of key (held elsewhere) with a server timeout of secs, that
// its caller reads itself (the turn is the caller's: tried again on a new
// connection until it is). done receives the wait's outcome: nil for a
// grant.
func blockingWaitReadByCaller(t *testing.T, p *Pool, srv *testutil.Server, key string, secs int64) (*Conn, chan error) {
	t.Helper()
	var h *Conn
	var done chan error
	for attempt := 0; attempt < 20; attempt++ {
		if h != nil {
			h.Destroy()
			<-done
		}
		var err error
		h, err = p.Acquire(ctxWait(t))
		require.NoError(t, err)
		done = make(chan error, 1)
		go func(h *Conn, done chan<- error) {
			// A ping first: the blocking request then finds the
			// connection active a moment ago, as after a dial or any reply.
			if _, err := h.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing}); err != nil {
				done <- err
				return
			}
			r, err := h.Do(ctxWait(t), wire.Request{Cmd: wire.CmdLock, Key: key, Lease: 30, Timeout: secs})
			if err == nil && r.Status != wire.StatusOK {
				err = errUnsolicited
			}
			done <- err
		}(h, done)
		require.Eventually(t, func() bool { return waiters(srv, key) == 1 }, wait, time.Millisecond)
		h.c.mu.Lock()
		claimed := h.c.turn == turnCaller
		h.c.mu.Unlock()
		if claimed {
			return h, done
		}
	}
	t.Fatal("the blocked caller never read its own reply")
	return nil, nil
}
