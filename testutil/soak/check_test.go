package soak

import (
	"cmp"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dflock-sdk/go/testutil"
)

// belief is an interval in which a goroutine believed it held a key. Its
// times are client readings taken so that the interval is never longer than
// the truth: start and last are readings taken *before* a check that found
// the lease still held (Done not closed), so the lease was believed held at
// both; a holder checks every few milliseconds and once more right before
// it calls Release.
type belief struct {
	client int
	op     string
	key    string
	token  string // "" for WithLock, whose token is not visible, until matched
	node   int    // the server the lease is on, by the Lock's Server()
	// home is the key's server by the Client's placement (ServerFor): a
	// lease on any other server is a second lock of the same key.
	home     int
	sem      bool
	limit    int
	start    time.Time
	last     time.Time
	fence    uint64
	hasFence bool

	// lost is when the loss was observed (unix nanos of a reading taken in
	// context.AfterFunc(l.Context()), so after the report); 0 if the lease
	// was not lost. Written by that callback, read by the checker.
	lost     atomic.Pointer[time.Time]
	lostErr  atomic.Pointer[string]
	released bool // the goroutine called Release (or WithLock returned)
	// Release's error and a reading taken after it returned
	// (checkReleases). For WithLock: WithLock's error and return, and
	// relFrom, a reading taken as fn returned (WithLock's own release runs
	// between the two, and its error is not returned unless it is a loss).
	relErr  error
	relRet  time.Time
	relFrom time.Time

	// For WithLock: when the call began, and whether its Client read a
	// token in a grant reply (its tokenTap). The checker matches the belief
	// with the grant of its key that began between call and start, whose
	// token the Client read and that no other belief claims, and sets token
	// (and inferred); a WithLock with no such grant is a violation.
	call      time.Time
	seen      func(token string) bool
	inferred  bool
	ambiguous bool // matched with the latest of several candidates
}

// Bounds of the checks.
const (
	// killSlack: a server-side end within this long after a fault that kills
	// connections is attributed to the fault (the server notices a reset a
	// little after the proxy sent it).
	killSlack = time.Second
	// overrunBound: no call may return later than this after its context
	// ended (invariant d). Generous, for a loaded one-CPU machine.
	overrunBound = time.Second
	// starveSlack is how much of a window the pause detector can miss
	// while the process was starved: its threshold and one tick.
	starveSlack = pauseThreshold + pauseTick
	// maxStarvedFraction: above this share of the cases checked, cases
	// excused as starved fail the run (invariant "starved"): the machine
	// was too loaded for the run to show anything.
	maxStarvedFraction = 0.01
)

// pausedFunc reports how long the process measurably went unscheduled
// within [from, to] (the pause detector's delays over its threshold), and
// when the last such delay that overlaps [from, to] ended.
type pausedFunc func(from, to time.Time) (total time.Duration, lastEnd time.Time)

// safetyMargin is the client's margin before a lease's server-side expiry
// (docs/leases.md): 10 % of the TTL, at least 100 ms, at most 2 s.
func safetyMargin(ttl time.Duration) time.Duration {
	return min(max(ttl/10, 100*time.Millisecond), 2*time.Second)
}

// lossReport is a lease loss matched with the server's end of the lease.
type lossReport struct {
	margin time.Duration // server end − loss observed (positive: reported first)
	killed bool          // the server ended the lease by a fault that kills connections
	kind   testutil.AuditKind
	note   string // the details, for the worst cases
}

// verdict collects violations, by invariant.
type verdict struct {
	counts   map[string]int
	examples map[string][]string
	// Cases excused because the process was measurably starved of CPU
	// when it had to act (see starvedLease, checkOverruns), by invariant.
	starved         map[string]int
	starvedExamples map[string][]string
	// paused, if set, is the pause detector; without it nothing is excused.
	paused pausedFunc

	believed int // belief intervals checked
	losses   []lossReport
	// explain, if set, describes what happened on a server around a
	// violation (faults, process pauses), for the report.
	explain func(node int, from, to time.Time) string

	// WithLock beliefs matched with their grant by their Client's reads
	// (of which several candidates: the latest taken), and those with no
	// grant of their own (each a violation).
	withLockMatched, withLockSeveral, withLockUnmatched int
	// WithLock releases held to (g), and those it could not check (see
	// checkReleases).
	withLockReleaseChecked, withLockReleaseUnchecked int

	inherent     int           // beliefs that outlived a lease a fault killed server-side
	inherentMax  time.Duration // longest such overhang
	overlapsKill int           // client-side overlaps of lock holders caused by such kills
}

