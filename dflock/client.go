package dflock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/dflock-sdk/go/pool"
	"github.com/dflock-sdk/go/renew"
	"github.com/dflock-sdk/go/shard"
	"github.com/dflock-sdk/go/wire"
)

// Client is a handle to a set of dflockd servers. It is safe for concurrent
// use, cheap to share, and meant to be created once per process: every
// goroutine's locks go through its per-server connection pools and its one
// renewal scheduler. Close it when done.
type Client struct {
	opts    options
	log     *slog.Logger
	servers []*server
	place   shard.Placement
	sched   *renew.Scheduler

	// ctx is cancelled (cause ErrClosed) by Close; every operation's
	// context is merged with it so that Close ends blocked calls.
	ctx    context.Context
	cancel context.CancelCauseFunc

	inflight atomic.Int64  // operations in progress (see enter/leave)
	closing  atomic.Bool   // set by Close: new operations fail with ErrClosed
	drained  chan struct{} // poked when inflight drops to zero while closing
	closeRun atomic.Bool   // the first Close runs close; the others wait
	closed   chan struct{} // closed when Close has finished
	// settled is closed once Close has given back every held lease and
	// queued ticket: their outcomes are final. Release and Cancel wait for
	// it, not for closed, which waits for the callback goroutine: a hook
	// that releases would otherwise wait for itself.
	settled chan struct{}
	// unhooked is closed when Close has done everything but wait for the
	// queued callbacks: a hook that calls Close waits for that much only.
	unhooked chan struct{}
	bg       sync.WaitGroup
	jobs     *bgJobs // best-effort work that outlives its caller (aside.go)

	tickets ticketSet // queued two-phase tickets (they hold a connection)
	signals signalHub // signal subscriptions and listener connections (signal_hub.go, signal_listener.go)
	disp    *dispatcher

	stats clientCounters
}

// server is one dflockd server of the Client.
type server struct {
	addr  string
	pool  *pool.Pool
	obs   serverObs     // per-server figures of Snapshot
	hot   hotKeys       // keys recently found held: Lock skips the lane try for them
	aside asideReleases // releases of grants whose own connection is gone
}

type clientCounters struct {
	acquired   atomic.Int64
	laneGrants atomic.Int64
	waitGrants atomic.Int64
	contended  atomic.Int64
	sigDropped atomic.Int64 // see Snapshot.SignalsDropped
	sigGaps    atomic.Int64 // gaps reported to subscriptions
}

