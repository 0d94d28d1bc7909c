package soak

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dflock-sdk/go/testutil"
)

// Server settings of the soak. Leases are short and the read timeout is
// short too, so that every fault outlives some leases; the read timeout
// stays above the longest lease so that a silent connection's leases expire
// (which the client must predict) before the server closes it (which the
// client cannot).
const (
	serverReadTimeout = 5 * time.Second
	serverLease       = 2 * time.Second
	serverSweep       = 250 * time.Millisecond
)

// node is one server behind its fault proxy, with the server's audit log.
type node struct {
	idx    int
	srv    *testutil.Server
	proxy  *testutil.Proxy
	ledger *ledger

	mu         sync.Mutex // guards the proxy fault state below
	stopped    int        // active stop + restart faults
	blackholes int
	refusals   int
	capped     int                   // active connection-cap faults
	latencies  map[int]time.Duration // active latency spikes by id; the largest applies
	nextSpike  int
}

// cluster is the soak's servers.
type cluster struct {
	nodes  []*node
	byAddr map[string]int // proxy address → node index
}

func startCluster(n int, version testutil.Version) (*cluster, error) {
	cl := &cluster{byAddr: make(map[string]int)}
	for i := range n {
		nd := &node{idx: i, ledger: newLedger(i), latencies: make(map[int]time.Duration)}
		srv, err := testutil.Start(testutil.Config{
			Version:       version,
			ReadTimeout:   serverReadTimeout,
			DefaultLease:  serverLease,
			SweepInterval: serverSweep,
			Audit:         nd.ledger.record,
		})
		if err != nil {
			cl.close()
			return nil, err
		}
		nd.srv = srv
		p, err := testutil.NewProxy(srv.Addr())
		if err != nil {
			_ = srv.Close()
			cl.close()
			return nil, err
		}
		nd.proxy = p
		cl.nodes = append(cl.nodes, nd)
		cl.byAddr[p.Addr()] = i
	}
	return cl, nil
}

// addrs are the addresses the Clients dial: the proxies.
func (cl *cluster) addrs() []string {
	a := make([]string, len(cl.nodes))
	for i, nd := range cl.nodes {
		a[i] = nd.proxy.Addr()
	}
	return a
}

func (cl *cluster) index(addr string) int {
	if i, ok := cl.byAddr[addr]; ok {
		return i
	}
	return -1
}

func (cl *cluster) close() {
	for _, nd := range cl.nodes {
		if nd.proxy != nil {
			_ = nd.proxy.Close()
		}
		if nd.srv != nil {
			_ = nd.srv.Close()
		}
	}
}

// Proxy faults nest: a blackhole or refusal stays on while any fault that
// turned it on is active, and the largest active latency spike applies.

func (nd *node) blackhole(on bool) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if on {
		nd.blackholes++
	} else {
		nd.blackholes--
	}
	nd.proxy.Blackhole(nd.blackholes > 0)
}

func (nd *node) refuse(on bool) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if on {
		nd.refusals++
	} else {
		nd.refusals--
	}
	nd.proxy.RefuseNew(nd.refusals > 0)
}

func (nd *node) capNew(on bool) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if on {
		nd.capped++
	} else {
		nd.capped--
	}
	nd.proxy.CloseNew(nd.capped > 0)
}

func (nd *node) spike(d time.Duration) (end func()) {
	nd.mu.Lock()
	id := nd.nextSpike
	nd.nextSpike++
	nd.latencies[id] = d
	nd.applyLatencyLocked()
	nd.mu.Unlock()
	return func() {
		nd.mu.Lock()
		delete(nd.latencies, id)
		nd.applyLatencyLocked()
		nd.mu.Unlock()
	}
}

func (nd *node) applyLatencyLocked() {
	var m time.Duration
	for _, d := range nd.latencies {
		m = max(m, d)
	}
	nd.proxy.SetLatency(m)
}

// faultKind is one kind of injected fault.
type faultKind int