func newVerdict() *verdict {
	return &verdict{counts: make(map[string]int), examples: make(map[string][]string),
		starved: make(map[string]int), starvedExamples: make(map[string][]string)}
}

func (v *verdict) starve(inv, format string, args ...any) {
	v.starved[inv]++
	if len(v.starvedExamples[inv]) < 8 {
		v.starvedExamples[inv] = append(v.starvedExamples[inv], fmt.Sprintf(format, args...))
	}
}

// starvedLease reports whether a belief that outlived its lease's expiry
// at end (lease ttl), last seen held at last, is explained by the process
// being starved of CPU. The client must declare the loss at its renewal
// deadline, which is at or before end − margin; from then on a correct
// client needs no time of its own. The case is excused when the time the
// process was scheduled (not measured unscheduled) between end − margin and
// last is at most a margin, the time it is given to catch up, and it was
// measurably unscheduled at some moment of [end − margin, end], the window
// in which it had to act (a delay that began after the expiry explains
// nothing). The rule is monotonic: a belief that ended earlier, or a longer
// delay, is never worse off. It excuses at most a margin of the client's
// own lateness past its deadline, so an SDK that ignores its deadline still
// fails.
func (v *verdict) starvedLease(end time.Time, ttl time.Duration, last time.Time) bool {
	if v.paused == nil {
		return false
	}
	m := safetyMargin(ttl)
	from := end.Add(-m)
	inWindow, _ := v.paused(from, end)
	total, _ := v.paused(from, last)
	return inWindow > 0 && last.Sub(from)-total <= m
}

// marginNote tells how long the process was unscheduled in the window in
// which the client had to declare a loss, [end − margin, end].
func (v *verdict) marginNote(end time.Time, ttl time.Duration) string {
	if v.paused == nil {
		return ""
	}
	m := safetyMargin(ttl)
	total, _ := v.paused(end.Add(-m), end)
	return fmt.Sprintf("; unscheduled %s of the safety margin [%s, %s]", total, stamp(end.Add(-m)), stamp(end))
}

func (v *verdict) violate(inv, format string, args ...any) {
	v.counts[inv]++
	if len(v.examples[inv]) < 8 {
		v.examples[inv] = append(v.examples[inv], fmt.Sprintf(format, args...))
	}
}

func (v *verdict) context(node int, from, to time.Time) string {
	if v.explain == nil {
		return ""
	}
	return "; " + v.explain(node, from, to)
}

func (v *verdict) total() int {
	n := 0
	for _, c := range v.counts {
		n += c
	}
	return n
}

// killedFunc reports whether a fault that kills connections hit node at t.
type killedFunc func(node int, t time.Time) bool

// trimmed is a belief cut to the server-side grant it lies in.
type trimmed struct {
	b          *belief
	start, end time.Time
}