// New returns a Client for servers ("host:port" each; nil or empty means
// DefaultServer). Keys are placed on servers by the sharding strategy (see
// WithSharding), so every process sharing keys must list the same servers.
//
// New validates its arguments but dials nothing: connections are made on
// first use, under the caller's context. A server listed twice (host names
// compared without case or a trailing dot, IP addresses in canonical form;
// ports are plain decimal, "06388" is refused) is an *ArgError. Two names
// of one host ("localhost" and "127.0.0.1") are not told apart.
func New(servers []string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.err != nil {
		return nil, o.err
	}
	if len(servers) == 0 {
		servers = []string{DefaultServer}
	}
	addrs := make([]string, len(servers))
	seen := make(map[string]int, len(servers))
	for i, a := range servers {
		if err := validateAddr(a); err != nil {
			if ae, ok := err.(*ArgError); ok && len(servers) > 1 {
				ae.Reason += " (servers[" + strconv.Itoa(i) + "])"
			}
			return nil, err
		}
		k := sameServerKey(a)
		if j, dup := seen[k]; dup {
			return nil, &ArgError{Arg: "server", Value: a, Reason: "listed twice (servers[" + strconv.Itoa(j) + "] and servers[" + strconv.Itoa(i) + "])"}
		}
		seen[k] = i
		addrs[i] = a
	}
	place, err := o.strategy.Place(addrs)
	if err != nil {
		// Names the option: New has already checked the list itself, so what
		// is left to refuse is the strategy's own parameters.
		return nil, &ArgError{Arg: "sharding", Reason: trimPrefix(err.Error())}
	}
	if place == nil {
		return nil, &ArgError{Arg: "sharding", Reason: "the strategy returned no placement"}
	}
	disp := newDispatcher()
	log := slog.New(slog.DiscardHandler)
	if o.logger != nil {
		log = slog.New(newAsyncHandler(disp, o.logger.Handler()))
	}
	// The handler's WithAttrs is the caller's code: run here, before the
	// scheduler and the pools start, with only the dispatcher to stop if
	// it panics (or calls runtime.Goexit).
	srvLogs := make([]*slog.Logger, len(addrs))
	func() {
		made := false
		defer func() {
			if !made {
				disp.stop(o.callbackWait)
			}
		}()
		for i, a := range addrs {
			srvLogs[i] = log.With("server", a)
		}
		made = true
	}()

	c := &Client{
		opts:     o,
		log:      log,
		place:    place,
		disp:     disp,
		drained:  make(chan struct{}, 1),
		closed:   make(chan struct{}),
		settled:  make(chan struct{}),
		unhooked: make(chan struct{}),
		jobs:     newBGJobs(),
	}
	c.ctx, c.cancel = context.WithCancelCause(context.Background())
	rc := renew.Config{Ratio: o.renewRatio, KeepAlive: o.keepAlive, Clock: o.clock, ReadTimeout: o.readTimeout}
	if o.hooks.OnRenewalBatch != nil {
		// Only for the hook: without it the scheduler keeps no per-batch
		// tally on the readers (Snapshot reads the Counters).
		rc.OnBatch = c.onRenewalBatch
	}
	rc.OnReleaseLost = func(counters *renew.Counters, req wire.Request) {
		// Sent again elsewhere, as every release cut by a broken
		// connection is (a server with auto-release off keeps the lease).
		if srv := c.serverOf(counters); srv != nil {
			c.releaseAside(srv, req)
		}
	}
	c.sched = renew.New(rc)
	for i, a := range addrs {
		srv := &server{addr: a}
		p, err := pool.New(pool.Config{
			Addr:            a,
			Dial:            o.dial,
			TLS:             o.tls,
			AuthToken:       o.authToken,
			DialTimeout:     o.dialTimeout,
			KeepAlive:       o.keepAlive,
			MaxConns:        int32(min(o.maxConns, 1<<30)),
			LaneConns:       o.laneConns,
			MaxIdleConns:    o.poolMaxIdle(),
			MaxConnIdleTime: o.maxIdleTime,
			Logger:          srvLogs[i],
			OnConnBroken:    func(owner pool.Owner, err error) { c.onConnBroken(a, owner, err) },
			OnDial:          func(role string, d time.Duration, err error) { c.onDial(a, role, d, err) },
			OnReleaseLost:   func(req wire.Request) { c.releaseAside(srv, req) },
			Lifetime:        c.ctx,
		})
		if err != nil {
			for _, s := range c.servers {
				s.pool.Close()
			}
			c.sched.Close()
			c.cancel(ErrClosed)
			c.disp.stop(c.opts.callbackWait)
			return nil, err
		}
		srv.pool = p
		c.servers = append(c.servers, srv)
	}
	return c, nil
}

// validateAddr checks a "host:port" server address.
func validateAddr(a string) error {
	if a == "" {
		return &ArgError{Arg: "server", Reason: "empty, want host:port"}
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return &ArgError{Arg: "server", Value: a, Reason: "not host:port: " + trimAddrErr(err)}
	}
	if strings.IndexFunc(host, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return &ArgError{Arg: "server", Value: a, Reason: "host contains whitespace or control characters"}
	}
	// Digits only, without a sign or a leading zero: "06388" and "+6388"
	// dial port 6388 too, and would pass the duplicate check as another
	// server.
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
		return &ArgError{Arg: "server", Value: a, Reason: "port must be a number from 1 to 65535, without sign or leading zeros"}
	}
	return nil
}

// sameServerKey is the spelling of a valid address that New's duplicate
// check compares: two addresses with the same key dial the same server, and
// listed twice they would make two pools and two shares of the keys. Host
// names are case-insensitive and a trailing dot (the root) changes nothing;
// an IP literal has many spellings ("[::1]", "[0:0:0:0:0:0:0:1]"), compared
// in canonical form. An IPv6 zone is an interface name, which is
// case-sensitive on Linux, and keeps its case. validateAddr already left
// one spelling per port number.
func sameServerKey(a string) string {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return a
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return net.JoinHostPort(ip.Unmap().String(), port)
	}
	return net.JoinHostPort(strings.TrimSuffix(strings.ToLower(host), "."), port)
}

func trimAddrErr(err error) string {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return ae.Err
	}
	return err.Error()
}

// Servers returns the server addresses, in the order given to New.
func (c *Client) Servers() []string {
	out := make([]string, len(c.servers))
	for i, s := range c.servers {
		out[i] = s.addr
	}
	return out
}

// ServerFor returns the address of the server that owns key, or "" if the
// sharding strategy placed it outside the server list (see WithSharding).
func (c *Client) ServerFor(key string) string {
	srv, err := c.route(key)
	if err != nil {
		return ""
	}
	return srv.addr
}

