package soak

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

var (
	soakDuration = flag.Duration("soak", 0, "run the chaos soak for this long (0: skip it)")
	soakSeed     = flag.Uint64("soak.seed", 0, "random seed of the soak (0: from the clock)")
	soakWorkers  = flag.Int("soak.workers", 80, "workload goroutines per Client")
	soakFaults   = flag.Duration("soak.faults", 1200*time.Millisecond, "mean time between fault starts")
	soakKinds    = flag.String("soak.kinds", "", "comma-separated fault kinds to inject, by name (e.g. \"stall > lease,blackhole\"; empty: all)")
)

const (
	numServers = 3
	numClients = 3
	// clientKeepAlive is well below serverReadTimeout, latency spikes included.
	clientKeepAlive = time.Second
	// settle bounds each wait for the healed cluster to reach a state
	// (every client working again, connections closed, leases gone).
	settle = 20 * time.Second
)

// phase is one configuration of the soak.
type phase struct {
	name     string
	version  testutil.Version
	signals  bool
	fencing  bool
	duration time.Duration
}

// phaseResult is everything a phase measured.
type phaseResult struct {
	phase
	rec       *recorder
	faults    [numFaultKinds]int
	effects   [numFaultKinds]int // what the faults did (faultWindow.effect), by kind
	effective [numFaultKinds]int // faults that had an effect, by kind
	faultErrs []error
	v         *verdict
	sig       signalFigures
	leaks     []string
	recovery  time.Duration // longest time a client took to work again after the heal
	closeMax  time.Duration // longest Client.Close
	pauseMax  time.Duration // longest the process went unscheduled (pause detector)
	grants    int
	events    [testutil.AuditStop + 1]int
}

func TestSoak(t *testing.T) {
	if *soakDuration <= 0 {
		t.Skip("the soak runs with -soak=DURATION (make soak)")
	}
	seed := *soakSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	total := *soakDuration
	phases := []phase{
		{name: "v1.16 + signals", version: testutil.V1_16, signals: true, duration: total * 6 / 10},
		{name: "v2.1 + fencing", version: testutil.V2_1, fencing: true, duration: total - total*6/10},
	}
	// The soak must end by itself: if a phase hangs (a call that never
	// returns, a Close that blocks), crash with every goroutine's stack,
	// as go test -timeout does, rather than wait for CI to kill it.
	watchdog := time.AfterFunc(total+5*time.Minute, func() {
		debug.SetTraceback("all")
		panic("soak: did not finish within its duration + 5m")
	})
	defer watchdog.Stop()
	var results []*phaseResult
	for i, ph := range phases {
		results = append(results, runPhase(t, ph, seed+uint64(i)))
	}
	report := figures(results, seed, total)
	fmt.Print(report)
	for _, r := range results {
		if n := r.v.total(); n > 0 {
			t.Errorf("%s: %d violation(s)", r.name, n)
			for _, inv := range sortedKeys(r.v.examples) {
				for _, ex := range r.v.examples[inv] {
					t.Errorf("  (%s) %s", inv, ex)
				}
			}
		}
		for _, inv := range sortedKeys(r.v.starvedExamples) {
			for _, ex := range r.v.starvedExamples[inv] {
				t.Logf("%s: starved (%s) %s", r.name, inv, ex)
			}
		}
		for _, l := range r.leaks {
			t.Errorf("%s: leak: %s", r.name, l)
		}
		for _, err := range r.faultErrs {
			t.Errorf("%s: fault injection: %v", r.name, err)
		}
	}
}