// checkLeases checks invariants (a), (b) and (c) of every belief against the
// servers' ledgers, and that every lease is on its key's server.
func checkLeases(v *verdict, ledgers []*ledger, beliefs []*belief, killed killedFunc, fenced bool) {
	claimed := make(map[string]bool) // tokens that beliefs show
	for _, b := range beliefs {
		if b.token != "" && !b.inferred {
			claimed[b.token] = true
		}
	}
	checkPlacement(v, beliefs)
	matchWithLocks(v, ledgers, beliefs, claimed)
	var cut []trimmed
	for _, b := range beliefs {
		v.believed++
		if b.node < 0 || b.node >= len(ledgers) {
			v.violate("a", "%s %q: held on an unknown server", b.op, b.key)
			continue
		}
		if b.token == "" {
			continue // a WithLock with no grant of its own: matchWithLocks reported it
		}
		g := ledgers[b.node].find(b.token)
		if g == nil || g.key != b.key || b.start.Before(g.start) {
			v.violate("a", "%s %q token %s (client %d, server %d): believed held from %s with no server grant in force",
				b.op, b.key, short(b.token), b.client, b.node, stamp(b.start))
			continue
		}
		end := g.end
		if !g.ended() {
			end = g.expires // still held at the check: held at least until then
		}
		lost := b.lost.Load()
		if lost != nil && g.ended() {
			note := fmt.Sprintf("%s %q token %s (client %d, server %d): last seen held %s, loss observed %s, server %s at %s (granted %s, expiry in force %s)%s",
				b.op, b.key, short(b.token), b.client, b.node, stamp(b.last), stamp(*lost), g.endKind, stamp(g.end), stamp(g.start), stamp(g.expires), lostNote(b, g.end))
			v.losses = append(v.losses, lossReport{margin: g.end.Sub(*lost), killed: isKill(g, killed), kind: g.endKind, note: note})
		}
		if b.last.After(end) {
			over := b.last.Sub(end)
			if isKill(g, killed) {
				// The server dropped the connection (or stopped): nobody can
				// report that before it happens. The client must notice by the
				// broken connection or, at the latest, by its own deadline,
				// which falls before the expiry in force at the kill: it counts
				// from the client's last confirmed renewal, sent no later than
				// the server's last renewal of the lease (within a lease of the
				// kill, then).
				v.inherent++
				v.inherentMax = max(v.inherentMax, over)
				if bound := g.expires; b.last.After(bound) {
					report := v.violate
					if v.starvedLease(bound, g.ttl, b.last) {
						report = v.starve
					}
					report("a", "%s %q token %s (client %d, server %d): still believed held at %s, %s after the server's %s at %s and past %s, the expiry then in force (TTL %s)%s",
						b.op, b.key, short(b.token), b.client, b.node, stamp(b.last), over, g.endKind, stamp(end), stamp(bound), g.ttl,
						v.marginNote(bound, g.ttl))
				}
			} else {
				report := v.violate
				// A lease that ran out, whatever removed it: a starved
				// client's late loss may close its connection before the
				// server's sweeper gets to it.
				if (g.endKind == testutil.AuditExpire || g.ranOut) && v.starvedLease(end, g.ttl, b.last) {
					report = v.starve
				}
				report("a", "%s %q token %s (client %d, server %d): believed held at %s, %s after the server-side lease ended by %s at %s (granted %s, %d renewal(s), TTL %s)%s%s",
					b.op, b.key, short(b.token), b.client, b.node, stamp(b.last), over, g.endKind, stamp(end), stamp(g.start), g.renewals, g.ttl,
					lostNote(b, end), v.context(b.node, g.start.Add(-time.Second), b.last)+v.marginNote(end, g.ttl))
			}
		}
		tr := trimmed{b: b, start: b.start, end: b.last}
		if tr.end.After(end) {
			tr.end = end
		}
		cut = append(cut, tr)
		if fenced && !b.sem && b.token != "" && !b.inferred {
			checkFence(v, b)
		}
	}
	checkExclusion(v, cut)
	if fenced {
		checkFenceOrder(v, cut)
	}
	// The untrimmed beliefs overlap only where a kill made a client believe
	// on after its lease was gone; count those for the report.
	var whole []trimmed
	for _, b := range beliefs {
		whole = append(whole, trimmed{b: b, start: b.start, end: b.last})
	}
	sub := newVerdict()
	checkExclusion(sub, whole)
	v.overlapsKill = sub.total()
}

