package pool

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// seeded random stress of the lane's prune: stalls with many give-ups,
// waiters (whose replies must be their own), pings and signals given up
// on, releases given up on (Owner.Request), and drops of every connection
// mid-stall. Afterwards every lane is drained and no lock is left held.
func TestLanePruneStress(t *testing.T) {
	t.Parallel()
	seed := time.Now().UnixNano()
	if s := os.Getenv("DFLOCK_PRUNE_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	srv := newServer(t, testutil.Config{MaxLocks: 1 << 22})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1 + rng.Intn(2), KeepAlive: time.Minute})
	holderPool := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, KeepAlive: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mismatches, waits, pruned atomic.Int64
	checkStop := make(chan struct{})
	checkDone := make(chan struct{})
	var checks, transient atomic.Int64
	go func() {
		defer close(checkDone)
		type suspect struct {
			c  *conn
			at time.Time
		}
		var suspects []suspect
		for {
			select {
			case <-checkStop:
				return
			case <-time.After(200 * time.Microsecond):
			}
			for i := range p.lanes {
				l := p.lanes[i].conn.Load()
				if l == nil {
					continue
				}
				c := l.c
				c.mu.Lock()
				if c.err == nil {
					checks.Add(1)
					if msg := queueInvariantsLocked(c); msg != "" {
						if msg == "count" {
							suspects = append(suspects, suspect{c, time.Now()})
						} else {
							t.Errorf("invariant: %s", msg)
						}
					}
				}
				c.mu.Unlock()
			}
			keep := suspects[:0]
			for _, sp := range suspects {
				if time.Since(sp.at) < 200*time.Millisecond {
					keep = append(keep, sp)
				} else if sp.c.Err() == nil {
					t.Errorf("invariant: buf/bufN out of step on a conn still alive 200ms later")
				} else {
					transient.Add(1)
				}
			}
			suspects = keep
		}
	}()
	defer func() {
		close(checkStop)
		<-checkDone
		t.Logf("checks %d, transient mismatches %d", checks.Load(), transient.Load())
	}()
	const rounds = 12
	for round := range rounds {
		held := fmt.Sprintf("held-%d", round)
		r, _, err := holderPool.Do(ctx, lockReq(held))
		if err != nil || r.Status != wire.StatusOK {
			t.Fatalf("round %d: holder: %+v %v", round, r, err)
		}
		drop := rng.Intn(3) == 0
		resume := srv.Stall(0)
		var wg, waiting sync.WaitGroup
		stop := make(chan struct{})
		for g := range 12 {
			gseed := rng.Int63()
			wg.Go(func() {
				rng := rand.New(rand.NewSource(gseed))
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					key := fmt.Sprintf("r%d-g%d-i%d", round, g, i)
					switch x := rng.Intn(100); {
					case x < 1: // a waiter on a free key: OK, then its release
						waiting.Go(func() {
							waits.Add(1)
							r, _, err := p.Do(ctx, lockReq(key))
							if err != nil {
								return
							}
							if r.Status != wire.StatusOK {
								mismatches.Add(1)
								t.Errorf("waiter on free %s got %+v", key, r)
								return
							}
							rr, _, err := p.Do(ctx, wire.ReleaseRequest(key, r.Token, false))
							if err == nil && rr.Status != wire.StatusOK && !drop {
								mismatches.Add(1)
								t.Errorf("release of %s got %+v", key, rr)
							}
						})
					case x < 2: // a waiter on a held key: timeout
						waiting.Go(func() {
							waits.Add(1)
							r, _, err := p.Do(ctx, lockReq(held))
							if err != nil {
								return
							}
							if r.Status == wire.StatusOK {
								if !drop {
									mismatches.Add(1)
									t.Errorf("waiter on held %s got %+v", held, r)
								}
								_, _, _ = p.Do(ctx, wire.ReleaseRequest(held, r.Token, false))
							} else if r.Status != wire.StatusTimeout {
								mismatches.Add(1)
								t.Errorf("waiter on held %s got %+v", held, r)
							}
						})
					case x < 3: // a waiter's ping
						waiting.Go(func() {
							r, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdPing})
							if err == nil && r.Status != wire.StatusOK {
								mismatches.Add(1)
								t.Errorf("ping got %+v", r)
							}
						})
					case x < 10: // a ping given up on
						cctx, c := context.WithTimeout(ctx, time.Duration(rng.Intn(100))*time.Microsecond)
						_, _, _ = p.Do(cctx, wire.Request{Cmd: wire.CmdPing})
						c()
					case x < 14: // a signal given up on
						cctx, c := context.WithTimeout(ctx, time.Duration(rng.Intn(100))*time.Microsecond)
						_, _, _ = p.Do(cctx, wire.Request{Cmd: wire.CmdSignal, Key: "chan." + key, Arg: "x"})
						c()
					case x < 16: // a release given up on, with a callback (its lock: none; error status fine)
						lctx, lc := context.WithTimeout(ctx, time.Millisecond)
						lane, err := p.Lane(lctx)
						lc()
						if err != nil {
							continue
						}
						cctx, c := context.WithTimeout(ctx, time.Duration(rng.Intn(100))*time.Microsecond)
						waiting.Add(1)
						var once sync.Once
						done := func() { once.Do(waiting.Done) }
						_, answered, _ := lane.Request(cctx, wire.ReleaseRequest(key, "tok", false), func(int, wire.Reply, error) { done() })
						c()
						if answered {
							done()
						}
					default: // a try given up on
						cctx, c := context.WithTimeout(ctx, time.Duration(rng.Intn(200))*time.Microsecond)
						r, _, err := p.Do(cctx, lockReq(key))
						c()
						if err == nil && r.Status == wire.StatusOK {
							waiting.Go(func() { _, _, _ = p.Do(ctx, wire.ReleaseRequest(key, r.Token, false)) })
						}
					}
				}
			})
		}
		d := time.Duration(300+rng.Intn(500)) * time.Millisecond
		t0 := time.Now()
		dropAt := time.Duration(rng.Int63n(int64(d)))
		time.Sleep(dropAt)
		if drop {
			srv.DropConnections()
		}
		time.Sleep(d - dropAt)
		close(stop)
		wg.Wait()
		pruned.Store(lanePruned(p))
		ub, _ := laneBacklog(p)
		t.Logf("round %d: stalled %v, backlog %d", round, time.Since(t0), ub)
		t1 := time.Now()
		resume()
		waiting.Wait()
		if _, _, err := holderPool.Do(ctx, lockReq(held)); err != nil {
			// dropped: re-dial
		}
		t.Logf("round %d: drop=%v, pruned so far on live lanes %d, drained in %v", round, drop, pruned.Load(), time.Since(t1))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		u, _ := laneBacklog(p)
		inf := laneInflight(p)
		var leftover []string
		for _, l := range srv.Stats().Locks {
			if len(l.Key) < 5 || l.Key[:5] != "held-" {
				leftover = append(leftover, l.Key)
			}
		}
		if u == 0 && inf == 0 && len(leftover) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not drained: unwritten %d inflight %d leftover locks %d %v", u, inf, len(leftover), leftover[:min(5, len(leftover))])
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Every lane still works and matches replies.
	for i := range 50 {
		key := fmt.Sprintf("final-%d", i)
		r, _, err := p.Do(ctx, lockReq(key))
		if err != nil || r.Status != wire.StatusOK {
			t.Fatalf("final %s: %+v %v", key, r, err)
		}
		r, _, err = p.Do(ctx, wire.ReleaseRequest(key, r.Token, false))
		if err != nil || r.Status != wire.StatusOK {
			t.Fatalf("final release %s: %+v %v", key, r, err)
		}
	}
	t.Logf("waits %d mismatches %d", waits.Load(), mismatches.Load())
}

