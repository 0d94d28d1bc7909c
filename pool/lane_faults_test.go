//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// auditBook records the server's grants: how often each key was granted,
// the key of every token, and what is held now.
type auditBook struct {
	mu      sync.Mutex
	grants  map[string]int
	keyOf   map[string]string
	held    map[string]string
	onGrant func(key string)
}

func newAuditBook() *auditBook {
	return &auditBook{grants: map[string]int{}, keyOf: map[string]string{}, held: map[string]string{}}
}

func (b *auditBook) event(ev testutil.AuditEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev.Kind {
	case testutil.AuditGrant:
		b.grants[ev.Key]++
		b.keyOf[ev.Token] = ev.Key
		b.held[ev.Token] = ev.Key
		if b.onGrant != nil {
			b.onGrant(ev.Key)
		}
	case testutil.AuditRelease, testutil.AuditExpire, testutil.AuditDisconnect, testutil.AuditStop:
		delete(b.held, ev.Token)
	}
}

func (b *auditBook) grantsOf(key string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.grants[key]
}

func (b *auditBook) keyOfToken(tok string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.keyOf[tok]
}

func (b *auditBook) heldNow() map[string]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := make(map[string]string, len(b.held))
	for k, v := range b.held {
		m[k] = v
	}
	return m
}

func (b *auditBook) dups() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for k, n := range b.grants {
		if n > 1 {
			out = append(out, fmt.Sprintf("%s×%d", k, n))
		}
	}
	return out
}

func newFaultProxy(t *testing.T, target string) *testutil.Proxy {
	t.Helper()
	px, err := testutil.NewProxy(target)
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	return px
}

// Many goroutines hammer Do with keys used once each while the proxy resets
// every lane connection again and again. Every grant must be the one the
// server made for the caller's key, no key may be granted twice (a request
// sent again after it reached the server: with auto-release on the first
// grant goes with the reset, and the second would be granted too), nothing
// may be left held, and the lane dials must stay bounded by the slots.
func TestLaneResetsUnderLoadGiveNoDuplicateOrCrossedGrant(t *testing.T) {
	for _, lanes := range []int{1, 2, 64} {
		t.Run(fmt.Sprintf("lanes=%d", lanes), func(t *testing.T) {
			book := newAuditBook()
			srv := newServer(t, testutil.Config{Audit: book.event, MaxLocks: -1})
			px := newFaultProxy(t, srv.Addr())
			p := newPool(t, Config{Addr: px.Addr(), LaneConns: lanes, DialTimeout: time.Second})

			var stop atomic.Bool
			var bad atomic.Int64
			var grants, errs, resets atomic.Int64
			var mu sync.Mutex
			var msgs []string
			errKinds := map[string]int{}
			report := func(s string) {
				bad.Add(1)
				mu.Lock()
				if len(msgs) < 10 {
					msgs = append(msgs, s)
				}
				mu.Unlock()
			}
			var wg sync.WaitGroup
			for g := range 16 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(g), 7))
					for i := 0; !stop.Load(); i++ {
						key := fmt.Sprintf("rv%d-%d", g, i)
						var ctx context.Context
						var cancel context.CancelFunc
						if r.IntN(3) == 0 {
							ctx, cancel = context.WithTimeout(context.Background(), time.Duration(r.IntN(600))*time.Microsecond)
						} else {
							ctx, cancel = context.WithTimeout(context.Background(), time.Second)
						}
						rep, owner, err := p.Do(ctx, lockReq(key))
						cancel()
						if err != nil {
							errs.Add(1)
							if testing.Verbose() {
								mu.Lock()
								errKinds[errKind(err)]++
								mu.Unlock()
							}
							continue
						}
						if rep.Status != wire.StatusOK {
							report(fmt.Sprintf("l %s answered %v %q", key, rep.Status, rep.Word))
							continue
						}
						grants.Add(1)
						if k := book.keyOfToken(rep.Token); k != key {
							report(fmt.Sprintf("l %s got the grant of %q", key, k))
							continue
						}
						rel := wire.ReleaseRequest(key, rep.Token, false)
						ctx, cancel = context.WithTimeout(context.Background(), time.Second)
						_, _, _ = owner.Request(ctx, rel, func(int, wire.Reply, error) {})
						cancel()
					}
				})
			}
			faults := make(chan struct{})
			go func() {
				defer close(faults)
				r := rand.New(rand.NewPCG(9, 9))
				// Not before a first grant: a reset during the first
				// dial's handshake marks the server down, and with 64
				// lanes on one CPU it stayed down for the whole run.
				for grants.Load() == 0 && !stop.Load() {
					time.Sleep(time.Millisecond)
				}
				for !stop.Load() {
					time.Sleep(time.Duration(10+r.IntN(30)) * time.Millisecond)
					px.ResetAll()
					resets.Add(1)
				}
			}()
			time.Sleep(1200 * time.Millisecond)
			stop.Store(true)
			wg.Wait()
			<-faults
			st := p.Stats()
			t.Logf("grants %d errors %d resets %d dials %d %v", grants.Load(), errs.Load(), resets.Load(), st.Dials, errKinds)
			require.Zero(t, bad.Load(), "%v", msgs)
			assert.Empty(t, book.dups(), "keys granted more than once: a request reached the server twice")
			assert.Positive(t, grants.Load())
			// Each reset breaks at most LaneConns lane connections; each
			// broken slot is dialled again once.
			assert.LessOrEqual(t, st.Dials, (resets.Load()+2)*int64(lanes), "lane dials unbounded")
			assert.Eventually(t, func() bool { return len(book.heldNow()) == 0 }, 3*time.Second, 5*time.Millisecond,
				"held by nobody: %v", book.heldNow())
		})
	}
}