// matchWithLocks gives each WithLock belief its grant (token, inferred):
// of the grants of its key that the server made between the call and the
// function's start, whose token the belief's Client read and that no other
// belief claims, and that was not released before the function began
// (withLockCandidates), the latest (the one it held when the function
// began; earlier ones are acquires of the same Client that gave up, such
// as a Lock whose context ended as it was granted). Beliefs with a single
// candidate are matched first, the others in the order their functions
// began, and a grant matched is claimed, so two WithLocks of one Client
// never share a grant. A WithLock left without a
// grant ran fn under no lock of its own (another caller's grant in force
// then proves nothing): a violation of (a).
func matchWithLocks(v *verdict, ledgers []*ledger, beliefs []*belief, claimed map[string]bool) {
	var wl []*belief
	for _, b := range beliefs {
		if b.token == "" && b.seen != nil && b.node >= 0 && b.node < len(ledgers) {
			wl = append(wl, b)
		}
	}
	slices.SortStableFunc(wl, func(a, b *belief) int { return a.start.Compare(b.start) })
	match := func(b *belief, g *grant, n int) {
		b.token, b.inferred, b.ambiguous = g.token, true, n > 1
		claimed[g.token] = true
		v.withLockMatched++
		if n > 1 {
			v.withLockSeveral++
		}
	}
	// Beliefs left with one candidate first, again until none is: their
	// grant is sure, and taking it from a belief with several (two
	// WithLocks of one Client whose functions began out of grant order)
	// would leave them without.
	for progress := true; progress; {
		progress = false
		rest := wl[:0]
		for _, b := range wl {
			if cs := withLockCandidates(ledgers[b.node], b, claimed); len(cs) == 1 {
				match(b, cs[0], 1)
				progress = true
			} else {
				rest = append(rest, b)
			}
		}
		wl = rest
	}
	for _, b := range wl {
		cs := withLockCandidates(ledgers[b.node], b, claimed)
		if len(cs) == 0 {
			v.withLockUnmatched++
			v.violate("a", "%s %q (client %d, server %d): fn ran from %s (called %s) with no grant of the key made during the call that its Client read and no other belief claims%s",
				b.op, b.key, b.client, b.node, stamp(b.start), stamp(b.call), v.context(b.node, b.call, b.start))
			continue
		}
		match(b, cs[len(cs)-1], len(cs)) // the latest
	}
}

// withLockCandidates returns, in grant order, the grants a WithLock belief
// may have held (see matchWithLocks): of its key, made between the call
// and the function's start, read by its Client, claimed by no other
// belief, and not released before the function began (WithLock releases
// only after fn: such a grant is another call's, given back as it was
// granted).
func withLockCandidates(lg *ledger, b *belief, claimed map[string]bool) []*grant {
	var cs []*grant
	for _, g := range lg.between(b.key, b.call, b.start) {
		if claimed[g.token] || !b.seen(g.token) {
			continue
		}
		if g.ended() && g.endKind == testutil.AuditRelease && g.end.Before(b.start) {
			continue
		}
		cs = append(cs, g)
	}
	return cs
}

// checkPlacement checks that every lease of a key is on the key's one
// server: the server its Client's placement names (home), the same for
// every Client. A key held on two servers is two locks (a routing bug);
// exclusion, checked per key across servers, catches only the cases where
// both were held at once.
func checkPlacement(v *verdict, beliefs []*belief) {
	first := make(map[string]*belief)
	for _, b := range beliefs {
		if b.node != b.home {
			v.violate("placement", "%s %q token %s (client %d): held on server %d, but the key's server is %d",
				b.op, b.key, short(b.token), b.client, b.node, b.home)
		}
		if f, ok := first[b.key]; !ok {
			first[b.key] = b
		} else if f.home != b.home {
			v.violate("placement", "%q: client %d places it on server %d, client %d on server %d", b.key, f.client, f.home, b.client, b.home)
		}
	}
}

func isKill(g *grant, killed killedFunc) bool {
	switch g.endKind {
	case testutil.AuditDisconnect, testutil.AuditStop:
		return killed(g.node, g.end)
	}
	return false
}

func lostNote(b *belief, end time.Time) string {
	if lost := b.lost.Load(); lost != nil {
		s := fmt.Sprintf("; loss observed at %s (%s after the end)", stamp(*lost), lost.Sub(end))
		if e := b.lostErr.Load(); e != nil {
			s += ": " + *e
		}
		return s
	}
	return "; loss never reported"
}