func runPhase(t *testing.T, ph phase, seed uint64) *phaseResult {
	res := &phaseResult{phase: ph, rec: newRecorder(), v: newVerdict()}
	rec := res.rec
	cl, err := startCluster(numServers, ph.version)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	defer cl.close()

	clients := make([]*dflock.Client, numClients)
	taps := make([]*tokenTap, numClients)
	for i := range clients {
		taps[i] = newTokenTap()
		opts := []dflock.Option{
			dflock.WithDialer(taps[i].dial),
			dflock.WithLeaseTTL(serverLease),
			dflock.WithKeepAlive(clientKeepAlive),
			dflock.WithServerReadTimeout(serverReadTimeout),
			dflock.WithHooks(dflock.Hooks{OnLeaseLost: func(info dflock.LeaseInfo, _ error) { rec.lostHook.Add(1); rec.hooked.Store(info.Token, true) }}),
		}
		if ph.fencing {
			opts = append(opts, dflock.WithFencing())
		}
		c, err := dflock.New(cl.addrs(), opts...)
		if err != nil {
			t.Fatalf("new client: %v", err)
		}
		defer c.Close() // also closed below; Close is idempotent
		clients[i] = c
	}

	stop := make(chan struct{})
	base, endCalls := context.WithCancel(context.Background())
	defer endCalls()
	var stopAt atomic.Pointer[time.Time]
	var wg sync.WaitGroup
	var consumers sync.WaitGroup
	var long []*subRecord
	if ph.signals {
		for ci, c := range clients {
			for _, p := range []struct{ pattern, group string }{
				{"ev.>", ""}, {"ev.*", ""}, {channel(ci), ""}, {channel(numChannels - 1 - ci), ""}, {"ev.>", "g"},
			} {
				s, err := listen(context.Background(), c, cl, ci, p.pattern, p.group, rec)
				if err != nil {
					t.Fatalf("listen %q: %v", p.pattern, err)
				}
				s.long = true
				long = append(long, s)
				consumers.Add(1)
				go func() { defer consumers.Done(); s.consume(cl) }()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				churn(c, cl, ci, rec, stop, seed+uint64(ci)*7919)
			}()
		}
	}
	for ci, c := range clients {
		for j := range *soakWorkers {
			w := &worker{id: j, client: ci, c: c, tap: taps[ci], rec: rec, cl: cl, stop: stop, base: base, stopAt: &stopAt, signals: ph.signals,
				rng: rand.New(rand.NewPCG(seed, uint64(ci*100000+j)))}
			wg.Add(1)
			go func() { defer wg.Done(); w.run() }()
		}
	}

	pd := startPauseDetector()
	defer pd.stop()

	// Faults for the phase's duration; run returns once every fault has
	// ended and the cluster is healed.
	kinds, err := parseKinds(*soakKinds)
	if err != nil {
		t.Fatal(err)
	}
	f := newFaulter(cl, seed, *soakFaults, kinds)
	fctx, fcancel := context.WithTimeout(context.Background(), ph.duration)
	f.run(fctx)
	fcancel()
	res.faultErrs = f.errs
	checkFaultCoverage(res, f, taps, cl)

	// Every client works again on every server (the workload keeps running).
	healed := time.Now()
	for ci, c := range clients {
		for node := range cl.nodes {
			if err := probe(c, cl, node); err != nil {
				res.v.violate("heal", "client %d cannot lock on server %d %s after the heal: %v", ci, node, settle, err)
			}
		}
	}
	res.recovery = time.Since(healed)
	res.pauseMax = pd.worst()

	close(stop)
	endCalls()
	now := time.Now()
	stopAt.Store(&now)
	wg.Wait()
	res.leaks = append(res.leaks, busyLeftovers(clients)...)
	if ph.signals {
		for _, s := range long {
			if s.group == "" {
				markers(res.v, clients[s.client], cl, s, rec)
			}
			_ = s.sub.Close()
		}
		consumers.Wait()
	}
	for _, c := range clients {
		start := time.Now()
		_ = c.Close()
		res.closeMax = max(res.closeMax, time.Since(start))
	}

	res.leaks = append(res.leaks, leftovers(cl)...)
	rec.mu.Lock()
	for _, e := range rec.fnErrs {
		res.v.violate("k", "%s: fn runs only under a grant (its error is fn's, nil here, or a loss)", e)
	}
	// (u): every error a call returns matches a documented sentinel; one
	// that matches none is a bug in the SDK's error mapping (or a crash
	// in the making), not a fault's expected outcome.
	for _, op := range sortedKeys(rec.ops) {
		if n := rec.ops[op]["other"]; n > 0 {
			res.v.violate("u", "%d %s call(s) failed with an error matching no documented sentinel, e.g. %q", n, op, rec.unusual[op])
		}
	}
	rec.mu.Unlock()

	killed := func(node int, at time.Time) bool { return f.killedAt(node, at, killSlack) }
	res.v.explain = func(node int, from, to time.Time) string {
		if node < 0 {
			return pd.describe(from, to)
		}
		return f.describe(node, from, to) + "; " + pd.describe(from, to)
	}
	res.v.paused = pd.paused
	checkServerGrants(res.v, ledgers(cl), ph.fencing)
	checkLeases(res.v, ledgers(cl), rec.beliefs, killed, ph.fencing)
	checkLossHooks(res.v, rec, clients) // after checkLeases, which gives WithLocks their tokens
	checkReleases(res.v, ledgers(cl), rec.beliefs, f.anyFaultDuring)
	checkUnexplainedLosses(res.v, ledgers(cl), rec.beliefs, f.faultedDuring)
	if ph.signals {
		rec.mu.Lock()
		subs := rec.subs
		rec.mu.Unlock()
		res.sig = checkSignals(res.v, subs, rec.emits)
	}
	rec.mu.Lock()
	checkOverruns(res.v, rec.slow)
	calls := len(rec.overruns)
	rec.mu.Unlock()
	checkStarvation(res.v, calls)
	for _, nd := range cl.nodes {
		nd.ledger.mu.Lock()
		res.grants += nd.ledger.count
		for k, n := range nd.ledger.events {
			res.events[k] += n
		}
		nd.ledger.mu.Unlock()
	}

	pd.stop()
	cl.close()
	if err := goleak.Find(); err != nil {
		res.leaks = append(res.leaks, "goroutines: "+err.Error())
	}
	return res
}

