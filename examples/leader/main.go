// Leader: one instance of a service runs a singleton job; the others stand
// by, queued on the same lock, and take over when it dies.
//
//	go run ./examples/leader                              # embedded server
//	DFLOCK_SERVERS=127.0.0.1:6388 go run ./examples/leader
//
// How fast a standby takes over depends on how the leader dies:
//
//   - Its process crashes: the kernel closes its connections, and the
//     server releases every lease of a closed connection at once. The first
//     standby in the queue is granted the lock within a round trip.
//   - It hangs, its host loses power, or the network cuts it off: nothing
//     closes. Its lease runs out after the lease TTL, and the server hands
//     the lock on at its next sweep (every second). Bound: TTL + 1 s. The
//     leader's own Client declares the lease lost a safety margin before the
//     TTL, by its own clock, so a running leader stops its job before the
//     new one starts. A leader whose process is paused for longer than that
//     margin (a stop-the-world stall, a suspended VM) cannot notice in time:
//     a job that writes to a shared store should pass the lock's fencing
//     token (Lock.Fence, WithFencing, dflockd v2.1+) and let the store refuse
//     an older one (docs/leases.md, "Fencing").
//
// SIGINT or SIGTERM shuts an instance down gracefully: the leader releases
// the lock, so a standby takes over at once rather than after the TTL.
//
// A short lease makes takeover fast; the price is more renewals (the Client
// batches them). Here each instance is a goroutine with its own Client, as
// separate processes would have, and a testutil.Proxy stands in for each
// instance's network so that the demo can kill it.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/examples/internal/demo"
	"github.com/dflock-sdk/go/shard"
	"github.com/dflock-sdk/go/testutil"
)

const (
	jobKey   = "leader:nightly-report"
	leaseTTL = 4 * time.Second
	jobTick  = 250 * time.Millisecond
)

func main() {
	if err := run(); err != nil {
		log.Printf("leader: %v", err)
		os.Exit(1)
	}
}

type eventKind int

const (
	elected eventKind = iota
	stepped           // the instance saw its lease end and stopped the job
)

type event struct {
	kind eventKind
	who  string
	at   time.Time
	runs int   // job runs while leading (stepped)
	err  error // why the lease ended (stepped)
}

// instance is one copy of the service.
type instance struct {
	name    string
	client  *dflock.Client
	proxies []*testutil.Proxy
	cancel  context.CancelFunc
	done    chan struct{}
	crashed atomic.Bool // a crashed process neither releases nor reports
}

func run() (err error) {
	servers, stop, err := demo.Servers(1)
	if err != nil {
		return err
	}
	defer stop()
	// Ctrl-C ends ctx, and every instance's shutdown path releases what it
	// holds (a real service does the same with its own signal handling).
	sigCtx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	defer func() {
		if sigCtx.Err() != nil { // interrupted: not a failure of the demo
			fmt.Println("\ninterrupted: every instance shut down")
			err = nil
		}
	}()
	ctx, cancel := context.WithTimeout(sigCtx, time.Minute)
	defer cancel()

	events := make(chan event, 16)
	var all []*instance
	defer func() {
		for _, in := range all {
			in.kill()
		}
	}()
	for _, name := range []string{"A", "B", "C"} {
		in, err := start(ctx, name, servers, events)
		if err != nil {
			return err
		}
		all = append(all, in)
		// A starts first, so that it leads.
		if name == "A" {
			if _, err := expect(ctx, events, elected); err != nil {
				return err
			}
			fmt.Println("A: elected leader, running the job; B and C stand by in the lock's queue")
		}
	}
	byName := map[string]*instance{}
	for _, in := range all {
		byName[in.name] = in
	}

	// 1. The leader crashes: its connections close without a release.
	time.Sleep(time.Second) // let A run the job for a while: this is the demo, not a synchronisation
	killedAt := time.Now()
	byName["A"].crash()
	fmt.Println("\nA crashes (its connections close, no release)")
	ev, err := expect(ctx, events, elected)
	if err != nil {
		return err
	}
	crashTakeover := ev.at.Sub(killedAt)
	fmt.Printf("%s: took over %v after the crash (bound: one round trip; the server releases a closed connection's leases)\n",
		ev.who, crashTakeover.Round(time.Millisecond))

	// 2. The new leader is cut off: its connections stay open, nothing
	// arrives, so only its lease's TTL ends its leadership.
	leader := byName[ev.who]
	time.Sleep(time.Second)
	cutAt := time.Now()
	leader.partition()
	fmt.Printf("\n%s is cut off from the server (connections open, nothing gets through)\n", leader.name)
	var stoppedAt, electedAt time.Time
	var next string
	for stoppedAt.IsZero() || electedAt.IsZero() {
		select {
		case ev := <-events:
			switch {
			case ev.kind == stepped && ev.who == leader.name:
				stoppedAt = ev.at
				fmt.Printf("%s: its Client declared the lease lost after %v, by its own clock; it stopped the job after %d runs\n   (%v)\n",
					ev.who, ev.at.Sub(cutAt).Round(time.Millisecond), ev.runs, ev.err)
			case ev.kind == elected:
				electedAt, next = ev.at, ev.who
			default:
				return fmt.Errorf("unexpected event %+v", ev)
			}
		case <-ctx.Done():
			return fmt.Errorf("no takeover after the partition: %w", ctx.Err())
		}
	}
	cutTakeover := electedAt.Sub(cutAt)
	fmt.Printf("%s: took over %v after the cut (bound: lease TTL %v + 1 s sweep)\n",
		next, cutTakeover.Round(time.Millisecond), leaseTTL)
	if electedAt.Before(stoppedAt) {
		return fmt.Errorf("%s started before %s stopped: two leaders for %v", next, leader.name, stoppedAt.Sub(electedAt))
	}
	fmt.Printf("no overlap: %s stopped %v before %s started\n", leader.name, electedAt.Sub(stoppedAt).Round(time.Millisecond), next)

	fmt.Printf("\ntakeover times: crash %v, cut-off %v\n",
		crashTakeover.Round(time.Millisecond), cutTakeover.Round(time.Millisecond))
	return nil
}