// queueInvariantsLocked checks a live conn's queue invariants: c.buf holds the
// last bufN calls of q, three lines each, in order (a lock's key line is
// its call's key); inflight, pings and blocking match q. "count" is the
// transient mismatch of a failed write (fail follows).
func queueInvariantsLocked(c *conn) string {
	if c.bufN > c.q.n {
		return fmt.Sprintf("bufN %d > q.n %d", c.bufN, c.q.n)
	}
	if wire.CountRequests(c.buf) != c.bufN {
		return "count"
	}
	if got := c.inflight.Load(); int(got) != c.q.n {
		return fmt.Sprintf("inflight %d, q.n %d", got, c.q.n)
	}
	pings, blocking := 0, 0
	for i := 0; i < c.q.n; i++ {
		cl := c.q.at(i)
		if cl == nil {
			return fmt.Sprintf("nil call at %d of %d", i, c.q.n)
		}
		if cl.kind == callPing {
			pings++
		}
		if cl.blocking {
			blocking++
		}
	}
	if pings != c.pings || blocking != c.blocking {
		return fmt.Sprintf("pings %d/%d blocking %d/%d", pings, c.pings, blocking, c.blocking)
	}
	lines := strings.SplitAfter(string(c.buf), "\n")
	first := c.q.n - c.bufN
	for j := 0; j < c.bufN; j++ {
		cl := c.q.at(first + j)
		cmd := strings.TrimSuffix(lines[3*j], "\n")
		if cmd != cl.cmd.String() {
			return fmt.Sprintf("unwritten %d: buf has %q, call %q", j, cmd, cl.cmd)
		}
		if cl.cmd == wire.CmdLock && !strings.HasPrefix(lines[3*j+1], cl.grantKey) {
			return fmt.Sprintf("unwritten %d: buf key %q, call key %q", j, lines[3*j+1], cl.grantKey)
		}
	}
	return ""
}