// pauseDetector measures how late a timer's work runs: every pauseTick a
// time.AfterFunc callback sends its due time on a channel to the detector's
// goroutine, which records how late it got it. That is the shape of the
// SDK's renewal scheduler (a timer wakes one goroutine, which does the
// renewals), so the delay it sees is the timer's and the run queue's, not
// only the process's: when the process is starved of CPU (a loaded runner,
// -race, GC), or its goroutines queue for a processor, the scheduler's
// renewals are that late too. It lets a report tell a starved machine from
// a late client.
type pauseDetector struct {
	done chan struct{}
	wg   sync.WaitGroup

	mu     sync.Mutex
	pauses []pause
	max    time.Duration
}

type pause struct {
	from, to time.Time
}

const (
	pauseTick = 5 * time.Millisecond
	// pauseThreshold: a delay the detector records. Below it, lateness is
	// the ordinary jitter of timers and of -race.
	pauseThreshold = 20 * time.Millisecond
)

func startPauseDetector() *pauseDetector {
	pd := &pauseDetector{done: make(chan struct{})}
	pd.wg.Add(1)
	go func() {
		defer pd.wg.Done()
		fired := make(chan time.Time, 1) // one timer is pending at a time
		arm := func() *time.Timer {
			due := time.Now().Add(pauseTick)
			return time.AfterFunc(pauseTick, func() { fired <- due })
		}
		t := arm()
		defer func() { t.Stop() }()
		for {
			var due time.Time
			select {
			case <-pd.done:
				return
			case due = <-fired:
			}
			now := time.Now()
			if late := now.Sub(due); late > pauseThreshold {
				pd.mu.Lock()
				pd.pauses = append(pd.pauses, pause{due, now})
				pd.max = max(pd.max, late)
				pd.mu.Unlock()
			}
			t = arm()
		}
	}()
	return pd
}

func (pd *pauseDetector) stop() {
	select {
	case <-pd.done:
	default:
		close(pd.done)
	}
	pd.wg.Wait()
}

func (pd *pauseDetector) worst() time.Duration {
	pd.mu.Lock()
	defer pd.mu.Unlock()
	return pd.max
}

// paused is a pausedFunc: the total of the delays overlapping [from, to]
// (the parts inside it), and the end of the last one.
func (pd *pauseDetector) paused(from, to time.Time) (total time.Duration, lastEnd time.Time) {
	pd.mu.Lock()
	defer pd.mu.Unlock()
	for _, p := range pd.pauses {
		if p.to.Before(from) || p.from.After(to) {
			continue
		}
		lo, hi := p.from, p.to
		if lo.Before(from) {
			lo = from
		}
		if hi.After(to) {
			hi = to
		}
		total += hi.Sub(lo)
		if p.to.After(lastEnd) {
			lastEnd = p.to
		}
	}
	return total, lastEnd
}