// route returns key's server. A custom shard.Strategy may return any index;
// one outside the server list is an error, never a panic. route runs before
// any accounting of the operation is raised, so that a panic inside a
// custom Placement leaves nothing behind for Close to wait on.
func (c *Client) route(key string) (*server, error) {
	if len(c.servers) == 1 {
		return c.servers[0], nil
	}
	i := c.place.Server(key)
	if i < 0 || i >= len(c.servers) {
		return nil, &ArgError{Arg: "sharding", Reason: fmt.Sprintf("the strategy placed the key on server index %d, outside the %d servers", i, len(c.servers))}
	}
	return c.servers[i], nil
}

// begin starts an operation on key's server: it enters the Client
// (ErrClosed once Close has begun), fails fast if the server is known to be
// down (never re-routing the key), and derives the operation context, which
// Close also ends. On success the caller must call cancel and then c.leave.
func (c *Client) begin(ctx context.Context, op, key string) (srv *server, opCtx context.Context, cancel context.CancelFunc, err error) {
	srv, err = c.enterServer(op, key)
	if err != nil {
		return nil, nil, nil, err
	}
	// Deriving calls ctx's methods, the caller's code: one that panics
	// (a typed nil) or calls runtime.Goexit must not leave the operation
	// counted, or Close would wait for it forever.
	derived := false
	defer func() {
		if !derived {
			c.leave()
		}
	}()
	opCtx, cancel = c.opContext(ctx)
	derived = true
	return srv, opCtx, cancel, nil
}

// enterServer is begin without the operation context, for an operation
// that derives it only if it needs it; on success the caller must call
// c.leave.
func (c *Client) enterServer(op, key string) (*server, error) {
	srv, err := c.route(key)
	if err != nil {
		return nil, &Error{Op: op, Key: key, Err: err}
	}
	if !c.enter() {
		return nil, &Error{Op: op, Key: key, Err: ErrClosed}
	}
	if err := srv.pool.Err(); err != nil {
		c.leave()
		return nil, &Error{Op: op, Key: key, Server: srv.addr, Err: err}
	}
	return srv, nil
}

// enter registers an operation; it reports false once Close has begun.
func (c *Client) enter() bool {
	c.inflight.Add(1)
	if c.closing.Load() {
		c.leave()
		return false
	}
	return true
}

func (c *Client) leave() {
	if c.inflight.Add(-1) == 0 && c.closing.Load() {
		select {
		case c.drained <- struct{}{}:
		default:
		}
	}
}

// opContext merges ctx with the Client's lifetime, so that Close ends the
// operation. It costs nothing for a context that can never be cancelled.
func (c *Client) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Done() == nil {
		return c.ctx, func() {}
	}
	octx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(c.ctx, func() { cancel(ErrClosed) })
	return octx, func() {
		stop()
		cancel(nil)
	}
}

// Close releases every held lease and gives up every queued ticket's place,
// ends every blocked call with ErrClosed, closes every connection and stops
// every goroutine of the Client (but one running a hook or log handler that
// has not returned within DefaultReleaseTimeout: see Hooks). Locks still
// held become released (their Done closes, Err is ErrReleased). The
// releases — with those of grants already being released in the
// background — are bounded together by DefaultReleaseTimeout (and so is
// reading the answers to acquires it interrupted, whose grants it gives
// back), counted from the moment the calls in progress have returned (at
// once, but for a Ticket.Cancel, itself bounded by DefaultReleaseTimeout).
// A server that has not answered by then releases what its connections
// held when they close, unless it runs with auto-release off (then those
// leases stay held until their TTL runs out). Close is idempotent and safe
// to call concurrently; every other call made after it fails with an error
// matching ErrClosed, except Release, which reports how the lease ended,
// Ticket.Cancel and SemaphoreTicket.Cancel, which return nil (Close gave
// the ticket up), and Subscription.Close. A hook may call Close: see Hooks
// for what it waits for then. Close returns nil (the error is there for
// io.Closer): a lease whose release the server refused, no longer holding
// it, is reported lost to Hooks and to its Lock's Release, not here; one
// whose release went unanswered is counted released (Snapshot.Released,
// and its Release returns nil), as the server releases it when the
// connection closes — but for auto-release off, which the Client cannot
// see: Close then logs a warning with their number, per server.
func (c *Client) Close() error {
	// Not a sync.Once: a hook's Close must not wait inside it for a
	// Close under way elsewhere, which waits for the hook.
	if c.closeRun.CompareAndSwap(false, true) {
		c.close()
	}
	if c.disp.onDispatcher() {
		// Called from a hook: a Close elsewhere, or this one, cannot wait
		// for the callbacks, this one among them.
		<-c.unhooked
		return nil
	}
	<-c.closed
	return nil
}

