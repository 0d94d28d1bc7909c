package difftest

import (
	"flag"
	"math/rand/v2"
	"strings"
	"time"
)

// Scripted edges the random generator and the other scenarios do not
// reach (unusual bytes and separators, auth and read-timeout corners, lines
// past the read buffer, two-phase state touched from another connection,
// the drain). Run with -run 'TestScenarios/edges'.
var edgeScenarios = []scenario{
	// Unicode / control bytes in keys and args (validateKey only rejects SP, TAB, LF, CR;
	// strings.Fields / TrimSpace split on Unicode space).
	{"edges/odd-keys", serverFlags{}, []step{
		openConn("c1"),
		send("c1", "l", "a\x0bb", "0"), send("c1", "l", "a\x0cb", "0"), send("c1", "l", "a\x00b", "0"),
		send("c1", "l", "\u0085", "0"), send("c1", "l", "\u2028", "0"), send("c1", "l", "a\x85b", "0"),
		send("c1", "l", "<&>\"\\", "0"), send("c1", "l", "a\rb", "0"), send("c1", "l", "\x1c", "0"),
		send("c1", "stats", "_", ""),
	}},
	{"edges/odd-separators", serverFlags{}, []step{
		openConn("c1"),
		send("c1", "l", "a", "0\x0b7"), send("c1", "n", "a", "\x0c{T1}\u00a09\u0085"),
		send("c1", "r", "a", "\x0b{T1}\u2028"), send("c1", "sl", "s", "\u30000\u30002\u30005"),
		send("c1", "e", "e", "\x0b\x0c"), send("c1", "w", "e", "\u00a00\u00a0"),
		send("c1", "e", "f", "\u20285\u2029"), send("c1", "w", "f", "0"),
		send("c1", "stats", "_", ""),
	}},
	{"edges/odd-numbers", serverFlags{}, []step{
		openConn("c1"),
		send("c1", "l", "a", "\u0663"), send("c1", "l", "a", "0x1"), send("c1", "l", "a", "1_0"),
		send("c1", "l", "a", "+-1"), send("c1", "l", "a", "--1"), send("c1", "l", "a", "0 +-5"),
		send("c1", "l", "a", "0 00000000000000000000000000007"), send("c1", "l", "b", "-00000000000000000000000000 +0000000000000000000000000000000000000000000000000000000000000000008"),
		send("c1", "sl", "s", "0 0000000000000000000000000000002"), send("c1", "sl", "s", "0 +2"),
		send("c1", "e", "c", "+0"), send("c1", "e", "c", "-0"), send("c1", "w", "c", "-0"),
		send("c1", "stats", "_", ""),
	}},
	{"edges/auth-unicode-trim-and-cr", serverFlags{AuthToken: authSecret}, []step{
		openConn("c1"), send("c1", "auth", "a b c", "\x0b\u00a0"+authSecret+"\u2028\r"), send("c1", "stats", "_", ""),
		openConn("c2"), sendRaw("c2", "auth\r\n_\r\n"+authSecret+"\r\r\n", 1), send("c2", "auth", "_", authSecret),
	}},
	{"edges/auth-256-arg", serverFlags{AuthToken: strings.Repeat("s", 256)}, []step{
		openConn("c1"), send("c1", "auth", "_", strings.Repeat("s", 256)), send("c1", "stats", "_", ""),
		openConn("c2"), sendRaw("c2", "auth\n_\n"+strings.Repeat("s", 256)+"\r\n", 1),
	}},
	{"edges/auth-fail-with-pipelined-requests", serverFlags{AuthToken: authSecret}, []step{
		openConn("c1"), sendRaw("c1", request("auth", "_", "nope")+request("stats", "_", "")+request("l", "a", "0"), 1),
		openConn("c2"), sendRaw("c2", request("stats", "_", "")+request("auth", "_", authSecret), 1),
	}},
	{"edges/auth-half-close-before-auth", serverFlags{AuthToken: authSecret}, []step{
		openConn("c1"), halfClose("c1"), sleepFor(400 * time.Millisecond),
		openConn("c2"), sendRaw("c2", "auth\n_\n", 0), halfClose("c2"), sleepFor(400 * time.Millisecond),
	}},
	{"edges/max-conns-counts-auth-failing", serverFlags{AuthToken: authSecret, MaxConnections: 3}, []step{
		openConn("c1"), send("c1", "auth", "_", authSecret),
		openConn("c2"), sendRaw("c2", request("auth", "_", "nope"), 0), openConn("c3"),
		sleepFor(400 * time.Millisecond), openConn("c4"), send("c4", "auth", "_", authSecret), send("c4", "stats", "_", ""),
	}},
	// Read timeouts (per line) in corners.
	{"edges/trickled-line-over-read-timeout", serverFlags{ReadTimeout: 2}, []step{
		openConn("c1"),
		chunked("c1", 700*time.Millisecond, 0, "stats\n", "_", "_", "_", "_"),
		sleepFor(1500 * time.Millisecond),
	}},
	{"edges/read-timeout-in-over-long-drain", serverFlags{ReadTimeout: 2}, []step{
		openConn("c1"), sendRaw("c1", "l\n"+strings.Repeat("k", 300), 0), sleepFor(2600 * time.Millisecond),
	}},
	{"edges/read-timeout-after-blocking-with-partial-pipelined", serverFlags{ReadTimeout: 2}, []step{
		openConn("c1"), openConn("c2"), send("c1", "l", "a", "0"),
		step{kind: stepSend, conn: "c2", chunks: []string{request("l", "a", "3") + "stats\n_\n"}, replies: 1, blockFor: 3 * sec},
		sleepFor(3500 * time.Millisecond), sleepFor(1000 * time.Millisecond), sendRaw("c2", "\n", 1),
		sleepFor(2600 * time.Millisecond),
	}},
	{"edges/read-timeout-after-auth", serverFlags{ReadTimeout: 2, AuthToken: authSecret}, []step{
		openConn("c1"), send("c1", "auth", "_", authSecret), sleepFor(1500 * time.Millisecond),
		send("c1", "stats", "_", ""), sleepFor(2600 * time.Millisecond),
	}},
	{"edges/read-timeout-holder-released", serverFlags{ReadTimeout: 2}, []step{
		openConn("c1"), openConn("c2"), send("c1", "l", "a", "0"),
		sendBlocking("c2", "l", "a", "5", 5*sec), sleepFor(2600 * time.Millisecond), send("c2", "stats", "_", ""),
	}},
	// Long lines.
	{"edges/over-long-5000-then-request", serverFlags{}, []step{
		openConn("c1"), sendRaw("c1", "l\na\n"+strings.Repeat("0", 5000)+"\n"+request("stats", "_", ""), 1),
		openConn("c2"), sendRaw("c2", strings.Repeat("x", 9000)+"\n", 1),
	}},
	{"edges/cr-only-terminators", serverFlags{}, []step{
		openConn("c1"), sendRaw("c1", "stats\r_\r\r", 0), sleepFor(200 * time.Millisecond),
		sendRaw("c1", "\n\n\n", 1), send("c1", "stats", "_", ""),
	}},
	{"edges/large-stats-reply", serverFlags{}, func() []step {
		st := []step{openConn("c1")}
		for i := range 40 {
			st = append(st, send("c1", "l", strings.Repeat(string(rune('a'+i%26)), 100+i), "0"))
		}
		return append(st, send("c1", "stats", "_", ""))
	}()},
	// Two-phase state vs. release/renew from another connection.
	{"edges/acquired-released-elsewhere-then-wait", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), send("c1", "e", "a", "7"), send("c2", "r", "a", "{T1}"),
		send("c1", "w", "a", "0"), send("c1", "e", "a", ""), send("c1", "w", "a", "0"),
	}},
	{"edges/acquired-renewed-elsewhere-then-wait", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), send("c1", "e", "a", "7"), send("c2", "n", "a", "{T1} 50"),
		send("c1", "stats", "_", ""), send("c1", "w", "a", "0"), send("c1", "stats", "_", ""),
	}},
	{"edges/acquired-expired-released-elsewhere-before-sweep", serverFlags{SweepInterval: 60}, []step{
		openConn("c1"), openConn("c2"), send("c1", "e", "a", "1"), sleepFor(1500 * time.Millisecond),
		send("c2", "r", "a", "{T1}"), send("c1", "w", "a", "0"), send("c1", "stats", "_", ""),
	}},
	{"edges/acquired-then-conn-closes-other-waits", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), send("c1", "e", "a", ""), send("c2", "e", "a", ""),
		closeConn("c1"), send("c2", "w", "a", "0"), send("c2", "stats", "_", ""),
	}},
	// Drain corners.
	{"edges/drain-idle-read-timeout-and-auth", serverFlags{ShutdownTimeout: 6, ReadTimeout: 3, AuthToken: authSecret}, []step{
		openConn("c1"), openConn("c2"), send("c1", "auth", "_", authSecret), send("c1", "l", "a", "0"),
		shutdown(), sleepFor(300 * time.Millisecond),
		send("c2", "auth", "_", authSecret), send("c2", "l", "b", "0"), send("c2", "e", "a", ""), send("c2", "stats", "_", ""),
		sleepFor(3500 * time.Millisecond),
	}},
	{"edges/drain-then-release-grants-queued", serverFlags{ShutdownTimeout: 5}, []step{
		openConn("c1"), openConn("c2"), send("c1", "l", "a", "0"), send("c2", "e", "a", ""),
		shutdown(), sleepFor(300 * time.Millisecond),
		send("c1", "r", "a", "{T1}"), send("c2", "w", "a", "0"), send("c2", "stats", "_", ""),
	}},
}