// describe reports the longest scheduling delay between from and to, and
// their total.
func (pd *pauseDetector) describe(from, to time.Time) string {
	total, _ := pd.paused(from, to)
	pd.mu.Lock()
	defer pd.mu.Unlock()
	var worst pause
	n := 0
	for _, p := range pd.pauses {
		if !p.to.Before(from) && !p.from.After(to) {
			n++
			if p.to.Sub(p.from) > worst.to.Sub(worst.from) {
				worst = p
			}
		}
	}
	if worst.from.IsZero() {
		return fmt.Sprintf("no scheduling delay over %s in [%s, %s]", pauseThreshold, stamp(from), stamp(to))
	}
	return fmt.Sprintf("the process went unscheduled for %s at [%s, %s]; in [%s, %s] %d delay(s) over %s, %s in all",
		worst.to.Sub(worst.from), stamp(worst.from), stamp(worst.to), stamp(from), stamp(to), n, pauseThreshold, total)
}

func ledgers(cl *cluster) []*ledger {
	out := make([]*ledger, len(cl.nodes))
	for i, nd := range cl.nodes {
		out[i] = nd.ledger
	}
	return out
}

// probe waits until c can take and release a lock on node.
func probe(c *dflock.Client, cl *cluster, node int) error {
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("probe.%d", i); cl.index(c.ServerFor(k)) == node {
			key = k
		}
	}
	deadline := time.Now().Add(settle)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		l, err := c.Lock(ctx, key)
		if err == nil {
			err = l.Release(ctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond) // a retry pace, not synchronisation
	}
}

// leftovers is invariant (f) on the server side: once every Client is
// closed, no connection stays open on any server or proxy, and no lease is
// left: the servers hold nothing and every audited grant has ended.
func leftovers(cl *cluster) []string {
	var out []string
	deadline := time.Now().Add(settle)
	for _, nd := range cl.nodes {
		for {
			st := nd.srv.Stats()
			held := 0
			for _, l := range st.Locks {
				if l.OwnerConnID != 0 {
					held++
				}
			}
			for _, s := range st.Semaphores {
				held += s.Holders
			}
			open := nd.ledger.open()
			if st.Connections == 0 && nd.proxy.Conns() == 0 && held == 0 && len(open) == 0 {
				break
			}
			if time.Now().After(deadline) {
				out = append(out, fmt.Sprintf("server %d after Close: %d connection(s), %d proxied, %d lease(s) held, %d audited grant(s) without an end",
					nd.idx, st.Connections, nd.proxy.Conns(), held, len(open)))
				for i, g := range open {
					if i == 5 {
						break
					}
					out = append(out, fmt.Sprintf("  open grant %q token %s conn %d from %s, expires %s", g.key, short(g.token), g.conn, stamp(g.start), stamp(g.expires)))
				}
				break
			}
			time.Sleep(20 * time.Millisecond) // servers notice closed connections asynchronously
		}
	}
	return out
}

func listen(ctx context.Context, c *dflock.Client, cl *cluster, ci int, pattern, group string, rec *recorder) (*subRecord, error) {
	var opts []dflock.ListenOption
	if group != "" {
		opts = append(opts, dflock.Group(group))
	}
	opts = append(opts, dflock.Buffer(1024))
	sub, err := c.Listen(ctx, pattern, opts...)
	if err != nil {
		return nil, err
	}
	s := &subRecord{client: ci, pattern: pattern, group: group, listened: time.Now(), sub: sub}
	if strings.ContainsAny(pattern, "*>") {
		for i := range cl.nodes {
			s.nodes = append(s.nodes, i)
		}
	} else {
		s.nodes = []int{cl.index(c.ServerFor(pattern))}
	}
	rec.mu.Lock()
	rec.subs = append(rec.subs, s)
	rec.mu.Unlock()
	return s, nil
}

// churn subscribes and unsubscribes for the whole phase.
func churn(c *dflock.Client, cl *cluster, ci int, rec *recorder, stop <-chan struct{}, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	for {
		select {
		case <-stop:
			return
		default:
		}
		patterns := []string{"ev.>", "ev.*", channel(rng.IntN(numChannels))}
		pattern := patterns[rng.IntN(len(patterns))]
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(50+rng.IntN(2000))*time.Millisecond)
		s, err := listen(ctx, c, cl, ci, pattern, "", rec)
		ret := time.Now()
		if ctx.Err() != nil {
			if dl, ok := ctx.Deadline(); ok {
				rec.overran("Listen", dl, ret)
			}
		}
		cancel()
		rec.op("Listen", err)
		if err != nil {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		done := make(chan struct{})
		go func() { defer close(done); s.consume(cl) }()
		select {
		case <-stop:
		case <-time.After(time.Duration(200+rng.IntN(3000)) * time.Millisecond):
		}
		_ = s.sub.Close()
		<-done
	}
}

