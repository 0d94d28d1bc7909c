// Package dflockotel reports a dflock Client's work to OpenTelemetry:
// latency histograms and spans for acquires and releases, and the Client's
// local figures (leases held, connections by role, losses, renewals, ...)
// as observable instruments.
//
// It is a module of its own, so that the dflock SDK itself depends on no
// OpenTelemetry package; only programs that import dflockotel do.
//
// # Use
//
// Create one Instrumentation, give its Options to every dflock.New, and
// Observe every Client:
//
//	in, err := dflockotel.New() // the global MeterProvider and TracerProvider
//	...
//	c, err := dflock.New(servers, append(in.Options(), dflock.WithLeaseTTL(30*time.Second))...)
//	...
//	stop, err := in.Observe(c)
//	...
//	defer stop()
//
// Options installs a dflock.Tracer, which runs on the calling goroutine as
// each acquire and release starts and ends, and dflock.Hooks, which run on
// the Client's callback goroutine. The observed instruments are read from
// Client.Snapshot, which does no I/O, by one callback at each collection.
// Counts are therefore exact even when the Client drops hook calls under
// load (dflock.client.callback.dropped says when it does), and a stopped
// Client's counts stay in the counters, which never go down.
//
// # Metrics
//
// Every name is in the dflock.client namespace; durations are in seconds.
// Measurements about a server carry server.address and server.port, and
// every measurement carries the attributes of WithAttributes. Keys never
// appear on metrics: each key would be a time series of its own.
//
// Recorded as calls end (from the Tracer and the Hooks):
//
//	dflock.client.acquire.duration          histogram  s            whole acquire call
//	dflock.client.acquire.wait.duration     histogram  s            time on the wait path (see below)
//	dflock.client.renewal.duration          histogram  s            round trip of an answered renewal batch
//	dflock.client.renewal.batch.size        histogram  {renewal}    renewals per batch
//	dflock.client.connection.dial.duration  histogram  s            dial, TLS and auth
//	dflock.client.connection.broken         counter    {connection} connections broken or destroyed (not by Close)
//
// The wait duration is the time on the wait path: getting a wait-pool
// connection (a dial, or, at WithMaxConnsPerServer, one coming free) and
// waiting in the server's queue on it; a pool at its cap therefore shows
// as waiting too (dflock.client.connection.count tells the two apart).
//
// The acquire histograms carry dflock.operation.name (lock, trylock,
// semaphore, trysemaphore, enqueue, wait), dflock.acquire.outcome
// (granted, timed_out, refused, cancelled, failed) and
// dflock.acquire.path (lane, waitpool, none); an Enqueue that joined the
// queue is granted (it holds its place) with path none. The wait histogram
// has a measurement for every call that waited on a wait-pool connection.
// WithLock and WithSemaphore are measured by their inner acquire, so
// nothing is counted twice. The dial histogram carries
// dflock.connection.role (lane, wait, listener, query) and
// dflock.dial.outcome (success, failure). A failed acquire or dial also
// carries error.type (see Errors below).
//
// Observed from Client.Snapshot (see Observe):
//
//	dflock.client.lease.count          updowncounter  {lease}       leases held now
//	dflock.client.connection.count     updowncounter  {connection}  open connections by role and state
//	dflock.client.acquire.waiting      updowncounter  {acquire}     acquires on the wait path now (as the wait duration above)
//	dflock.client.server.up            gauge          1             1 while calls to the server are not failing fast
//	dflock.client.server.auth_refused  gauge          1             1 while the server refuses the auth token
//	dflock.client.lease.losses         counter        {lease}       leases lost while held or found lost at release
//	dflock.client.renewals             counter        {renewal}     by dflock.renewal.outcome: renewed, refused, unanswered
//	dflock.client.connection.dials     counter        {connection}  by dflock.dial.outcome: success, failure
//	dflock.client.signal.dropped       counter        {signal}      signals dropped (slow subscriptions; a leaving group member's)
//	dflock.client.signal.gaps          counter        {gap}         gaps reported to subscriptions
//	dflock.client.callback.dropped     counter        {callback}    log records and hook calls dropped
//
// dflock.client.connection.count carries dflock.connection.role: lane
// (control lane), wait (wait pool) or listener (signals); wait-pool
// connections also carry dflock.connection.state: idle, in_use (a blocking
// acquire or a queued ticket waits on it) or pinned (it owns a lease). A
// connection given up on but kept open for the replies to what it had
// written (dflock.ConnCounts.Lingering) has no role left and carries only
// dflock.connection.state: lingering. That is one the keepalive gave up
// on, or a ticket's whose withdrawal went unanswered (at most a minute),
// and a wait-pool connection half-closed to withdraw a cancelled or
// timed-out wait (at most 2 s), so every wait given up shows there
// briefly. The
// last three counters carry no server attributes. dflock.client.server.up
// is dflock.ServerSnapshot.Up: 0 while the server is known to be down and
// no lane connection to it is healthy (calls fail fast with
// ErrServerUnavailable); a failed dial while a lane connection lives
// leaves it 1, though calls that need a new connection fail fast until
// the next dial succeeds. Being a gauge, it does not add up across Clients
// observed by one Instrumentation: it is 1 if any of them has the server
// up. dflock.client.server.auth_refused is dflock.ServerSnapshot.AuthRefused:
// 1 from the moment the server refuses a dial's auth token until a dial
// succeeds (server.up stays 1: the server answers, and refused dials are
// held back, so the dial-failure counter grows only slowly); 1 if any
// observed Client's dials are refused. dflock.client.connection.broken does
// not count the connections Client.Close closes.
//
// # Spans
//
// Every acquire is a span of kind client named after the method called:
// dflock.Lock, dflock.TryLock, dflock.Semaphore, dflock.TrySemaphore,
// dflock.Enqueue, dflock.EnqueueSemaphore, dflock.Ticket.Wait and
// dflock.SemaphoreTicket.Wait. It carries server.address, server.port,
// dflock.operation.name, dflock.key (see WithKeyAttribute),
// dflock.semaphore.limit for semaphores and, when it ends,
// dflock.acquire.outcome, dflock.acquire.path,
// dflock.acquire.wait.duration (seconds, when it waited) and
// dflock.lease.ttl (seconds, when granted).
//
// A span's status is Error when the call failed: timed out, cancelled,
// refused by a server error (a limit, a limit mismatch), granted a lease
// that lapsed before the caller had it (dflock.ErrLeaseExpired) or
// failed. A try
// that finds the key held (TryLock, TrySemaphore returning
// dflock.ErrNotAcquired, also when the server answers it with its waiter
// cap, error_max_waiters) is an answer, not a failure: its status stays
// Unset and its outcome attribute says refused.
//
// WithLock and WithSemaphore get one span of kind internal (dflock.WithLock,
// dflock.WithSemaphore) covering the acquire, the function and the release;
// the function's context carries it, and the acquire and release are
// client spans beneath it. Its status is Error when the function returns an
// error (or panics) or the lease is lost meanwhile.
//
// A release is a span of its own, dflock.Lock.Release or
// dflock.Semaphore.Release, a child of the context given to Release. A
// lease lives for as long as the program holds it, often longer than a
// trace is worth keeping open, so no span covers the time a lease is held.
// Tokens never appear on spans: whoever has one can release the lease.
//
// # Errors
//
// Every acquire or release whose span's status is Error, the acquire
// histograms' measurements of those acquires, and every failed dial carry
// OpenTelemetry's error.type: the first of dflock's errors the call's error
// matches, in this order — lock_lost (dflock.ErrLockLost), lease_expired,
// timeout (dflock.ErrTimeout or context.DeadlineExceeded), canceled
// (context.Canceled), closed, ticket_done, invalid_argument, auth,
// server_unavailable, connection_broken (wire.ErrConnBroken: a connection
// the client broke itself), draining, max_locks, max_waiters,
// limit_mismatch, not_supported, refused and not_acquired, each the
// error's name in lower case with an underscore between words. Any other
// error, such as the one the function given to WithLock or WithSemaphore
// returns, is named by its Go type, as semconv.ErrorType names it.
// Calls that succeeded, and tries that found the key held, carry none.
package dflockotel