// A connection that breaks after its request reached the server and
// before the reply came back: the request must not be sent again (the
// server granted it; auto-release on, the reset releases that grant, and a
// second send would be granted again). Lone callers (inline write, own
// read) and concurrent ones (flush goroutine, reader).
func TestLaneBreakBetweenWriteAndReadIsNotRetried(t *testing.T) {
	for _, tc := range []struct {
		lanes, callers int
	}{{1, 1}, {2, 1}, {1, 8}, {2, 8}} {
		t.Run(fmt.Sprintf("lanes=%d/callers=%d", tc.lanes, tc.callers), func(t *testing.T) {
			book := newAuditBook()
			srv := newServer(t, testutil.Config{Audit: book.event, MaxLocks: -1})
			px := newFaultProxy(t, srv.Addr())
			p := newPool(t, Config{Addr: px.Addr(), LaneConns: tc.lanes})
			for round := range 5 {
				// Every lane connection up (a lane the last reset broke may
				// not have seen it yet, and fail a request written meanwhile).
				require.Eventually(t, func() bool {
					_, _, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
					return err == nil && p.Stats().LaneConns == tc.lanes
				}, wait, time.Millisecond)
				px.SetLatency(20 * time.Millisecond) // the reply lags behind the grant
				var once sync.Once
				resetDone := make(chan struct{})
				book.mu.Lock()
				book.onGrant = func(string) { once.Do(func() { go func() { px.ResetAll(); close(resetDone) }() }) }
				book.mu.Unlock()
				var wg sync.WaitGroup
				results := make([]error, tc.callers)
				for i := range tc.callers {
					wg.Go(func() {
						_, _, results[i] = p.Do(ctxWait(t), lockReq(fmt.Sprintf("bw%d-%d", round, i)))
					})
				}
				wg.Wait()
				book.mu.Lock()
				book.onGrant = nil
				book.mu.Unlock()
				<-resetDone
				px.SetLatency(0)
				for i, err := range results {
					key := fmt.Sprintf("bw%d-%d", round, i)
					assert.LessOrEqual(t, book.grantsOf(key), 1, "%s granted %d times (Do err %v)", key, book.grantsOf(key), err)
				}
			}
			assert.Empty(t, book.dups())
		})
	}
}

// A caller reading its own reply (inline write, lone caller) whose context
// ends while the network holds its request: it returns at once, the lane
// connection is kept, the grant that comes later is released on it (the
// server does not release on disconnect here), and the next requests on
// that same connection get their own replies.
func TestLaneAbandonedInlineGrantIsReleasedAndLaneStaysInStep(t *testing.T) {
	for _, fault := range []string{"blackhole", "stall"} {
		t.Run(fault, func(t *testing.T) {
			book := newAuditBook()
			srv := newServer(t, testutil.Config{Audit: book.event, DisableAutoRelease: true})
			px := newFaultProxy(t, srv.Addr())
			rec := newBrokenRecorder()
			p := newPool(t, Config{Addr: px.Addr(), LaneConns: 1, OnConnBroken: rec.hook})
			lane, c := laneOf(t, p)
			for round := range 3 {
				settle(t, c)
				var inline atomic.Int64
				setHook(c, func() { inline.Add(1) })
				var lift func()
				if fault == "blackhole" {
					px.Blackhole(true)
					lift = func() { px.Blackhole(false) }
				} else {
					lift = srv.Stall(0)
				}
				key := fmt.Sprintf("ab-%d", round)
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				start := time.Now()
				_, owner, err := p.Do(ctx, lockReq(key))
				took := time.Since(start)
				cancel()
				setHook(c, nil)
				lift()
				require.ErrorIs(t, err, context.DeadlineExceeded)
				assert.Less(t, took, 500*time.Millisecond, "Do held past its context")
				assert.Equal(t, int64(1), inline.Load(), "written inline")
				assert.Same(t, lane, owner)
				require.Eventually(t, func() bool { return book.grantsOf(key) == 1 }, wait, time.Millisecond)
				require.Eventually(t, func() bool { return holder(srv, key) == 0 }, wait, time.Millisecond,
					"the grant whose caller gave up is held by nobody")
				// In step: later requests on the same connection get their own replies.
				for i := range 5 {
					k := fmt.Sprintf("ab-%d-next-%d", round, i)
					r, o, err := p.Do(ctxWait(t), lockReq(k))
					require.NoError(t, err)
					require.Equal(t, wire.StatusOK, r.Status)
					assert.Same(t, lane, o)
					assert.Equal(t, k, book.keyOfToken(r.Token))
					_, _, err = p.Do(ctxWait(t), wire.ReleaseRequest(k, r.Token, false))
					require.NoError(t, err)
				}
				require.NoError(t, c.Err())
			}
			select {
			case ev := <-rec.ch:
				t.Fatalf("the lane broke: %v", ev.err)
			default:
			}
		})
	}
}