const (
	faultDrop           faultKind = iota // server closes every connection
	faultRestart                         // server stops (state lost) and restarts on the same address
	faultStallShort                      // server stops reading for less than a lease
	faultStallLong                       // server stops reading for longer than a lease
	faultBlackhole                       // a partition TCP survives: nothing passes, then everything held does
	faultBlackholeReset                  // a partition the connections do not survive: reset when it lifts
	faultLatency                         // proxy delays every byte
	faultReset                           // proxy resets every connection
	faultRefuse                          // nothing listens: new connections are refused
	faultConnCap                         // new connections are accepted and closed, as over --max-connections
	numFaultKinds
)

var faultNames = [numFaultKinds]string{
	faultDrop:           "drop connections",
	faultRestart:        "stop + restart",
	faultStallShort:     "stall < lease",
	faultStallLong:      "stall > lease",
	faultBlackhole:      "blackhole",
	faultBlackholeReset: "blackhole + reset",
	faultLatency:        "latency spike",
	faultReset:          "reset (RST)",
	faultRefuse:         "refuse new conns",
	faultConnCap:        "conn cap (close new)",
}

func (k faultKind) String() string { return faultNames[k] }

// needsConns reports whether the fault acts on the connections a server or
// its proxy has when it begins: it hits a running server, and it had an
// effect if there were any. Kinds that turn away new connections (refuse,
// conn cap) have an effect only if a Client happens to dial meanwhile.
func (k faultKind) needsConns() bool { return k != faultRefuse && k != faultConnCap }

// kills reports whether the fault ends server-side leases by closing their
// connections (or the server): the client can only learn of that afterwards.
func (k faultKind) kills() bool { return k == faultDrop || k == faultRestart || k == faultReset }

// faultWindow is when a fault was active on a server. For the killing kinds
// it spans the call that ended the connections (for a restart, the Stop).
type faultWindow struct {
	node       int
	kind       faultKind
	start, end time.Time
	dur        time.Duration // for a restart: the whole outage
	kill       time.Time     // for a blackhole: when its connections were reset
	// effect is what the fault did: for the kinds that need connections,
	// how many the server (drop, restart, stall) or the proxy (the others)
	// had when it began (node.conns); for a conn cap, the connections it
	// turned away.
	// Dials refused are counted by the Clients' taps (refusedDials).
	effect int
}

// faulter injects faults on random servers, overlapping, until its context
// ends; every fault undoes itself within a bounded time, or at once when
// the faulter is stopped.
type faulter struct {
	cl    *cluster
	rng   *rand.Rand // used by the scheduling goroutine only
	mean  time.Duration
	kinds []faultKind // the kinds it draws from
	// round is what is left of the current round: every kind once, in a
	// random order, so that each is injected as often as the others and a
	// short phase still sees every kind; rounds counts the rounds begun.
	round  []faultKind
	rounds int

	mu      sync.Mutex
	windows []faultWindow
	errs    []error
	wg      sync.WaitGroup
}

func newFaulter(cl *cluster, seed uint64, mean time.Duration, kinds []faultKind) *faulter {
	if len(kinds) == 0 {
		for k := range numFaultKinds {
			kinds = append(kinds, k)
		}
	}
	return &faulter{cl: cl, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), mean: mean, kinds: kinds}
}

// parseKinds parses a comma-separated list of fault kind names (-soak.kinds).
func parseKinds(s string) ([]faultKind, error) {
	var out []faultKind
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		i := slices.Index(faultNames[:], name)
		if i < 0 {
			return nil, fmt.Errorf("soak: unknown fault kind %q (known: %s)", name, strings.Join(faultNames[:], ", "))
		}
		out = append(out, faultKind(i))
	}
	return out, nil
}