func (c *Client) close() {
	c.closing.Store(true)
	c.cancel(ErrClosed)

	// Wait for operations in progress: they observe the cancelled context
	// promptly. The wake-up cannot be missed. closing is set before the
	// first load of inflight, and the atomics are sequentially consistent:
	// a leave that brings inflight to zero after that store sees closing and
	// leaves a token in drained (or finds one there); one that brought it to
	// zero before the store is seen by the load as zero, unless a later
	// enter raised it again, and that operation's own leave comes after the
	// store. A stale token only costs one more look at inflight.
	for c.inflight.Load() != 0 {
		<-c.drained
	}

	// Everything given back from here on shares one deadline, so that one
	// unreachable server costs Close DefaultReleaseTimeout, not that much
	// per kind of work. It starts after the drain: an operation that held
	// Close up (a Ticket.Cancel against a partitioned server) must not
	// leave the healthy servers' releases no time at all.
	deadline := time.Now().Add(DefaultReleaseTimeout)
	held := c.sched.Close()
	var wg sync.WaitGroup
	wg.Go(func() { c.releaseAll(held, deadline) })
	wg.Go(func() { c.tickets.closeAll(deadline) })
	wg.Go(func() { c.waitReleasesBG(deadline) })
	for _, s := range c.servers {
		// The answers to acquires Close interrupted: a grant among them
		// is released on its lane connection, not left to a closed one.
		wg.Go(func() { s.pool.SettleLanes(deadline) })
	}
	// Subscriptions and listener connections, beside the releases (which
	// need none of them) and before the pools: a Next called now fails
	// with ErrClosed at once, not after a stalled server's release
	// deadline.
	wg.Go(c.signals.close)
	wg.Wait()
	close(c.settled)
	// After the work above, which may send releases aside.
	c.jobs.stop(deadline)
	// Pinned wait-pool connections of held leases are closed by the pool's
	// Close below, after their releases went out; leases lost earlier gave
	// theirs back in their OnLost, which sched.Close waited for.
	for _, s := range c.servers {
		s.pool.Close()
	}
	c.bg.Wait()
	c.log.Debug("dflock: client closed", "released", len(held))
	close(c.unhooked)
	if c.disp.onDispatcher() {
		// Closed from a hook, which the wait for the callbacks cannot
		// wait for on its own goroutine: it waits on another, and a Close
		// not called from a hook returns only after it, as Hooks says.
		go func() {
			c.disp.stop(c.opts.callbackWait)
			close(c.closed)
		}()
		return
	}
	c.disp.stop(c.opts.callbackWait)
	close(c.closed)
}

