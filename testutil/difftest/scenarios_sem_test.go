package difftest

import "time"

// Scripted scenarios for counting semaphores (sl/se/sw/sr/sn), two-phase
// tickets (e/w, se/sw) and a lock and a semaphore on one key name: what
// random sessions reach poorly (FIFO hand-over to several waiters, a waiter
// timing out while queued, expiry and disconnects that free a slot, a `w`
// that withdraws a queued ticket). On v1.10 locks and semaphores share one
// key space: a lock is a limit-1 semaphore (PROTOCOL.md §8g).
func init() { scenarios = append(scenarios, semScenarios...) }

const ms = time.Millisecond

var semScenarios = []scenario{
	// Limits: fixed by whoever creates the key, kept while it idles (§8g).
	{"sem/limit-mismatch-kept-while-idle", serverFlags{}, []step{
		openConn("c1"), openConn("c2"),
		send("c1", "sl", "s", "0 2"), send("c2", "sl", "s", "0 3"), send("c2", "se", "s", "3"),
		send("c2", "sl", "s", "0 2"), send("c2", "sl", "s", "0 2"), send("c2", "se", "s", "1"),
		send("c1", "sr", "s", "{T1}"), send("c2", "sr", "s", "{T2}"),
		send("c1", "sl", "s", "0 3"), send("c1", "l", "s", "0"), send("c1", "e", "s", ""),
		send("c1", "stats", "_", ""),
	}},
	{"sem/arg-validation", serverFlags{}, []step{
		openConn("c1"),
		send("c1", "sl", "s", "0"), send("c1", "sl", "s", "0 2 5 7"), send("c1", "sl", "s", "0 0"),
		send("c1", "sl", "s", "0 -1"), send("c1", "sl", "s", "0 2 0"), send("c1", "sl", "s", "-1 2"),
		send("c1", "sl", "s", "0 x"), send("c1", "se", "s", ""), send("c1", "se", "s", "0"),
		send("c1", "se", "s", "2 3 4"), send("c1", "se", "s", "2 0"), send("c1", "sw", "s", ""),
		send("c1", "sw", "s", "-1"), send("c1", "sr", "s", ""), send("c1", "sn", "s", ""),
		send("c1", "stats", "_", ""),
		send("c1", "sl", "s", " +0  +2 "), send("c1", "se", "s", " 2\t5 "), send("c1", "sw", "s", " +0 "),
		send("c1", "sn", "s", "{T1} 9 9"), send("c1", "sn", "s", "{T1} 0"), send("c1", "sn", "s", "{T1} 4"),
		send("c1", "stats", "_", ""),
	}},
	{"sem/max-waiters", serverFlags{MaxWaiters: 1}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"),
		send("c2", "se", "s", "2"), send("c3", "se", "s", "2"), send("c3", "sl", "s", "0 2"),
		send("c3", "sl", "s", "1 2"), send("c3", "sl", "s", "0 3"),
		send("c1", "sr", "s", "{T1}"), send("c3", "se", "s", "2"), send("c2", "sw", "s", "0"),
		send("c1", "stats", "_", ""),
	}},
	{"sem/max-locks", serverFlags{MaxLocks: 1}, []step{
		openConn("c1"), send("c1", "sl", "s", "0 2"), send("c1", "se", "t", "2"), send("c1", "l", "a", "0"),
		send("c1", "e", "a", ""), send("c1", "sl", "s", "0 2"), send("c1", "stats", "_", ""),
	}},

	// FIFO hand-over of freed slots.
	{"sem/fifo-blocking-waiters", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"), openConn("c4"),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"),
		sendBlocking("c2", "sl", "s", "5 2", 5*sec), sendBlocking("c3", "sl", "s", "5 2 7", 5*sec),
		sendBlocking("c4", "sl", "s", "5 2", 5*sec), send("c1", "stats", "_", ""),
		send("c1", "sr", "s", "{T2}"), send("c1", "stats", "_", ""),
		send("c1", "sr", "s", "{T1}"), send("c2", "sr", "s", "{T3}"), send("c1", "stats", "_", ""),
	}},
	{"sem/fifo-mixed-blocking-and-enqueued", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"), openConn("c4"),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"),
		send("c2", "se", "s", "2"), sendBlocking("c3", "sl", "s", "5 2", 5*sec), send("c4", "se", "s", "2"),
		send("c1", "sr", "s", "{T1}"), send("c1", "stats", "_", ""),
		send("c1", "sr", "s", "{T2}"), send("c4", "sw", "s", "0"), send("c2", "sw", "s", "0"),
		send("c1", "stats", "_", ""), send("c3", "sr", "s", "{T3}"), send("c4", "sw", "s", "0"),
		send("c1", "stats", "_", ""),
	}},
	{"sem/waiter-times-out-while-queued", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"),
		sendBlocking("c2", "sl", "s", "1 2", sec), sendBlocking("c3", "sl", "s", "4 2", 4*sec),
		send("c1", "stats", "_", ""), sleepFor(1500 * ms), send("c1", "stats", "_", ""),
		send("c1", "sr", "s", "{T1}"), send("c1", "stats", "_", ""), send("c2", "sl", "s", "0 2"),
	}},

	// Disconnects (§8b).
	{"sem/disconnect-frees-every-slot", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"), openConn("c4"),
		send("c1", "sl", "s", "0 3"), send("c1", "sl", "s", "0 3"), send("c1", "sl", "s", "0 3"),
		sendBlocking("c2", "sl", "s", "5 3", 5*sec), send("c3", "se", "s", "3 9"),
		sendBlocking("c4", "sl", "s", "5 3", 5*sec), send("c3", "stats", "_", ""),
		closeConn("c1"), send("c3", "stats", "_", ""), send("c3", "sw", "s", "0"),
		send("c2", "sr", "s", "{T1}"), send("c2", "stats", "_", ""),
	}},
	{"sem/disconnect-without-auto-release", serverFlags{NoAutoRelease: true}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "sl", "s", "0 2 2"), send("c1", "sl", "s", "0 2 2"),
		sendBlocking("c2", "sl", "s", "5 2", 5*sec), closeConn("c1"), send("c3", "stats", "_", ""),
		sleepFor(3500 * ms), send("c3", "stats", "_", ""), send("c3", "sn", "s", "{T1}"),
	}},
	// v1.10 does not watch a connection blocked in sl/sw (§8e): closed by
	// the client, it keeps its slots (and its place in the queue) until its
	// wait ends; then auto-release hands them on.
	{"sem/closed-while-blocked-keeps-slots-until-wait-ends", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"),
		sendBlocking("c1", "sl", "s", "2 2", 2*sec), sendBlocking("c2", "sl", "s", "5 2", 5*sec),
		closeConn("c1"), send("c3", "stats", "_", ""), sleepFor(2500 * ms), send("c3", "stats", "_", ""),
	}},
	{"two-phase/closed-during-blocking-wait", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"),
		send("c2", "se", "s", "2"), sendBlocking("c2", "sw", "s", "3", 3*sec),
		send("c3", "se", "s", "2"), closeConn("c2"), send("c1", "stats", "_", ""),
		send("c1", "sr", "s", "{T1}"), sleepFor(200 * ms), send("c1", "stats", "_", ""),
		send("c3", "sw", "s", "0"), send("c1", "stats", "_", ""),
	}},

	// Lease expiry, renew and release (§6.5, §7).
	{"sem/expiry-grants-blocked-wait", serverFlags{}, []step{
		openConn("c1"), openConn("c2"),
		send("c1", "sl", "s", "0 2 1"), send("c1", "sl", "s", "0 2 30"),
		send("c2", "se", "s", "2 4"), sendBlocking("c2", "sw", "s", "5", 5*sec),
		sleepFor(2500 * ms), send("c1", "stats", "_", ""), send("c2", "sn", "s", "{T3} 6"),
		send("c1", "sr", "s", "{T1}"), send("c1", "stats", "_", ""),
	}},
	{"sem/renew-cases", serverFlags{}, []step{
		openConn("c1"), openConn("c2"),
		send("c1", "sl", "s", "0 2 1"), send("c1", "sl", "s", "0 2"), send("c1", "sl", "t", "0 2"),
		send("c1", "sn", "s", "{T2}"), send("c1", "sn", "s", "{T2} 7"), send("c1", "sn", "s", "{T9}"),
		send("c1", "sn", "t", "{T2}"), send("c1", "sn", "nokey", "{T2}"), send("c2", "sn", "s", "{T2} 5"),
		send("c1", "stats", "_", ""), sleepFor(2500 * ms),
		send("c1", "sn", "s", "{T1}"), send("c1", "sr", "s", "{T1}"), send("c1", "sr", "t", "{T3}"),
		send("c1", "sn", "t", "{T3}"), send("c1", "stats", "_", ""),
	}},
	{"sem/expired-before-sweep", serverFlags{SweepInterval: 60}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "sl", "s", "0 2 1"), send("c1", "sl", "s", "0 2"),
		send("c1", "sl", "q", "0 2 1"), send("c1", "sl", "q", "0 2"),
		sendBlocking("c2", "sl", "s", "5 2", 5*sec), sendBlocking("c3", "sl", "q", "5 2", 5*sec),
		sleepFor(1500 * ms), send("c1", "sn", "s", "{T1}"), send("c1", "stats", "_", ""),
		send("c1", "sr", "q", "{T3}"), send("c1", "stats", "_", ""),
	}},
	{"sem/release-wrong-token", serverFlags{}, []step{
		openConn("c1"), openConn("c2"),
		send("c1", "sl", "s", "0 2"), send("c2", "sl", "t", "0 2"),
		send("c1", "sr", "s", "{T2}"), send("c1", "sr", "s", "{T9}"), send("c1", "sr", "s", "{T1} x"),
		send("c1", "sr", "nokey", "{T1}"), send("c1", "stats", "_", ""),
		send("c2", "sr", "s", "{T1}"), send("c1", "sr", "s", "{T1}"),
		send("c1", "sl", "s", "0 2"), send("c1", "r", "s", "{T3}"), send("c1", "n", "t", "{T2}"),
		send("c1", "stats", "_", ""),
	}},
	{"sem/default-lease", serverFlags{DefaultLease: 7}, []step{
		openConn("c1"),
		send("c1", "sl", "s", "0 2"), send("c1", "se", "s", "2"), send("c1", "sw", "s", "0"),
		send("c1", "sn", "s", "{T1} 3"), send("c1", "sn", "s", "{T1}"), send("c1", "sl", "t", "0 2 3"),
		send("c1", "se", "u", "2 4"), send("c1", "stats", "_", ""),
	}},

	// Two-phase tickets (§6.3, §6.4).
	{"two-phase/acquired-then-wait", serverFlags{}, []step{
		openConn("c1"),
		send("c1", "e", "a", ""), send("c1", "w", "a", "0"), send("c1", "w", "a", "0"),
		send("c1", "se", "s", "2 10"), sendBlocking("c1", "sw", "s", "5", 5*sec),
		send("c1", "se", "s", "2"), send("c1", "se", "s", "2"), send("c1", "stats", "_", ""),
		send("c1", "sw", "s", "0"), send("c1", "se", "s", "2"), send("c1", "sw", "s", "0"),
		send("c1", "stats", "_", ""),
	}},
	{"two-phase/wait-zero-withdraws", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "l", "a", "0"), send("c2", "e", "a", ""), send("c3", "e", "a", ""),
		send("c2", "w", "a", "0"), send("c1", "stats", "_", ""), send("c1", "r", "a", "{T1}"),
		send("c2", "w", "a", "0"), send("c1", "stats", "_", ""), send("c3", "w", "a", "0"),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"), send("c2", "se", "s", "2"),
		send("c2", "sw", "s", "0"), send("c1", "sr", "s", "{T3}"), send("c1", "stats", "_", ""),
	}},
	{"two-phase/acquired-semaphore-expired-before-sweep", serverFlags{SweepInterval: 60}, []step{
		openConn("c1"), openConn("c2"),
		send("c1", "se", "s", "2 1"), send("c1", "sl", "s", "0 2"), send("c2", "se", "s", "2"),
		sleepFor(1500 * ms), send("c2", "stats", "_", ""), sendBlocking("c1", "sw", "s", "5", 5*sec),
		send("c1", "sw", "s", "0"), send("c2", "stats", "_", ""), send("c2", "sw", "s", "0"),
		send("c1", "sr", "s", "{T1}"),
	}},
	{"two-phase/enqueue-error-order", serverFlags{MaxWaiters: 1}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"), send("c2", "se", "s", "2"),
		send("c2", "se", "s", "3"), send("c2", "e", "s", ""), send("c2", "se", "s", "2"),
		send("c3", "se", "s", "2"), send("c3", "sw", "s", "0"), send("c3", "se", "s", "3"),
		send("c3", "sw", "s", "0"), send("c3", "se", "t", "0"), send("c3", "sw", "t", "0"),
		send("c1", "stats", "_", ""), send("c2", "sw", "s", "0"), send("c3", "se", "s", "2"),
		send("c1", "stats", "_", ""),
	}},
	{"two-phase/renew-or-release-before-wait", serverFlags{}, []step{
		openConn("c1"),
		send("c1", "e", "a", "5"), send("c1", "n", "a", "{T1} 20"), send("c1", "stats", "_", ""),
		send("c1", "w", "a", "0"), send("c1", "stats", "_", ""),
		send("c1", "se", "s", "2 5"), send("c1", "sn", "s", "{T2}"), send("c1", "sw", "s", "0"),
		send("c1", "se", "s", "2 6"), send("c1", "sr", "s", "{T3}"), send("c1", "se", "s", "2 7"),
		send("c1", "sw", "s", "0"), send("c1", "stats", "_", ""),
	}},
	// A connection queued behind its own slots: its close must drop its
	// waiters before its slots go to the next in line.
	{"two-phase/queued-behind-own-slots-then-disconnect", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"), send("c1", "se", "s", "2"),
		send("c2", "se", "s", "2"), send("c1", "l", "a", "0"), send("c1", "e", "a", ""),
		send("c2", "e", "a", ""), send("c3", "stats", "_", ""), closeConn("c1"),
		send("c3", "stats", "_", ""), send("c2", "sw", "s", "0"), send("c2", "w", "a", "0"),
		send("c3", "stats", "_", ""),
	}},
	{"two-phase/queued-behind-own-slots-without-auto-release", serverFlags{NoAutoRelease: true}, []step{
		openConn("c1"), openConn("c2"),
		send("c1", "sl", "s", "0 2 1"), send("c1", "sl", "s", "0 2 30"), send("c1", "se", "s", "2 1"),
		send("c2", "se", "s", "2"), closeConn("c1"), send("c2", "stats", "_", ""),
		sendBlocking("c2", "sw", "s", "5", 5*sec), sleepFor(4500 * ms), send("c2", "stats", "_", ""),
	}},
	{"two-phase/wait-times-out-then-requeue", serverFlags{}, []step{
		openConn("c1"), openConn("c2"),
		send("c1", "l", "a", "0"), send("c2", "e", "a", "5"), sendBlocking("c2", "w", "a", "1", sec),
		sleepFor(1500 * ms), send("c2", "w", "a", "0"), send("c1", "stats", "_", ""),
		send("c2", "e", "a", "5"), send("c1", "r", "a", "{T1}"), send("c1", "stats", "_", ""),
		send("c2", "w", "a", "0"),
	}},
	{"two-phase/wait-unknown-and-cross-type", serverFlags{}, []step{
		openConn("c1"), openConn("c2"),
		send("c1", "w", "nokey", "0"), send("c1", "sw", "nokey", "5"),
		send("c1", "e", "a", ""), send("c2", "w", "a", "0"), send("c1", "w", "a", ""),
		send("c1", "w", "a", "x"), send("c1", "sw", "a", "0"), send("c1", "w", "a", "0"),
		send("c1", "se", "s", "2"), send("c1", "w", "s", "0"), send("c1", "sw", "s", "0"),
		send("c1", "e", "s", ""), send("c1", "se", "a", "1"), send("c1", "stats", "_", ""),
	}},
	{"two-phase/granted-while-queued", serverFlags{}, []step{
		openConn("c1"), openConn("c2"),
		send("c1", "l", "a", "0"), send("c2", "e", "a", "5"), send("c1", "r", "a", "{T1}"),
		send("c1", "stats", "_", ""), send("c2", "e", "a", ""), sleepFor(1 * sec),
		send("c2", "w", "a", "0"), send("c1", "stats", "_", ""),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"), send("c2", "se", "s", "2 6"),
		sendBlocking("c2", "sw", "s", "5", 5*sec), send("c1", "sr", "s", "{T4}"),
		send("c1", "stats", "_", ""),
	}},
	{"two-phase/disconnect-while-queued", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "l", "a", "0"), send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"),
		send("c2", "e", "a", ""), send("c2", "se", "s", "2"), send("c3", "e", "a", ""),
		send("c1", "stats", "_", ""), closeConn("c2"), send("c1", "stats", "_", ""),
		send("c1", "r", "a", "{T1}"), send("c1", "sr", "s", "{T2}"), send("c1", "stats", "_", ""),
		send("c3", "w", "a", "0"),
	}},
	{"two-phase/disconnect-after-grant-before-wait", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"),
		send("c2", "se", "s", "2"), send("c3", "se", "s", "2"),
		send("c1", "sr", "s", "{T1}"), send("c1", "stats", "_", ""), closeConn("c2"),
		send("c1", "stats", "_", ""), send("c3", "sw", "s", "0"), send("c1", "stats", "_", ""),
	}},
	{"two-phase/disconnect-queued-without-auto-release", serverFlags{NoAutoRelease: true}, []step{
		openConn("c1"), openConn("c2"),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"), send("c2", "se", "s", "2 2"),
		closeConn("c2"), send("c1", "sr", "s", "{T1}"), send("c1", "stats", "_", ""),
		sleepFor(3500 * ms), send("c1", "stats", "_", ""), send("c1", "sl", "s", "0 2"),
		send("c1", "sl", "s", "0 2"),
	}},

	// Graceful shutdown (§8j): v1.10 fails a blocked sl and a blocking sw at
	// once; se and a sw whose se answered acquired do not look at the
	// drain. (A sw 0 or try-lock on a busy key answers timeout or error at
	// random during the drain: not scripted.)
	{"sem/shutdown-drain", serverFlags{ShutdownTimeout: 3}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "sl", "s", "0 2"), send("c1", "sl", "s", "0 2"),
		sendBlocking("c2", "sl", "s", "10 2", 10*sec), send("c3", "se", "s", "2"),
		shutdown(), sleepFor(300 * ms), sendBlocking("c3", "sw", "s", "5", 5*sec),
		send("c3", "sw", "s", "0"), send("c3", "se", "t", "2"), sendBlocking("c3", "sw", "t", "5", 5*sec),
		send("c1", "sr", "s", "{T1}"), send("c1", "sl", "s", "0 2"), send("c3", "stats", "_", ""),
		sleepFor(3 * sec),
	}},

	// A lock and a semaphore on one key name: one resource on v1.10.
	{"mix/limit-1-semaphore-is-the-lock", serverFlags{}, []step{
		openConn("c1"), openConn("c2"),
		send("c1", "sl", "a", "0 1"), send("c1", "stats", "_", ""), send("c2", "l", "a", "0"),
		send("c2", "e", "a", ""), send("c1", "r", "a", "{T1}"), send("c2", "w", "a", "0"),
		send("c1", "sn", "a", "{T2}"), send("c2", "sr", "a", "{T2}"), send("c2", "sl", "a", "0 2"),
		send("c1", "stats", "_", ""),
	}},
	{"mix/lock-key-then-semaphore", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"),
		send("c1", "l", "a", "0"), send("c2", "sl", "a", "0 2"), send("c2", "se", "a", "2"),
		send("c2", "se", "a", "1"), send("c3", "sl", "a", "0 1"), send("c1", "stats", "_", ""),
		send("c1", "sr", "a", "{T1}"), send("c2", "sw", "a", "0"), send("c1", "n", "a", "{T2}"),
		send("c1", "stats", "_", ""),
	}},
	// A connection's blocking l queues behind its own e: the slot goes to
	// the e, and the l times out.
	{"mix/blocking-acquire-behind-own-enqueue", serverFlags{}, []step{
		openConn("c1"), openConn("c2"),
		send("c2", "l", "a", "0"), send("c1", "e", "a", "9"), sendBlocking("c1", "sl", "a", "2 1", 2*sec),
		send("c2", "stats", "_", ""), send("c2", "r", "a", "{T1}"), send("c2", "stats", "_", ""),
		sleepFor(2500 * ms), send("c2", "stats", "_", ""), send("c1", "w", "a", "0"),
		send("c2", "stats", "_", ""),
	}},
	{"mix/fifo-across-lock-and-semaphore-waiters", serverFlags{}, []step{
		openConn("c1"), openConn("c2"), openConn("c3"), openConn("c4"),
		send("c1", "l", "a", "0"), sendBlocking("c2", "sl", "a", "5 1", 5*sec), send("c3", "se", "a", "1"),
		sendBlocking("c4", "l", "a", "5", 5*sec), send("c1", "stats", "_", ""),
		send("c1", "r", "a", "{T1}"), send("c2", "sr", "a", "{T2}"), send("c3", "w", "a", "0"),
		send("c3", "r", "a", "{T3}"), send("c1", "stats", "_", ""),
	}},
}
