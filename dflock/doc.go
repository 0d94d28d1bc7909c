// Package dflock is a client for dflockd, a distributed lock server: locks,
// counting semaphores and two-phase (enqueue, then wait) acquires, with
// leases that are renewed automatically and whose loss is reported.
//
// Create one *Client per process with New, pointing it at every server of
// the fleet, and share it between all goroutines:
//
//	c, err := dflock.New([]string{"10.0.0.1:6388", "10.0.0.2:6388"})
//	if err != nil { ... }
//	defer c.Close()
//
//	l, err := c.Lock(ctx, "orders:42", dflock.AcquireTimeout(10*time.Second))
//	if err != nil { ... }
//	defer l.Release(context.Background())
//
// # Connections
//
// The server answers requests on a connection one at a time, a blocking
// acquire occupies its connection until it is granted, and a lease dies
// with the connection that acquired it. The Client therefore keeps, per
// server:
//
//   - a control lane: a few long-lived connections shared by every
//     goroutine, whose requests are pipelined (coalesced into few writes,
//     answers matched in order). Try-acquires, renewals and releases go
//     here, so an uncontended Lock costs one round trip and no connection of
//     its own, and a Client holding thousands of leases still has only a
//     handful of connections.
//   - a wait pool: connections for blocking acquires and two-phase tickets.
//     Lock first tries the control lane; only if the key is held (or was
//     found held within the last second or so) does it take a wait-pool
//     connection and wait there. A lease granted after waiting stays on
//     that connection (pinned) until released or lost.
//     Cancelling a blocked wait closes its connection, which is how the
//     server withdraws the waiter (one whose deadline passed keeps it: the
//     server's own timeout ends the wait within a second, and the answer
//     is read in the background); a queued two-phase ticket is given up by
//     trying its place instead (Ticket.Cancel), and keeps its connection.
//
// Connections are dialled lazily under the caller's context (bounded by
// WithDialTimeout), authenticated (WithAuthToken), optionally wrapped in TLS
// (WithTLS), and kept alive below the server's idle timeout (WithKeepAlive).
// No call blocks on another goroutine's slow server.
//
// # Leases and loss
//
// Every lock and semaphore slot is a lease with a TTL (LeaseTTL,
// WithLeaseTTL, or the server's default). One scheduler per Client renews
// all of them — no goroutine per lock — sending the renewals due together
// as one write per connection, at half the TTL and at least every
// keepalive interval.
//
// The Client decides when a lease is lost, whatever the network does: when
// the server refuses a renewal, when the connection that acquired it
// breaks, or when no renewal was confirmed within the TTL (or the servers'
// read timeout, if shorter: the server closes a silent connection) minus a
// safety margin, measured from when the last confirmed request was sent. Loss
// closes the Done channel of the Lock (or Semaphore), makes its Err match
// ErrLockLost, cancels its Context with that cause, and calls
// Hooks.OnLeaseLost. Because the deadline is taken from send times, a lease
// lost by the clock reports loss before the server can have handed it to
// someone else, if the process is running then. A broken connection is the
// exception: the server releases its leases as soon as it sees the break
// (unless auto-release is off), and the client learns of it only when its
// own socket reports it — about a millisecond later on a healthy host,
// longer under load — so another client may hold the key briefly while
// this one still does. A process frozen or starved of CPU past the deadline
// (a GC pause, SIGSTOP, a paused VM) reports the loss when it runs again:
// Err, Done and Context (and the context WithLock and WithSemaphore give
// their function) compare the deadline with the clock themselves, without
// waiting for the renewal scheduler, so a check made right after resuming
// sees it. Work that must not outlive the lock should watch
// Context (WithLock and WithSemaphore do this for you), and a fencing
// number (Lock.Fence, on servers that issue one) lets the resource itself
// refuse the stale holder.
//
// Release ends a lease; it is idempotent. A grant that arrives for a caller
// who gave up (its context ended) is released at once: an acquire that
// returns an error never leaves a lock held — with three exceptions on
// servers running with --auto-release-on-disconnect=false, each a grant
// whose reply the client never reads, so that it cannot know the token the
// release needs: a grant still on its way when a blocking wait's context is
// cancelled, on a server before v1.14 or a WithDialer connection that
// cannot be half-closed, is lost with the connection the client closes to
// withdraw the wait (elsewhere the client shuts only the connection's
// sending side, reads on until the server closes its side, at most 2 s,
// and releases a grant that crossed the withdrawal; a wait that timed out
// has its answer, due within a second, read and released on any server);
// a grant on its way when the connection
// breaks (a network fault, a proxy or the server cutting it) is lost with
// the connection, the acquire failing with ErrServerUnavailable; and a
// grant made by a server resuming from a pause of more than 2 s (stopped,
// a frozen VM) to a blocking wait cancelled during the pause: the client
// reads the withdrawn connection for 2 s, then closes it. Such a grant
// stays held by nobody until its lease expires (docs/leases.md). (A wait
// that timed out, or an Enqueue, whose answer is overdue keeps its
// connection open for that answer for up to a minute, as below.) The
// client's own cut is no such break: when the keepalive gives up on a
// server that answered nothing for 2×KeepAlive, the acquire fails at once
// but the socket stays open for up to a minute, so that a grant the server
// makes when it resumes is read and released.
//
// # Keys
//
// A key is 1 to 256 bytes with no space, TAB, CR, LF or NUL in it (any
// other key is refused with an *ArgError naming it); the server compares
// keys byte for byte. Use UTF-8: keys that are not valid UTF-8 lock as well,
// but the server's stats (Client.Stats) shows them with U+FFFD in place of
// the invalid bytes, so they cannot be told apart there, and the official
// clients cannot send them. Locks and semaphores have separate keys on
// dflockd v1.14 and later, the same ones before.
//
// # Sharding
//
// Each key lives on exactly one server, chosen by the sharding strategy:
// shard.Ring (consistent hashing, the default) or shard.CRC32 (the placement
// of the official dflockd clients, for fleets shared with them); see
// WithSharding and package shard. Every process that shares keys must use
// the same strategy and the same server list.
//
// A key is never re-routed because its server is down: operations on it fail
// fast with an error matching ErrServerUnavailable until the server is back
// (the Client re-dials in the background). Sending the key to another server
// would let a second client take a lock the first may still hold.
//
// # Signals
//
// On signal-era servers (dflockd v1.11 to v1.16) Listen subscribes to
// NATS-style patterns ("orders.*", "orders.>"), optionally as a member of a
// queue group, and Emit publishes to a channel. Delivery is at most once:
// each subscription has a bounded buffer whose overflow is dropped and
// counted (Subscription.Dropped) so that a slow consumer never stalls the
// connection, and after a listener connection is re-established the
// subscription reports the gap (ErrSignalGap). Listener connections are
// separate from the connections that own leases. Against servers without
// signals, Listen and Emit return an error matching ErrNotSupported. See
// docs/signals.md.
//
// # Errors
//
// Errors match sentinels with errors.Is (ErrNotAcquired, ErrTimeout,
// ErrLockLost, ErrClosed, ErrServerUnavailable, ErrMaxLocks, ...) and carry
// detail in an *Error (operation, key, server, reply). When a context ends an
// operation, the error matches both the context's error and the domain
// meaning (for an acquire, ErrNotAcquired; so does an acquire that
// Client.Close ends, with ErrClosed), and, if the context was cancelled
// with a cause (context.WithCancelCause, WithTimeoutCause), that cause
// too. Invalid input is rejected before
// anything is sent, with an *ArgError naming the argument.
//
// A context is called, not only watched: a call whose context's methods
// panic on the caller's goroutine (a typed nil pointer does, at the first
// call) or call runtime.Goexit there passes the panic on unchanged and
// leaves nothing behind, neither a lease held for nobody nor a connection,
// ticket or Close waiting for it (see docs/architecture.md). A dial made
// for a call on a goroutine of the Client's (a wait-pool connection, a
// Stats query) also calls the context (Deadline, Value): a panic there
// ends the program, and a Goexit there can leave Close waiting for that
// dial. Dialers and connections given to WithDialer, and WithTLS's
// callbacks, run on the Client's goroutines (but a long Emit's dial, on
// the Emit's): they must not panic. Neither they nor a context's methods
// may call Client.Close, which waits for the call in progress that runs
// them (hooks, a Tracer, a log handler and WithLock's fn may: see Hooks).
//
// # Server versions
//
// The Client works with dflockd v1.10 through v2.x. With v2.1+ servers,
// WithFencing makes Lock.Fence return the fencing number carried in tokens.
// What changes with the version, as far as callers can tell: signals
// (v1.11 to v1.16 only: ErrNotSupported elsewhere); locks and semaphores of
// one key are one resource before v1.14 and independent after (see
// Client.Semaphore); a server shutting down answers ErrDraining from v1.16
// on, while older ones serve until they close; servers before v1.15 cap
// every request line at 256 bytes (long Emit payloads and auth tokens).
// docs/protocol.md lists the rest. The version is learnt per connection,
// so a Client follows its servers through upgrades and rollbacks without a
// restart; docs/sharding.md ("Upgrading servers") says what callers see
// meanwhile, and in which order to turn WithFencing on.
package dflock