// waitReleasesBG waits, until deadline, for the answers to releases whose
// callers stopped waiting (c.bg), so that pool.Close does not cut them.
func (c *Client) waitReleasesBG(deadline time.Time) {
	done := make(chan struct{})
	go func() { c.bg.Wait(); close(done) }() // ends at the latest after pool.Close
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// serverOf returns the server whose renewal Counters are counters (every
// lease's Spec.Counters), or nil. Not c.route: a custom Placement is user
// code, and the callers run on connection readers.
func (c *Client) serverOf(counters *renew.Counters) *server {
	for _, srv := range c.servers {
		if &srv.obs.renew == counters {
			return srv
		}
	}
	return nil
}

// releaseAll releases leases the scheduler handed back at Close: one
// pipelined write per owning connection, all bounded together by deadline.
func (c *Client) releaseAll(leases []*renew.Lease, deadline time.Time) {
	if len(leases) == 0 {
		return
	}
	type ownerReleases struct {
		srv     *server // an owner is a connection to one server
		reqs    []wire.Request
		hs      []*held       // per request, its lease's
		lost    []bool        // per request: its lease was lost already (found overdue after the last round)
		counted []atomic.Bool // per request: counted released, or lost
	}
	groups := make(map[renew.Owner]*ownerReleases)
	for _, l := range leases {
		g := groups[l.Owner()]
		if g == nil {
			g = &ownerReleases{srv: c.serverOf(l.Counters())}
			groups[l.Owner()] = g
		}
		g.reqs = append(g.reqs, wire.ReleaseRequest(l.Key(), l.Token(), l.Semaphore()))
		h, _ := l.LossHandler().(*held)
		g.hs = append(g.hs, h)
		g.lost = append(g.lost, errors.Is(l.Err(), renew.ErrLost))
	}
	// Each lease is counted released (or lost) once, when its answer
	// comes, or at the deadline, or when Close gives up on it: counted up
	// front, a refusal would take the count back, and Snapshot's
	// Released would go down, which a metrics backend reads as a reset.
	countReleased := func(g *ownerReleases, i int) {
		if g.srv != nil && g.counted[i].CompareAndSwap(false, true) {
			g.srv.obs.released1()
		}
	}
	defer func() {
		for _, g := range groups {
			for i := range g.reqs {
				countReleased(g, i) // unanswered: the server releases them as the connections close
			}
		}
	}()
	done := make(chan struct{}, len(groups))
	var failed atomic.Int64
	for owner, g := range groups {
		g.counted = make([]atomic.Bool, len(g.reqs))
		for i, lost := range g.lost {
			g.counted[i].Store(lost) // counted lost as it ended
		}
		srv, reqs, hs := g.srv, g.reqs, g.hs
		left := atomic.Int64{}
		left.Store(int64(len(reqs)))
		owner.SendBatch(reqs, func(i int, r wire.Reply, err error) {
			if err != nil || r.Status != wire.StatusOK {
				failed.Add(1)
			}
			if err == nil && r.Status != wire.StatusOK && r.Status != wire.StatusErrDraining &&
				i >= 0 && i < len(hs) && hs[i] != nil {
				// The server no longer held it: lost before Close —
				// unless Close counted it released already, having
				// given up waiting.
				if g.counted[i].CompareAndSwap(false, true) {
					hs[i].lostAtClose(r)
				}
			} else if i >= 0 && i < len(reqs) {
				countReleased(g, i)
			}
			if srv != nil && (errors.Is(err, wire.ErrConnBroken) && !errors.Is(err, ErrClosed) ||
				err == nil && mayNotBeApplied(r)) {
				// Auto-release off keeps what a broken connection held.
				c.releaseAside(srv, reqs[i])
			}
			if left.Add(-1) == 0 {
				done <- struct{}{}
			}
		})
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for range groups {
		select {
		case <-done:
		case <-t.C:
			// Per server, the releases still unanswered (an answer
			// racing this count is counted by whoever wins counted[i]).
			unanswered := make(map[*server]int)
			for _, g := range groups {
				for i := range g.counted {
					if !g.counted[i].Load() {
						unanswered[g.srv]++
					}
				}
			}
			for srv, n := range unanswered {
				addr := ""
				if srv != nil {
					addr = srv.addr
				}
				c.log.Warn("dflock: close: releases unanswered; the server releases them when the connections close, unless it runs with auto-release off",
					"server", addr, "leases", n)
			}
			return
		}
	}
	if n := failed.Load(); n > 0 {
		c.log.Debug("dflock: close: some leases were already gone on the server", "leases", n)
	}
}

// onConnBroken is pool.Config.OnConnBroken of server addr: every lease the
// connection owns is lost at once.
func (c *Client) onConnBroken(addr string, owner pool.Owner, err error) {
	if owner != nil {
		c.sched.OwnerFailed(owner, err)
	}
	if h := c.opts.hooks.OnConnBroken; h != nil {
		c.disp.do(func() { h(addr, err) })
	}
}

// ticketSet holds the queued tickets, whose places Close must give up.
type ticketSet struct {
	mu sync.Mutex
	m  map[*ticket]struct{}
}

func (s *ticketSet) add(t *ticket) {
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[*ticket]struct{})
	}
	s.m[t] = struct{}{}
	s.mu.Unlock()
}

func (s *ticketSet) remove(t *ticket) {
	s.mu.Lock()
	delete(s.m, t)
	s.mu.Unlock()
}

// closeAll withdraws every queued ticket, all at once, bounded together by
// deadline.
func (s *ticketSet) closeAll(deadline time.Time) {
	s.mu.Lock()
	m := s.m
	s.m = nil
	s.mu.Unlock()
	if len(m) == 0 {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var wg sync.WaitGroup
	for t := range m {
		wg.Go(func() { t.abandon(ctx) })
	}
	wg.Wait()
}

// Format prints a Client as the list of its servers, for every verb: its
// fields hold the auth token (and atomics that fmt would read racily).
func (c *Client) Format(f fmt.State, _ rune) {
	_, _ = fmt.Fprintf(f, "dflock.Client%q", c.Servers())
}