// markers emits, after the heal, one signal per server a long-lived
// subscription listens on, and waits for it: a healed subscription must
// deliver again (and the marker bounds the missed-signal check).
func markers(v *verdict, c *dflock.Client, cl *cluster, s *subRecord, rec *recorder) {
	for _, node := range s.nodes {
		ch := s.pattern
		if strings.ContainsAny(s.pattern, "*>") {
			for i := 0; ; i++ {
				if k := fmt.Sprintf("ev.m%d", i); cl.index(c.ServerFor(k)) == node {
					ch = k
					break
				}
			}
		}
		got := false
		for try := 0; try < 10 && !got; try++ {
			payload := fmt.Sprintf("marker.c%d.%s.%d.%d", s.client, s.pattern, node, try)
			seen := s.await(payload)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			rec.emit(c, cl, ch, payload, &callCtx{ctx: ctx, cancel: cancel})
			select {
			case <-seen:
				got = true
			case <-time.After(time.Second):
			}
		}
		if !got {
			v.violate("e", "client %d %q: no signal from server %d arrives after the heal", s.client, s.pattern, node)
		}
	}
}

// minCoverage is the shortest phase that must inject every fault kind
// (run fits them all in, however short the phase; below this the gaps
// would overlap every fault with every other).
const minCoverage = 2 * time.Second

// checkFaultCoverage counts the faults of the phase and what they did, and
// fails the phase (invariant "faults") if a kind was never injected, or if
// a kind that acts on existing connections never found any: a soak that
// did not exercise a fault shows nothing about it. Refusals and conn caps
// act only on dials, which the Clients make when they need to, so their
// effects (dials refused, connections turned away) are reported, not
// required.
func checkFaultCoverage(res *phaseResult, f *faulter, taps []*tokenTap, cl *cluster) {
	f.mu.Lock()
	windows := slices.Clone(f.windows)
	f.mu.Unlock()
	for _, w := range windows {
		effect := w.effect
		if w.kind == faultRefuse {
			addr := cl.nodes[w.node].proxy.Addr()
			for _, t := range taps {
				effect += t.refusedDials(addr, w.start, w.end)
			}
		}
		res.faults[w.kind]++
		res.effects[w.kind] += effect
		if effect > 0 {
			res.effective[w.kind]++
		}
	}
	if res.duration < minCoverage {
		return
	}
	for _, k := range f.kinds {
		switch {
		case res.faults[k] == 0:
			res.v.violate("faults", "%q was never injected in a phase of %s", k, res.duration)
		case k.needsConns() && res.effective[k] == 0:
			res.v.violate("faults", "%q was injected %d time(s) and never found a connection to act on", k, res.faults[k])
		}
	}
}

// effectUnit names what faultWindow.effect counts for kind.
func effectUnit(k faultKind) string {
	switch k {
	case faultDrop, faultRestart:
		return "connections closed by the server"
	case faultStallShort, faultStallLong:
		return "connections stalled"
	case faultRefuse:
		return "dials refused"
	case faultConnCap:
		return "connections turned away"
	case faultReset:
		return "connections reset"
	case faultBlackholeReset:
		return "connections partitioned, then reset"
	}
	return "connections held up"
}

