package difftest

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// authSecret is the auth token of sessions that use one.
const authSecret = "s3cret"

// maxLiveConns bounds the session connections open at once (not counting the observer).
const maxLiveConns = 5

// randomFlags picks a session's server configuration.
func randomFlags(rng *rand.Rand) serverFlags {
	var f serverFlags
	if rng.IntN(10) < 3 {
		f.MaxLocks = 2 + rng.IntN(3)
	}
	if rng.IntN(10) < 4 {
		f.MaxWaiters = 1 + rng.IntN(2)
	}
	if rng.IntN(10) < 2 {
		f.MaxConnections = 3 + rng.IntN(3) // the observer takes one
	}
	if rng.IntN(10) < 4 {
		f.DefaultLease = []int{40, 120}[rng.IntN(2)]
	}
	f.NoAutoRelease = rng.IntN(10) < 2
	if rng.IntN(100) < 15 {
		f.AuthToken = authSecret
	}
	return f
}

// generator makes the random steps of a session. Its choices depend only
// on its seed and on what the servers answered (which is the same on both
// until a mismatch ends the session).
type generator struct {
	avoid  map[string]bool // input classes left out (-difftest.avoid)
	rng    *rand.Rand
	s      *session
	limits map[string]int // the limit a key was first used with
	opened int
}

func newGenerator(rng *rand.Rand, s *session, avoid map[string]bool) *generator {
	return &generator{rng: rng, s: s, limits: map[string]int{}, avoid: avoid}
}

// avoidClasses are the known differences -difftest.avoid can look past:
// input classes the generator then leaves out, or numbers not compared.
var avoidClasses = map[string]string{
	"overflow": "leave out integers whose seconds overflow a time.Duration (9223372037 and up)",
	"idle":     "do not compare the idle_s of stats",
}

func (g *generator) pick(options ...string) string { return options[g.rng.IntN(len(options))] }

// pickNum is pick for numeric fields: with "overflow" avoided it returns
// "0" instead of a number above 9223372036 (whose seconds overflow a
// time.Duration).
func (g *generator) pickNum(options ...string) string {
	v := g.pick(options...)
	if g.avoid["overflow"] {
		if n, err := strconv.ParseInt(strings.TrimLeft(v, "+-0"), 10, 64); (err != nil && len(v) > 18) || n > 9223372036 {
			return "0"
		}
	}
	return v
}

func (g *generator) chance(pct int) bool { return g.rng.IntN(100) < pct }

// live are the session connections that can take a step now.
func (g *generator) live() (idle []*sessionConn, open int) {
	for _, sc := range g.s.conns[1:] {
		if sc.closed {
			continue
		}
		open++
		if sc.pending == nil {
			idle = append(idle, sc)
		}
	}
	return idle, open
}

func (g *generator) newConnName() string {
	g.opened++
	return "c" + strconv.Itoa(g.opened)
}

// next returns the next step, or ok=false if there is nothing to do but
// wait for pending requests.
func (g *generator) next() (step, bool) {
	idle, open := g.live()
	if open < maxLiveConns && (len(idle) == 0 || g.chance(4)) {
		return openConn(g.newConnName()), true
	}
	if len(idle) == 0 {
		return step{}, false
	}
	if open > 0 && g.chance(3) {
		var all []*sessionConn
		for _, sc := range g.s.conns[1:] {
			if !sc.closed {
				all = append(all, sc)
			}
		}
		return closeConn(all[g.rng.IntN(len(all))].name), true
	}
	sc := idle[g.rng.IntN(len(idle))]
	if g.s.flags.AuthToken != "" && !sc.authed {
		return g.authStep(sc.name), true
	}
	switch n := g.rng.IntN(100); {
	case n < 3: // several requests in one write
		k := 2 + g.rng.IntN(2)
		var b strings.Builder
		for range k {
			b.WriteString(g.request(sc, false))
		}
		return sendRaw(sc.name, b.String(), k), true
	case n < 5: // one request split across two writes
		req := g.request(sc, false)
		cut := 1 + g.rng.IntN(len(req)-1)
		return step{kind: stepSend, conn: sc.name, chunks: []string{req[:cut], req[cut:]}, replies: 1}, true
	case n < 9:
		return g.malformed(sc.name), true
	}
	st := sendRaw(sc.name, g.request(sc, true), 1)
	if blocking := g.blockingTimeout(st.chunks[0]); blocking > 0 {
		st.blockFor = blocking
	}
	return st, true
}