func init() { scenarios = append(scenarios, edgeScenarios...) }

// Short-lease random sessions: -difftest.short makes the
// generator use leases of 1-2 s and guards the moments they can lapse
// (every step time and wait end + 1 s and + 2 s), so expiry, eviction on
// the spot and hand-over mix with the random operations deterministically.
var (
	shortLeases      = flag.Bool("difftest.short", false, "short leases in random sessions (expiry, eviction and hand-over among random operations)")
	shortSweep       = flag.Int("difftest.short.sweep", 60, "lease sweep interval with -difftest.short")
	shortGC          = flag.Bool("difftest.short.gc", false, "with -difftest.short: GC every 1 s of keys idle over 1 s")
	shortReadTimeout = flag.Int("difftest.short.rt", 0, "with -difftest.short: read timeout in seconds (steps kept away from every idle deadline; the observer is kept alive)")
)

func shortLeaseFlags(rng *rand.Rand, f *serverFlags) {
	if !*shortLeases {
		return
	}
	f.SweepInterval = *shortSweep
	if *shortGC {
		f.GCInterval, f.GCMaxIdle = 1, 1
	}
	f.ReadTimeout = *shortReadTimeout
	if rng.IntN(10) < 3 {
		f.DefaultLease = 1
	} else {
		f.DefaultLease = 0
	}
}

func (s *session) shortLeaseGuard(t time.Time) {
	if *shortLeases {
		s.waitEnds = append(s.waitEnds, t.Add(time.Second), t.Add(2*time.Second))
		if *shortGC {
			s.waitEnds = append(s.waitEnds, t.Add(1500*time.Millisecond), t.Add(2500*time.Millisecond), t.Add(3*time.Second))
		}
		if *shortReadTimeout > 0 {
			s.waitEnds = append(s.waitEnds, t.Add(time.Duration(*shortReadTimeout)*time.Second))
			if !s.observer.c[onReal].ended() && !s.observer.c[onFake].ended() {
				s.connCounts() // keeps the observer from timing out
			}
		}
	}
}
