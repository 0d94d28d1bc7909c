//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
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

// grantBook maps every token the server granted to its key, and tracks
// what is held now.
type grantBook struct {
	mu    sync.Mutex
	keyOf map[string]string
	held  map[string]string // token → key, held now
}

func (b *grantBook) event(ev testutil.AuditEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev.Kind {
	case testutil.AuditGrant:
		b.keyOf[ev.Token] = ev.Key
		b.held[ev.Token] = ev.Key
	case testutil.AuditRelease, testutil.AuditExpire, testutil.AuditDisconnect, testutil.AuditStop:
		delete(b.held, ev.Token)
	}
}

// Lane and wait-pool callers whose contexts end at random moments (while
// they read their own replies, while the server stalls, while keepalive
// pings interleave), plain and TLS. Every grant a caller gets must be the
// one the server made for its key, and once all are done nothing is held.
func TestStressRepliesGoToTheirCallersAndNothingLeaks(t *testing.T) {
	t.Parallel()
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", useTLS), func(t *testing.T) {
			book := &grantBook{keyOf: map[string]string{}, held: map[string]string{}}
			scfg := testutil.Config{Audit: book.event, MaxLocks: -1}
			pcfg := Config{KeepAlive: MinKeepAlive, MaxConns: 6}
			if useTLS {
				certs, err := testutil.NewTLSCerts()
				require.NoError(t, err)
				scfg.TLS = certs.ServerConfig()
				pcfg.TLS = certs.ClientConfig()
			}
			srv := newServer(t, scfg)
			pcfg.Addr = srv.Addr()
			p := newPool(t, pcfg)

			var stop atomic.Bool
			var bad atomic.Int64
			var grants atomic.Int64
			var mu sync.Mutex
			var msgs []string
			report := func(s string) {
				bad.Add(1)
				mu.Lock()
				msgs = append(msgs, s)
				mu.Unlock()
			}
			check := func(key string, r wire.Reply) {
				if r.Status != wire.StatusOK {
					report(fmt.Sprintf("l %s 0 answered %v", key, r.Status))
					return
				}
				grants.Add(1)
				book.mu.Lock()
				k := book.keyOf[r.Token]
				book.mu.Unlock()
				if k != key {
					report(fmt.Sprintf("l %s 0 got the grant of %q", key, k))
				}
			}
			randCtx := func(r *rand.Rand) (context.Context, context.CancelFunc) {
				if r.IntN(4) == 0 {
					return context.WithCancel(context.Background())
				}
				return context.WithTimeout(context.Background(), time.Duration(r.IntN(800))*time.Microsecond)
			}
			var wg sync.WaitGroup
			for g := range 12 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(g), 3))
					for i := 0; !stop.Load(); i++ {
						key := fmt.Sprintf("lane%d-%d", g, i)
						ctx, cancel := randCtx(r)
						rep, owner, err := p.Do(ctx, lockReq(key))
						cancel()
						if err != nil {
							continue
						}
						check(key, rep)
						if rep.Status != wire.StatusOK {
							continue
						}
						rel := wire.ReleaseRequest(key, rep.Token, false)
						ctx, cancel = randCtx(r)
						_, _, _ = owner.Request(ctx, rel, func(int, wire.Reply, error) {})
						cancel()
					}
				})
			}
			for g := range 4 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(g), 5))
					for i := 0; !stop.Load(); i++ {
						ctx, cancel := context.WithTimeout(context.Background(), time.Second)
						h, err := p.Acquire(ctx)
						cancel()
						if err != nil {
							continue
						}
						for j := 0; j < 4 && h.Err() == nil; j++ {
							key := fmt.Sprintf("wait%d-%d-%d", g, i, j)
							ctx, cancel := randCtx(r)
							rep, err := h.Do(ctx, lockReq(key))
							cancel()
							if err != nil {
								break // destroyed if abandoned
							}
							check(key, rep)
							if rep.Status != wire.StatusOK {
								continue
							}
							rel := wire.ReleaseRequest(key, rep.Token, false)
							ctx, cancel = context.WithTimeout(context.Background(), time.Second)
							_, err = h.Do(ctx, rel)
							cancel()
							if err != nil {
								break
							}
						}
						h.Release()
					}
				})
			}
			faults := make(chan struct{})
			go func() {
				defer close(faults)
				r := rand.New(rand.NewPCG(1, 1))
				for !stop.Load() {
					time.Sleep(time.Duration(20+r.IntN(40)) * time.Millisecond)
					resume := srv.Stall(0)
					time.Sleep(time.Duration(r.IntN(4000)) * time.Microsecond)
					resume()
				}
			}()
			time.Sleep(1500 * time.Millisecond)
			stop.Store(true)
			wg.Wait()
			<-faults
			t.Logf("grants %d", grants.Load())
			if len(msgs) > 10 {
				msgs = msgs[:10]
			}
			require.Zero(t, bad.Load(), "%v", msgs)
			var left map[string]string
			ok := false
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				book.mu.Lock()
				left = make(map[string]string, len(book.held))
				for k, v := range book.held {
					left[k] = v
				}
				book.mu.Unlock()
				if len(left) == 0 {
					ok = true
					break
				}
			}
			require.True(t, ok, "held by nobody: %v", left)
		})
	}
}

// slowGrantLog is a log handler that takes a while over one record: the
// reader's "releasing a grant whose caller gave up" (as a synchronous
// handler writing to a slow disk, or a reader descheduled there, would).
type slowGrantLog struct{ d time.Duration }

func (h slowGrantLog) Enabled(context.Context, slog.Level) bool { return true }
func (h slowGrantLog) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "releasing a grant") {
		time.Sleep(h.d)
	}
	return nil
}
func (h slowGrantLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h slowGrantLog) WithGroup(string) slog.Handler      { return h }

// SettleLanes is to wait until a lane grant whose caller gave up (Close
// ended it) has been released, before the pool closes the lane. It looks
// only at inflight, which the reader lowers when it takes the grant's reply
// and raises again when it queues the release (deliver → releaseAbandoned):
// in between, the lane looks settled. Seen there, SettleLanes returns, the
// pool closes the lane with the release unsent, and on a server with
// auto-release off the lock is held by nobody until its lease runs out.
func TestSettleLanesWaitsForTheReleaseOfAnAbandonedGrant(t *testing.T) {
	srv := newServer(t, testutil.Config{DisableAutoRelease: true})
	life, end := context.WithCancel(context.Background())
	defer end()
	p, err := New(Config{Addr: srv.Addr(), LaneConns: 1, Lifetime: life, DialTimeout: 2 * time.Second,
		Logger: slog.New(slowGrantLog{20 * time.Millisecond})})
	require.NoError(t, err)
	defer p.Close()
	_, c := laneOf(t, p)
	settle(t, c)

	resume := srv.Stall(0)
	defer resume()
	res := goDo(ctxWait(t), p, lockReq("settle"))
	require.Eventually(t, func() bool { return queued(c) == 1 }, wait, time.Millisecond)
	time.Sleep(20 * time.Millisecond) // written, held by the stall
	end()                             // Close begins: the caller gives up
	require.ErrorIs(t, result(t, res, "Do").err, ErrClosed)

	settled := make(chan struct{})
	go func() { p.SettleLanes(time.Now().Add(2 * time.Second)); close(settled) }()
	resume() // the grant arrives
	<-settled
	p.Close() // what Client.Close does next
	assert.Eventually(t, func() bool { return holder(srv, "settle") == 0 }, wait, time.Millisecond,
		"the grant whose caller gave up is held by nobody after Close")
}