// figures renders the closing table.
func figures(results []*phaseResult, seed uint64, total time.Duration) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("\n=== dflock soak: %s, seed %d, %d servers behind fault proxies, %d clients, %d workload goroutines per client ===\n",
		total, seed, numServers, numClients, *soakWorkers)
	for _, r := range results {
		p("\n--- phase %s (%s) ---\n", r.name, r.duration)
		p("operations (by outcome):\n")
		r.rec.mu.Lock()
		totalOps := 0
		for _, op := range sortedKeys(r.rec.ops) {
			m := r.rec.ops[op]
			var parts []string
			n := 0
			for _, o := range sortedKeys(m) {
				parts = append(parts, fmt.Sprintf("%s %d", o, m[o]))
				n += m[o]
			}
			totalOps += n
			p("  %-18s %8d  %s\n", op, n, strings.Join(parts, ", "))
		}
		p("  %-18s %8d\n", "total", totalOps)
		for _, op := range sortedKeys(r.rec.unusual) {
			for _, e := range r.rec.unusual[op] {
				p("  unusual %s error: %s\n", op, e)
			}
		}
		overruns := slices.Clone(r.rec.overruns)
		cancelMax, wlMax := r.rec.cancelMax, r.rec.withLockOverrunMax
		lostHook := r.rec.lostHook.Load()
		r.rec.mu.Unlock()

		p("faults (by kind): injected, with an effect, effect\n")
		nf := 0
		for k := range numFaultKinds {
			p("  %-20s %5d %5d  %d %s\n", k, r.faults[k], r.effective[k], r.effects[k], effectUnit(k))
			nf += r.faults[k]
		}
		p("  %-20s %5d\n", "total", nf)

		p("server audit: %d grants; events:", r.grants)
		for k := testutil.AuditGrant; k <= testutil.AuditStop; k++ {
			p(" %s %d", k, r.events[k])
		}
		p("\n")

		lossesSeen := len(r.v.losses)
		p("leases held (belief intervals checked): %d; losses reported: %d (OnLeaseLost hook: %d)\n", r.v.believed, lossesSeen, lostHook)
		byKind := make(map[string][]lossReport)
		for _, l := range r.v.losses {
			k := "ended by the server's " + l.kind.String()
			if l.killed {
				k = "killed server-side by a fault (" + l.kind.String() + "), reported after"
			}
			byKind[k] = append(byKind[k], l)
		}
		for _, k := range sortedKeys(byKind) {
			ls := byKind[k]
			slices.SortFunc(ls, func(a, b lossReport) int { return cmp.Compare(a.margin, b.margin) })
			if strings.HasPrefix(k, "killed") {
				p("  %s: latency median %s, worst %s (n=%d)\n", k, -ls[len(ls)/2].margin, -ls[0].margin, len(ls))
				continue
			}
			p("  %s: margin (server end − loss report) worst %s, median %s (n=%d)\n", k, ls[0].margin, ls[len(ls)/2].margin, len(ls))
			if ls[0].margin < 0 {
				p("    worst: %s\n", ls[0].note)
			}
		}
		p("  WithLock beliefs matched with their grant by the tokens their Client read: %d (the latest of several: %d); with no grant of their own (violations): %d\n",
			r.v.withLockMatched, r.v.withLockSeveral, r.v.withLockUnmatched)
		p("  WithLock releases checked by (g): %d; not checkable (a fault on the server, or the release bound reached): %d\n",
			r.v.withLockReleaseChecked, r.v.withLockReleaseUnchecked)
		p("  beliefs that outlived a lease killed server-side: %d (longest %s); resulting holder overlaps: %d\n",
			r.v.inherent, r.v.inherentMax, r.v.overlapsKill)
		if len(overruns) > 0 {
			p("calls that returned after their context ended: %d; overrun median %s, p99 %s, worst %s (bound %s)\n",
				len(overruns), percentile(overruns, 0.5), percentile(overruns, 0.99), percentile(overruns, 1), overrunBound)
		}
		p("  WithLock after ctx ended (incl. its bounded release): worst %s; Ticket.Cancel longest %s\n", wlMax, cancelMax)
		if r.signals {
			p("signals: emitted %d; received %d; expected %d, of which missed under a gap %d, missed and counted as dropped %d; gaps %d; drops %d\n",
				len(r.rec.emits), r.sig.received, r.sig.expected, r.sig.missedGap, r.sig.missedDrop, r.sig.gaps, r.sig.dropped)
		}
		p("recovery after the heal: %s; longest Client.Close: %s; longest scheduling delay seen: %s\n", r.recovery, r.closeMax, r.pauseMax)
		var vs []string
		for _, inv := range sortedKeys(r.v.counts) {
			vs = append(vs, fmt.Sprintf("%s %d", inv, r.v.counts[inv]))
		}
		p("VIOLATIONS: %d %s\n", r.v.total(), strings.Join(vs, ", "))
		var ss []string
		ns := 0
		for _, inv := range sortedKeys(r.v.starved) {
			ss = append(ss, fmt.Sprintf("%s %d", inv, r.v.starved[inv]))
			ns += r.v.starved[inv]
		}
		p("starved (excused: the process was measurably unscheduled when it had to act; docs/reliability.md): %d %s\n", ns, strings.Join(ss, ", "))
		p("LEAKS: %d\n", len(r.leaks))
	}
	return b.String()
}