// overrun is a call that returned at ret, after its context ended at ended.
type overrun struct {
	op         string
	ended, ret time.Time
}

// checkOverruns checks invariant (d) on the calls that returned more than
// overrunBound after their context ended. One is excused as starved when
// the overrun less the time the detector measured the process unscheduled
// within it is within the bound: a call cannot return while nothing runs.
func checkOverruns(v *verdict, slow []overrun) {
	for _, o := range slow {
		d := o.ret.Sub(o.ended)
		report := v.violate
		if v.paused != nil {
			if total, _ := v.paused(o.ended, o.ret); d-total <= overrunBound {
				report = v.starve
			}
		}
		report("d", "%s returned %s after its context ended (at %s)%s", o.op, d, stamp(o.ended), v.context(-1, o.ended, o.ret))
	}
}

// checkStarvation fails the run when the cases excused as starved exceed
// maxStarvedFraction of the cases checked: beliefs for (a), calls that
// returned after their context ended for (d).
func checkStarvation(v *verdict, calls int) {
	for inv, n := range v.starved {
		of := v.believed
		if inv == "d" {
			of = calls
		}
		if float64(n) > maxStarvedFraction*float64(of) {
			v.violate("starved", "%d case(s) of (%s) excused as CPU starvation out of %d checked (more than %.0f%%): the machine was too loaded for this run to show anything",
				n, inv, of, 100*maxStarvedFraction)
		}
	}
}

// checkExclusion checks invariant (b): at no instant two holders of a lock
// key, or more holders of a semaphore key than its limit. Holders are
// grouped by key alone, whatever server they hold it on: to the
// application a key held on two servers at once has two holders.
func checkExclusion(v *verdict, cut []trimmed) {
	type keyID struct {
		key string
		sem bool
	}
	byKey := make(map[keyID][]trimmed)
	for _, t := range cut {
		if t.end.Before(t.start) {
			continue
		}
		id := keyID{t.b.key, t.b.sem}
		byKey[id] = append(byKey[id], t)
	}
	for id, ts := range byKey {
		type edge struct {
			at    time.Time
			delta int
			t     trimmed
		}
		edges := make([]edge, 0, 2*len(ts))
		for _, t := range ts {
			edges = append(edges, edge{t.start, +1, t}, edge{t.end, -1, t})
		}
		// Intervals are closed: at equal times a start counts before an end,
		// so touching intervals count as overlapping (conservatively, the
		// readings are taken inside the intervals).
		slices.SortFunc(edges, func(a, b edge) int {
			if c := a.at.Compare(b.at); c != 0 {
				return c
			}
			return b.delta - a.delta
		})
		limit := 1
		if id.sem {
			limit = ts[0].b.limit
		}
		n := 0
		var active []trimmed
		for _, e := range edges {
			if e.delta < 0 {
				n--
				active = slices.DeleteFunc(active, func(t trimmed) bool { return t.b == e.t.b })
				continue
			}
			n++
			active = append(active, e.t)
			if n > limit {
				var who []string
				for _, t := range active {
					who = append(who, fmt.Sprintf("client %d %s token %s on server %d [%s, %s]", t.b.client, t.b.op, short(t.b.token), t.b.node, stamp(t.start), stamp(t.end)))
				}
				v.violate("b", "%q: %d holders (limit %d) at %s: %s", id.key, n, limit, stamp(e.at), strings.Join(who, "; "))
			}
		}
	}
}

// checkFence checks that a lock's fence is the one in its v2.1 token.
func checkFence(v *verdict, b *belief) {
	want, ok := tokenFence(b.token)
	switch {
	case !b.hasFence:
		v.violate("c", "%s %q token %s: no fence with WithFencing on a v2.1 server", b.op, b.key, short(b.token))
	case !ok || want != b.fence:
		v.violate("c", "%s %q token %s: Fence() = %d, token says %d", b.op, b.key, short(b.token), b.fence, want)
	}
}