// start runs an instance: queue for the lock, lead while the lease lasts,
// queue again.
func start(ctx context.Context, name string, servers []string, events chan<- event) (*instance, error) {
	in := &instance{name: name, done: make(chan struct{})}
	// The instance reaches every server through a proxy of its own. The
	// proxies' addresses differ per instance, so placement must not depend
	// on addresses: shard.CRC32 picks by position in the list.
	var addrs []string
	for _, s := range servers {
		p, err := testutil.NewProxy(s)
		if err != nil {
			in.closeProxies()
			return nil, err
		}
		in.proxies = append(in.proxies, p)
		addrs = append(addrs, p.Addr())
	}
	c, err := dflock.New(addrs, dflock.WithSharding(shard.CRC32), dflock.WithLeaseTTL(leaseTTL))
	if err != nil {
		in.closeProxies()
		return nil, err
	}
	in.client = c
	ctx, in.cancel = context.WithCancel(ctx)
	go func() {
		defer close(in.done)
		var lastLog time.Time
		for ctx.Err() == nil {
			// No AcquireTimeout: a standby keeps its place in the lock's
			// queue until granted (a timeout would send it to the end of
			// the queue each time). The price: a blocked wait carries no
			// traffic, so a server that stalls without closing is noticed
			// only when the wait chunk ends (Client.Lock's doc); a closed
			// connection is noticed at once, a dead host by TCP keepalive.
			l, err := c.Lock(ctx, jobKey)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				// The server is unreachable (ErrServerUnavailable): say
				// why (at most every 5 s), and retry.
				if time.Since(lastLog) >= 5*time.Second {
					lastLog = time.Now()
					log.Printf("%s: %v (retrying)", name, err)
				}
				select {
				case <-time.After(200 * time.Millisecond):
				case <-ctx.Done():
				}
				continue
			}
			events <- event{kind: elected, who: name, at: time.Now()}
			runs, err := lead(ctx, l)
			if in.crashed.Load() {
				return
			}
			if ctx.Err() != nil {
				// Shutting down: hand the job over at once.
				rctx, cancel := context.WithTimeout(context.Background(), dflock.DefaultReleaseTimeout)
				_ = l.Release(rctx)
				cancel()
				return
			}
			events <- event{kind: stepped, who: name, at: time.Now(), runs: runs, err: err}
			return // this demo's instances lead once; a real one would loop and stand by again
		}
	}()
	return in, nil
}

// lead runs the singleton job until the lease ends or ctx does.
func lead(ctx context.Context, l *dflock.Lock) (runs int, err error) {
	t := time.NewTicker(jobTick)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			// select picks at random among ready cases: the tick may win
			// over a Done that has just closed, so check before each run.
			if l.Err() != nil {
				return runs, l.Err()
			}
			runs++
			job(l.Context())
		case <-l.Done():
			return runs, l.Err()
		case <-ctx.Done():
			return runs, ctx.Err()
		}
	}
}

// job is one run of the singleton job. It works under the lock's context,
// which is cancelled (cause ErrLockLost) the moment the lease is lost, so
// that long work stops with its leadership.
func job(ctx context.Context) {
	_ = ctx // the job's work goes here, passing ctx to every call it makes
}

func expect(ctx context.Context, events <-chan event, kind eventKind) (event, error) {
	select {
	case ev := <-events:
		if ev.kind != kind {
			return ev, fmt.Errorf("unexpected event %+v", ev)
		}
		return ev, nil
	case <-ctx.Done():
		return event{}, fmt.Errorf("waiting for a leader: %w", ctx.Err())
	}
}

// crash closes the instance's connections the way a dying process's kernel
// would, then stops it.
func (in *instance) crash() {
	in.crashed.Store(true)
	in.closeProxies()
	in.kill()
}

// partition drops everything between the instance and the servers, leaving
// the connections open.
func (in *instance) partition() {
	for _, p := range in.proxies {
		p.Blackhole(true)
	}
}

var killMu sync.Mutex

// kill stops the instance's goroutine and Client; idempotent.
func (in *instance) kill() {
	killMu.Lock()
	defer killMu.Unlock()
	if in.client == nil {
		return
	}
	in.cancel()
	<-in.done
	_ = in.client.Close() // always nil; it waits for every release
	in.client = nil
	in.closeProxies()
}

func (in *instance) closeProxies() {
	for _, p := range in.proxies {
		_ = p.Close()
	}
}