// The same with many callers, whose requests go through the flush
// goroutine and whose replies the reader delivers, and whose contexts end
// while the server is stalled: every caller returns at once, every grant
// nobody wants is released, and the lane stays in step.
func TestLaneAbandonedQueuedGrantsAreReleasedAndLaneStaysInStep(t *testing.T) {
	book := newAuditBook()
	srv := newServer(t, testutil.Config{Audit: book.event, DisableAutoRelease: true, MaxLocks: -1})
	rec := newBrokenRecorder()
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 2, OnConnBroken: rec.hook})
	for round := range 3 {
		resume := srv.Stall(0)
		var wg sync.WaitGroup
		var slow atomic.Int64
		for i := range 32 {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
				defer cancel()
				start := time.Now()
				_, _, err := p.Do(ctx, lockReq(fmt.Sprintf("aq%d-%d", round, i)))
				if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 500*time.Millisecond {
					slow.Add(1)
				}
			})
		}
		wg.Wait()
		resume()
		assert.Zero(t, slow.Load(), "callers not ended by their context")
		require.Eventually(t, func() bool { return len(book.heldNow()) == 0 }, wait, time.Millisecond,
			"held by nobody: %v", book.heldNow())
		for i := range 16 {
			k := fmt.Sprintf("aq%d-next-%d", round, i)
			r, o, err := p.Do(ctxWait(t), lockReq(k))
			require.NoError(t, err)
			require.Equal(t, wire.StatusOK, r.Status)
			assert.Equal(t, k, book.keyOfToken(r.Token))
			_, _, err = p.Do(ctxWait(t), wire.ReleaseRequest(k, r.Token, false))
			require.NoError(t, err)
			_ = o
		}
	}
	select {
	case ev := <-rec.ch:
		t.Fatalf("a lane broke: %v", ev.err)
	default:
	}
}

func errKind(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	}
	return "other"
}

// A request that rode on a write that failed having written nothing never
// reached the server, so Do sends it on another lane connection
// (docs/architecture.md, "Control lane"). Here a caller writes inline on a
// lane whose reader is reading (the connection was quiet, so the caller
// does not claim the turn), other callers' requests join that write during
// its yield, and the socket's sending side is shut just before it: the
// write fails with EPIPE, nothing written, and the server never grants
// those keys. Every one of those callers must be sent again (on a newly
// dialled lane) and granted, whoever takes the connection's lock first
// after the write — the writer, which restores them as unwritten
// (writeQueuedLocked), or the reader, which the failed write (or the
// server's close) wakes and which fails the connection (fail) counting
// every request taken for the write as written.
func TestLaneUnwrittenJoinersAreSentAgain(t *testing.T) {
	book := newAuditBook()
	srv := newServer(t, testutil.Config{Audit: book.event, MaxLocks: -1})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	const joiners = 4
	failed := 0
	const rounds = 800 // the reader wins the race in a few per cent of them
	for round := 0; round < rounds && failed == 0; round++ {
		_, c := laneOf(t, p)
		require.Eventually(t, func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.turn == turnReader && c.q.n == 0 && !c.flushing
		}, wait, 100*time.Microsecond)
		results := make(chan error, joiners)
		var once sync.Once
		setHook(c, func() {
			once.Do(func() {
				for j := range joiners {
					go func() {
						key := fmt.Sprintf("uj%d-%d", round, j+1)
						r, _, err := p.Do(ctxWait(t), lockReq(key))
						if err == nil && (r.Status != wire.StatusOK || book.keyOfToken(r.Token) != key) {
							err = fmt.Errorf("%s answered %v (grant of %q)", key, r.Status, book.keyOfToken(r.Token))
						} else if err != nil {
							err = fmt.Errorf("%s (granted %d times on the server): %w", key, book.grantsOf(key), err)
						}
						results <- err
					}()
				}
				for queued(c) < 1+joiners {
					time.Sleep(50 * time.Microsecond)
				}
				require.NoError(t, c.wc.NetConn().(interface{ CloseWrite() error }).CloseWrite())
			})
		})
		key := fmt.Sprintf("uj%d-0", round)
		r, _, err := p.Do(ctxWait(t), lockReq(key))
		require.NoError(t, err, "the inline writer")
		require.Equal(t, key, book.keyOfToken(r.Token))
		bad := 0
		for range joiners {
			if err := <-results; err != nil {
				bad++
				t.Logf("round %d: %v", round, err)
			}
		}
		if bad > 0 {
			failed = round + 1
		}
	}
	assert.Zero(t, failed, "round %d: requests that never left failed instead of being sent again", failed)
	assert.Empty(t, book.dups())
}