// checkFenceOrder checks invariant (c): per key, a holder that believed it
// held the lock after another one had stopped believing has a larger fence.
// It looks at the beliefs cut to their grants: a client that goes on
// believing after a fault killed its lease server-side is what fences are
// for, and is counted apart.
func checkFenceOrder(v *verdict, cut []trimmed) {
	byKey := make(map[string][]trimmed)
	for _, t := range cut {
		if !t.b.sem && t.b.hasFence && !t.end.Before(t.start) {
			byKey[t.b.key] = append(byKey[t.b.key], t)
		}
	}
	for key, ts := range byKey {
		slices.SortFunc(ts, func(a, b trimmed) int { return a.start.Compare(b.start) })
		ended := slices.Clone(ts)
		slices.SortFunc(ended, func(a, b trimmed) int { return a.end.Compare(b.end) })
		var top *trimmed // the largest fence among beliefs ended so far
		j := 0
		for _, t := range ts {
			for ; j < len(ended) && ended[j].end.Before(t.start); j++ {
				if top == nil || ended[j].b.fence > top.b.fence {
					top = &ended[j]
				}
			}
			if top != nil && t.b.fence <= top.b.fence {
				v.violate("c", "%q: fence %d (token %s, from %s) not above fence %d of an earlier holder (token %s, until %s)",
					key, t.b.fence, short(t.b.token), stamp(t.start), top.b.fence, short(top.b.token), stamp(top.end))
			}
		}
	}
}

// checkServerGrants checks the servers' own records: lock grants of a key
// never overlap, semaphore grants never exceed the limit, v2.1 fences
// strictly increase per key, and the log is consistent.
func checkServerGrants(v *verdict, ledgers []*ledger, fenced bool) {
	for _, lg := range ledgers {
		lg.mu.Lock()
		for _, a := range lg.anomalies {
			v.violate("audit", "%s", a)
		}
		lg.mu.Unlock()
		for key, gs := range lg.snapshot() {
			var cut []trimmed
			var prev uint64
			for i := range gs {
				g := &gs[i]
				end := g.end
				if !g.ended() {
					end = g.expires
				}
				// A zero-length stand-in belief per grant lets checkExclusion
				// count server-side holders; open ends are cut at expiry.
				cut = append(cut, trimmed{b: &belief{client: -1, op: "grant", key: key, token: g.token, node: g.node, sem: g.sem, limit: g.limit}, start: g.start, end: end})
				if fenced && !g.sem {
					f, ok := tokenFence(g.token)
					if !ok || (i > 0 && f <= prev) {
						v.violate("c", "server %d %q: grant fences not increasing (%d after %d)", g.node, key, f, prev)
					}
					prev = f
				}
			}
			sub := newVerdict()
			checkExclusionOpen(sub, cut)
			for inv, n := range sub.counts {
				v.counts["server-"+inv] += n
				v.examples["server-"+inv] = append(v.examples["server-"+inv], sub.examples[inv]...)
			}
		}
	}
}

// checkExclusionOpen is checkExclusion for server grants, whose intervals
// are half-open: a slot freed at t is granted to the next holder at t.
func checkExclusionOpen(v *verdict, cut []trimmed) {
	for i := range cut {
		cut[i].end = cut[i].end.Add(-time.Nanosecond)
	}
	checkExclusion(v, cut)
}

// tokenFence parses the fence of a v2.1 token: its first 8 bytes, big-endian.
func tokenFence(token string) (uint64, bool) {
	if len(token) < 16 {
		return 0, false
	}
	b, err := hex.DecodeString(token[:16])
	if err != nil {
		return 0, false
	}
	var f uint64
	for _, c := range b {
		f = f<<8 | uint64(c)
	}
	return f, true
}

func short(token string) string {
	if token == "" {
		return "(WithLock)"
	}
	if len(token) > 12 {
		return token[:12]
	}
	return token
}

// epoch is the zero of the times printed in reports.
var epoch = time.Now()

func stamp(t time.Time) string { return fmt.Sprintf("+%.3fs", t.Sub(epoch).Seconds()) }

// percentile returns the p-th percentile (0..1) of ds, which it sorts.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.SortFunc(ds, cmp.Compare)
	return ds[int(p*float64(len(ds)-1))]
}