// run schedules faults until ctx ends, then waits for every active fault to
// undo itself and heals the cluster: every server running, every proxy clean.
//
// Faults start at exponentially distributed gaps (mean f.mean), their kinds
// in rounds of every kind in a shuffled order. In the first round, gaps are
// shortened where needed to fit every kind before ctx's deadline (a CI phase
// of 8 s with a mean of 1.2 s would otherwise leave some kinds out).
func (f *faulter) run(ctx context.Context) {
	deadline, bounded := ctx.Deadline()
	for {
		gap := time.Duration(f.rng.ExpFloat64() * float64(f.mean))
		if bounded && f.rounds <= 1 {
			left := len(f.round)
			if f.rounds == 0 {
				left = len(f.kinds)
			}
			if left > 0 {
				gap = min(gap, time.Until(deadline)/time.Duration(left+1))
			}
		}
		select {
		case <-ctx.Done():
			f.wg.Wait()
			f.heal()
			return
		case <-time.After(gap):
		}
		kind := f.nextKind()
		draw := f.rng.Uint64() // f.rng is the run loop's alone: the goroutine gets its draw
		d := f.duration(kind)
		lat := time.Duration(20+f.rng.IntN(380)) * time.Millisecond
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			// The server is picked in the goroutine, just before the fault
			// acts: a fault started a moment earlier (a restart, a reset,
			// a drop) may have taken the connections that a pick made in
			// the loop saw, before this goroutine ran.
			f.inject(ctx, f.pickNode(kind, draw), kind, d, lat)
		}()
	}
}

// nextKind takes the next kind of the current round, starting a new
// shuffled round when it is used up.
func (f *faulter) nextKind() faultKind {
	if len(f.round) == 0 {
		f.round = slices.Clone(f.kinds)
		f.rng.Shuffle(len(f.round), func(i, j int) { f.round[i], f.round[j] = f.round[j], f.round[i] })
		f.rounds++
	}
	k := f.round[0]
	f.round = f.round[1:]
	return k
}