// blockingTimeout is the wait a request may block for: its timeout, for
// l/sl/w/sw with a positive one.
func (g *generator) blockingTimeout(req string) time.Duration {
	lines := strings.SplitN(req, "\n", 4)
	if len(lines) < 3 {
		return 0
	}
	switch lines[0] {
	case "l", "sl", "w", "sw":
	default:
		return 0
	}
	f := strings.Fields(lines[2])
	if len(f) == 0 {
		return 0
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n <= 0 || n > 60 {
		return 0
	}
	return time.Duration(n) * time.Second
}

func (g *generator) authStep(conn string) step {
	switch n := g.rng.IntN(100); {
	case n < 70:
		return send(conn, "auth", g.pick("_", "", "x y"), g.pick(authSecret, "  "+authSecret+" ", authSecret+"\r"))
	case n < 80:
		return send(conn, "auth", "_", g.pick("wrong", "", authSecret+"x", "s3 cret"))
	case n < 95:
		return sendRaw(conn, g.request(g.s.byName[conn], false), 1)
	default:
		return sendRaw(conn, "auth\n_\n"+strings.Repeat("s", 257)+"\n", 1)
	}
}

// key picks a key: mostly a small shared set (locks and semaphores share
// the v1.10 key space), sometimes an unusual one.
func (g *generator) key() string {
	if g.chance(90) {
		return g.pick("a", "b", "c", "d")
	}
	return g.pick("", "a b", "a\tb", "a\u00a0b", "é", "\xff", strings.Repeat("k", 256), " a", "a\r")
}

func (g *generator) lease() string {
	if *shortLeases {
		return g.pick("1", "1", "2", "")
	}
	switch n := g.rng.IntN(100); {
	case n < 45:
		return ""
	case n < 85:
		return g.pick("30", "60", "600", "+45", "045")
	default:
		return g.pickNum("0", "-5", "x", "1.5", "9223372036", "9223372037", "18446744074", "99999999999999999999")
	}
}

func (g *generator) timeout(mayBlock bool) string {
	switch n := g.rng.IntN(100); {
	case n < 80:
		return g.pick("0", "0", "0", "+0", "00")
	case n < 92 && mayBlock:
		return "1"
	default:
		return g.pickNum("-1", "x", "", "9223372037", "1.0", "-0")
	}
}

func (g *generator) limit(key string) string {
	if g.chance(8) {
		return g.pickNum("0", "-1", "x", "99999999999999999999")
	}
	l, ok := g.limits[key]
	if !ok || g.chance(20) {
		l = 1 + g.rng.IntN(3)
		if !ok {
			g.limits[key] = l
		}
	}
	return strconv.Itoa(l)
}

// enqueuedKey mostly replaces *key by one the connection has enqueued.
func (g *generator) enqueuedKey(sc *sessionConn, key *string) {
	if len(sc.enqueued) == 0 || g.chance(25) {
		return
	}
	keys := make([]string, 0, len(sc.enqueued))
	for k := range sc.enqueued {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	*key = keys[g.rng.IntN(len(keys))]
}

// token refers to a token the session has seen (then mostly setting *key
// to the key it was granted for), or is a bogus one.
func (g *generator) token(key *string) string {
	n := len(g.s.books[onReal].byName)
	switch r := g.rng.IntN(100); {
	case r < 80 && n > 0:
		name := "T" + strconv.Itoa(1+g.rng.IntN(n))
		if k, ok := g.s.tokenKeys[name]; ok && g.chance(80) {
			*key = k
		}
		return "{" + name + "}"
	case r < 88:
		return g.pick("0123456789abcdef0123456789abcdef", "nope", "T1")
	case r < 94:
		return g.pick("", "  ", "a b")
	default:
		if n > 0 {
			return g.pick(" ", "\t") + "{T" + strconv.Itoa(1+g.rng.IntN(n)) + "}" + g.pick(" ", " x", "  ")
		}
		return "x"
	}
}

// join builds an arg line from fields, sometimes with unusual spacing.
func (g *generator) join(fields ...string) string {
	var kept []string
	for _, f := range fields {
		if f != "" {
			kept = append(kept, f)
		}
	}
	switch n := g.rng.IntN(100); {
	case n < 85:
		return strings.Join(kept, " ")
	case n < 92:
		return " " + strings.Join(kept, "  ") + " "
	case n < 96:
		return strings.Join(kept, "\t")
	default:
		return strings.Join(append(kept, "x"), " ") // one field too many
	}
}

// request returns one request's bytes; mayBlock allows a positive timeout.
func (g *generator) request(sc *sessionConn, mayBlock bool) string {
	key := g.key()
	var cmd, arg string
	switch n := g.rng.IntN(100); {
	case n < 18:
		cmd, arg = "l", g.join(g.timeout(mayBlock), g.lease())
	case n < 28:
		cmd, arg = "sl", g.join(g.timeout(mayBlock), g.limit(key), g.lease())
	case n < 40:
		cmd, arg = "r", g.token(&key)
	case n < 46:
		cmd, arg = "sr", g.token(&key)
	case n < 54:
		cmd, arg = "n", g.join(g.token(&key), g.lease())
	case n < 58:
		cmd, arg = "sn", g.join(g.token(&key), g.lease())
	case n < 68:
		cmd, arg = "e", g.lease()
		if g.chance(5) {
			arg = g.pick("30 junk", " 30 ", "\t")
		}
	case n < 74:
		cmd, arg = "se", g.join(g.limit(key), g.lease())
	case n < 84:
		cmd, arg = "w", g.timeout(mayBlock)
		g.enqueuedKey(sc, &key)
	case n < 88:
		cmd, arg = "sw", g.timeout(mayBlock)
		g.enqueuedKey(sc, &key)
	case n < 95:
		cmd, key, arg = "stats", g.pick("_", "", "x y"), g.pick("", "junk")
	default:
		cmd, arg = "auth", g.pick(authSecret, "wrong")
	}
	eol := "\n"
	if g.chance(4) {
		eol = g.pick("\r\n", "\r\r\n")
	}
	return cmd + eol + key + eol + arg + eol
}

// malformed is a step with a request the server must refuse, some of which
// close the connection (over-long lines).
func (g *generator) malformed(conn string) step {
	switch n := g.rng.IntN(100); {
	case n < 35:
		return send(conn, g.pick("L", " l", "l ", "ping", "x", "", "listen", "signal", "unlisten", "stats ", "STATS"), "a", "0")
	case n < 50:
		return send(conn, g.pick("l", "sl", "e", "r", "n"), g.pick("", "a b", "a\tb"), "0 2")
	case n < 60: // 256 bytes is the longest line
		return send(conn, "l", "a", "0"+strings.Repeat(" ", 255))
	case n < 70:
		return send(conn, "l", strings.Repeat("k", 256), "0")
	case n < 80:
		return sendRaw(conn, "stats\n_\n"+strings.Repeat(" ", 256)+"\r\n", 1)
	case n < 88:
		return sendRaw(conn, strings.Repeat("l", 257)+"\na\n0\n", 1)
	case n < 94:
		return sendRaw(conn, "l\n"+strings.Repeat("k", 257)+"\n0\n", 1)
	default:
		return sendRaw(conn, "l\na\n0"+strings.Repeat(" ", 256)+"\nstats\n_\n\n", 2)
	}
}