// pickNode chooses, by draw, the server for a fault of kind: for kinds
// that act on existing connections, one that is not stopped and has
// connections for it to act on, if there is one (a drop on a stopped
// server, or a reset right after another one, does nothing). So a kind has
// no effect in a phase only if, every time it was drawn, no server had a
// connection for connWait.
func (f *faulter) pickNode(kind faultKind, draw uint64) *node {
	nodes := f.cl.nodes
	if kind.needsConns() {
		// A phase's first fault may come before any Client has dialled
		// (dflock.New dials nothing): wait a little for a connection
		// rather than inject a fault with nothing to act on, which the
		// coverage check would fail.
		deadline := time.Now().Add(connWait)
		for {
			var up []*node
			for _, nd := range nodes {
				nd.mu.Lock()
				stopped := nd.stopped > 0
				nd.mu.Unlock()
				if !stopped && nd.conns(kind) > 0 {
					up = append(up, nd)
				}
			}
			if len(up) > 0 {
				nodes = up
				break
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nodes[draw%uint64(len(nodes))]
}

// connWait bounds pickNode's wait for a connection to act on. The Clients
// re-dial as soon as a call needs a server, so a wait this long finds none
// only when no call could run (a machine starving the workers).
const connWait = time.Second

// conns counts the connections a fault of kind would act on: the server's
// for the server's own faults, the proxy's for the network's.
func (nd *node) conns(kind faultKind) int {
	switch kind {
	case faultDrop, faultRestart, faultStallShort, faultStallLong:
		return nd.srv.Stats().Connections
	}
	return nd.proxy.Conns()
}

// duration draws how long a fault of kind lasts (an outage, for a restart).
func (f *faulter) duration(kind faultKind) time.Duration {
	between := func(lo, hi time.Duration) time.Duration {
		return lo + time.Duration(f.rng.Int64N(int64(hi-lo)))
	}
	switch kind {
	case faultRestart:
		return between(50*time.Millisecond, 2*time.Second)
	case faultStallShort:
		return between(100*time.Millisecond, 900*time.Millisecond)
	case faultStallLong:
		return between(3*time.Second, 6*time.Second)
	case faultBlackhole, faultBlackholeReset:
		return between(300*time.Millisecond, 5*time.Second)
	case faultLatency:
		return between(300*time.Millisecond, 3*time.Second)
	case faultRefuse, faultConnCap:
		return between(200*time.Millisecond, 3*time.Second)
	}
	return 0
}

func (f *faulter) inject(ctx context.Context, nd *node, kind faultKind, d, lat time.Duration) {
	hold := func() {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	w := faultWindow{node: nd.idx, kind: kind, start: time.Now(), dur: d}
	if kind.needsConns() {
		w.effect = nd.conns(kind)
	}
	switch kind {
	case faultDrop:
		nd.srv.DropConnections()
	case faultRestart:
		nd.mu.Lock()
		nd.stopped++
		nd.mu.Unlock()
		defer func() {
			nd.mu.Lock()
			nd.stopped--
			nd.mu.Unlock()
		}()
		if err := nd.srv.Stop(); err != nil {
			f.fail(fmt.Errorf("stop server %d: %w", nd.idx, err))
		}
		w.end = time.Now()
		hold()
		if err := nd.srv.Restart(); err != nil {
			f.fail(fmt.Errorf("restart server %d: %w", nd.idx, err))
		}
		w.dur = time.Since(w.start)
	case faultStallShort, faultStallLong:
		resume := nd.srv.Stall(0)
		hold()
		resume()
	case faultBlackhole:
		// A partition TCP survives: while it lasts nothing passes (writes
		// block once the buffers fill, dials get no answer); when it lifts,
		// retransmission delivers everything held, late but in order.
		nd.blackhole(true)
		hold()
		nd.blackhole(false)
	case faultBlackholeReset:
		// A partition the connections do not survive (a retransmission or
		// user timeout gave up, or a middlebox forgot them): the connections
		// that lived through it are reset when it lifts.
		nd.blackhole(true)
		hold()
		w.kill = time.Now()
		nd.proxy.ResetAll()
		nd.blackhole(false)
	case faultLatency:
		end := nd.spike(lat)
		hold()
		end()
	case faultReset:
		nd.proxy.ResetAll()
	case faultRefuse:
		nd.refuse(true)
		hold()
		nd.refuse(false)
	case faultConnCap:
		before := nd.proxy.TurnedAway()
		nd.capNew(true)
		hold()
		nd.capNew(false)
		w.effect = int(nd.proxy.TurnedAway() - before) // overlapping caps on one server share their count
	}
	if w.end.IsZero() {
		w.end = time.Now()
	}
	f.mu.Lock()
	f.windows = append(f.windows, w)
	f.mu.Unlock()
}

func (f *faulter) fail(err error) {
	f.mu.Lock()
	f.errs = append(f.errs, err)
	f.mu.Unlock()
}

// heal makes sure every server runs and every proxy passes traffic.
func (f *faulter) heal() {
	for _, nd := range f.cl.nodes {
		if err := nd.srv.Restart(); err != nil {
			f.fail(fmt.Errorf("heal: restart server %d: %w", nd.idx, err))
		}
		nd.mu.Lock()
		nd.stopped, nd.blackholes, nd.refusals, nd.capped = 0, 0, 0, 0
		clear(nd.latencies)
		nd.proxy.Blackhole(false)
		nd.proxy.RefuseNew(false)
		nd.proxy.CloseNew(false)
		nd.proxy.SetLatency(0)
		nd.mu.Unlock()
	}
}

// describe lists the faults active on node between from and to.
func (f *faulter) describe(node int, from, to time.Time) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var parts []string
	for _, w := range f.windows {
		if w.node == node && !w.end.Before(from) && !w.start.After(to) {
			parts = append(parts, fmt.Sprintf("%s [%s, %s]", w.kind, stamp(w.start), stamp(w.end)))
		}
	}
	if len(parts) == 0 {
		return "no fault on that server"
	}
	return "faults on that server: " + strings.Join(parts, ", ")
}

// killedAt reports whether a fault that kills connections was active on
// node at time t (with slack for the server noticing a reset).
func (f *faulter) killedAt(node int, t time.Time, slack time.Duration) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.windows {
		if w.node != node {
			continue
		}
		if w.kind.kills() && !t.Before(w.start) && !t.After(w.end.Add(slack)) {
			return true
		}
		if !w.kill.IsZero() && !t.Before(w.kill) && !t.After(w.end.Add(slack)) {
			return true
		}
	}
	return false
}
