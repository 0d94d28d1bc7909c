package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/puddle/v2"

	"github.com/dflock-sdk/go/wire"
)

// Pool is the set of connections to one server. Goroutine-safe.
//
// It has three parts: the control lane (Config.LaneConns long-lived
// pipelined connections for small non-blocking commands, Do), the wait pool
// (up to Config.MaxConns exclusive connections managed by puddle, Acquire),
// and one janitor goroutine that keeps every connection under the server's
// read timeout and discards broken idle ones. While the server is down (a
// lane dial failed on the network, or any dial did while no connection to
// the server was alive) calls that would need a new connection fail fast,
// and one probe goroutine re-dials with backoff; a lane connection that is
// still healthy keeps serving meanwhile.
type Pool struct {
	cfg   Config
	log   *slog.Logger
	tls   *tls.Config
	start time.Time // p.now() epoch (monotonic)
	pp    *puddle.Pool[*Conn]
	lanes []laneSlot

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	bg     sync.WaitGroup // janitor, probe, lane dials
	conns  sync.WaitGroup // reader goroutines and their async flushes

	mu       sync.Mutex
	closed   bool
	registry map[*Conn]struct{} // every live connection
	acquired map[*Conn]struct{} // wait-pool connections out of the pool, broken or not
	probing  bool
	retReq   int64 // counters of connections no longer in registry
	retWrite int64

	gate dialGate // paces wait-pool dials (Acquire)

	isClosed  atomic.Bool
	down      atomic.Pointer[ServerError]
	needSweep atomic.Bool
	nAcquired atomic.Int64

	dials, dialFailures, broken, pings atomic.Int64

	hello   []byte // auth (if any) + ping, encoded once
	hasAuth bool
}

type laneSlot struct {
	conn atomic.Pointer[Conn]
	dial *laneDial // in progress; under p.mu
}

type laneDial struct {
	done chan struct{}
	err  error
}

// New creates the pool without dialling (connections are made on demand).
// It starts the janitor goroutine; Close stops it.
func New(cfg Config) (*Pool, error) {
	if cfg.Addr == "" {
		return nil, errors.New("dflock: pool: empty server address")
	}
	if cfg.DialTimeout < 0 || cfg.KeepAlive < 0 || cfg.WriteTimeout < 0 || cfg.MaxConns < 0 || cfg.LaneConns < 0 || cfg.MaxReplyLine < 0 {
		return nil, fmt.Errorf("dflock: pool: server %s: negative duration or size in Config", cfg.Addr)
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.LaneConns == 0 {
		cfg.LaneConns = DefaultLaneConns
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.MaxReplyLine == 0 {
		cfg.MaxReplyLine = wire.DefaultMaxLine
	}
	p := &Pool{
		cfg:      cfg,
		log:      cfg.Logger,
		start:    time.Now(),
		lanes:    make([]laneSlot, cfg.LaneConns),
		registry: make(map[*Conn]struct{}),
		acquired: make(map[*Conn]struct{}),
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if cfg.TLS != nil {
		p.tls = cfg.TLS.Clone()
		if p.tls.ServerName == "" {
			host, _, err := net.SplitHostPort(cfg.Addr)
			if err != nil {
				host = cfg.Addr
			}
			p.tls.ServerName = host
		}
	}
	if cfg.AuthToken != "" {
		auth := wire.Request{Cmd: wire.CmdAuth, Arg: cfg.AuthToken}
		if err := auth.Validate(); err != nil {
			// The ArgError for a secret never carries the value.
			return nil, fmt.Errorf("dflock: pool: server %s: auth token: %w", cfg.Addr, err)
		}
		p.hello = auth.AppendTo(p.hello)
		p.hasAuth = true
	}
	p.hello = pingReq.AppendTo(p.hello)

	pp, err := puddle.NewPool(&puddle.Config[*Conn]{
		Constructor: func(ctx context.Context) (*Conn, error) {
			// ctx is not the Acquire caller's: puddle keeps constructing
			// after the caller gives up, and cancels ctx only on Close.
			// dial bounds it with DialTimeout. The gate answers at once
			// when it defers the dial; Acquire then waits on its own
			// context.
			gen, ok := p.gate.enter()
			if !ok {
				return nil, errDialDeferred
			}
			c, err := p.dial(ctx, false)
			p.gate.leave(gen, err)
			return c, err
		},
		Destructor: func(c *Conn) {
			if p.isClosed.Load() {
				c.fail(ErrClosed)
			} else {
				c.fail(errDestroyed)
			}
		},
		MaxSize: cfg.MaxConns,
	})
	if err != nil {
		return nil, fmt.Errorf("dflock: pool: server %s: %w", cfg.Addr, err)
	}
	p.pp = pp
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.bg.Add(1)
	go p.janitor()
	return p, nil
}

// Addr is the server address.
func (p *Pool) Addr() string { return p.cfg.Addr }

func (p *Pool) now() int64 { return int64(time.Since(p.start)) }

// Do sends a non-blocking request (try-acquire, renew, release, ping,
// signal) on the control lane and waits for its reply. The returned Conn is
// the lane connection that carried it: for a grant it is the lease owner.
// It is non-nil whenever a lane connection was chosen, even with an error.
// A request that could not be sent because its connection had just broken
// is retried on another lane connection (nothing reached the server).
//
// If ctx ends first Do returns an error matching ctx.Err(); the lane
// connection is NOT closed (it may own other leases): the reply is still
// read, and a grant that arrives for an abandoned l/sl request is released
// at once on the same connection.
//
// Requests whose encoded lines exceed wire.MaxLine, blocking requests, and
// commands that could stall or break a shared connection (e/se/w/sw, stats,
// listen/unlisten, auth) are refused with an error matching ErrNotLaneSafe.
// Invalid requests are refused with the wire.ArgError from Validate. The
// lane picks the healthy connection with the fewest replies pending (ties to
// the first), which concentrates light load on one connection so that it
// coalesces, and spreads heavy load.
func (p *Pool) Do(ctx context.Context, req wire.Request) (wire.Reply, *Conn, error) {
	if err := laneCheck(&req); err != nil {
		return wire.Reply{}, nil, err
	}
	if err := req.Validate(); err != nil {
		return wire.Reply{}, nil, err
	}
	for attempt := 0; ; attempt++ {
		c, err := p.laneConn(ctx)
		if err != nil {
			return wire.Reply{}, nil, err
		}
		r, sent, err := c.do(ctx, &req)
		if !sent && err != nil && c.errp.Load() != nil && attempt < len(p.lanes) {
			// The connection broke between the choice and the send:
			// nothing went out, so another lane connection may carry it.
			continue
		}
		return r, c, err
	}
}

// laneConn returns a healthy lane connection, dialling if there is none.
// A healthy lane connection is used even while the server is marked down
// (the down state only stops new dials; the probe makes them); with none,
// a down server fails fast.
func (p *Pool) laneConn(ctx context.Context) (*Conn, error) {
	var dialErr error
	for {
		if p.isClosed.Load() {
			return nil, serverErr(p.cfg.Addr, ErrClosed, nil)
		}
		best, missing := p.bestLane()
		if best != nil && !missing {
			return best, nil
		}
		// After a failed dial, wait only for dials already in progress
		// (another slot's may succeed) instead of starting new ones.
		d := p.kickLaneDials(dialErr == nil)
		if best != nil {
			return best, nil
		}
		if d == nil {
			if dialErr != nil {
				return nil, dialErr
			}
			if err := p.usable(); err != nil {
				return nil, err
			}
			continue // a dial finished between the scan and the kick
		}
		select {
		case <-d.done:
			if d.err != nil {
				dialErr = d.err
			}
		case <-ctx.Done():
			return nil, serverErr(p.cfg.Addr, ctx.Err(), nil)
		}
	}
}

// bestLane returns the healthy lane connection with the fewest replies
// pending (ties to the first; nil if none), and whether a slot is empty or
// broken.
func (p *Pool) bestLane() (best *Conn, missing bool) {
	var bestN int32
	for i := range p.lanes {
		c := p.lanes[i].conn.Load()
		if c == nil || c.errp.Load() != nil {
			missing = true
			continue
		}
		if n := c.inflight.Load(); best == nil || n < bestN {
			best, bestN = c, n
		}
	}
	return best, missing
}

// usable is nil unless the pool is closed or the server is down.
func (p *Pool) usable() error {
	if p.isClosed.Load() {
		return serverErr(p.cfg.Addr, ErrClosed, nil)
	}
	if d := p.down.Load(); d != nil {
		return d
	}
	return nil
}

// kickLaneDials starts a dial (if start) for every empty or broken lane
// slot that has none in progress, unless the pool is closed or the server
// down, and returns one dial in progress (nil if none).
func (p *Pool) kickLaneDials(start bool) *laneDial {
	p.mu.Lock()
	defer p.mu.Unlock()
	var any *laneDial
	for i := range p.lanes {
		s := &p.lanes[i]
		if s.dial != nil {
			any = s.dial
			continue
		}
		if c := s.conn.Load(); c != nil && c.errp.Load() == nil {
			continue
		}
		if !start || p.closed || p.down.Load() != nil {
			continue
		}
		d := &laneDial{done: make(chan struct{})}
		s.dial = d
		any = d
		p.bg.Add(1)
		go p.dialLane(s, d)
	}
	return any
}

func (p *Pool) dialLane(s *laneSlot, d *laneDial) {
	defer p.bg.Done()
	c, err := p.dial(p.ctx, true)
	p.mu.Lock()
	if err == nil {
		s.conn.Store(c)
	}
	d.err = err
	s.dial = nil
	p.mu.Unlock()
	close(d.done)
}

// adoptLane puts a freshly dialled lane connection into an empty slot, or
// closes it if there is none.
func (p *Pool) adoptLane(c *Conn) {
	p.mu.Lock()
	for i := range p.lanes {
		s := &p.lanes[i]
		if old := s.conn.Load(); s.dial == nil && (old == nil || old.errp.Load() != nil) {
			s.conn.Store(c)
			p.mu.Unlock()
			return
		}
	}
	p.mu.Unlock()
	c.fail(errDestroyed)
}

// Acquire takes an exclusive connection from the wait pool (dialling if
// needed, honouring ctx). The caller must end with exactly one of
// Conn.Release (clean, reusable) or Conn.Destroy; extra calls are no-ops.
//
// While the server is down Acquire fails fast (ErrUnavailable). A dial that
// fails while other connections to the server are alive is not a reason to
// mark it down (its lane may be serving fine, e.g. when the server is at
// its --max-connections cap); instead new wait-pool connections are paced,
// per pool:
//
//   - While dials succeed, at most 4 run at once; callers beyond that wait
//     for one of them to finish.
//   - After a failed dial, one dial at a time, each after a wait drawn
//     uniformly from [0, backoff) (full jitter), the backoff doubling from
//     50 ms up to 2 s with every further failure, until a dial succeeds or
//     the server is reached again by any other dial.
//
// A caller that needs a new connection while dials are held back waits —
// bounded by ctx — for an idle connection, or for its turn to dial. If any
// wait-pool dial fails while the caller is in Acquire, the caller fails with
// that dial's error instead of waiting for another attempt: one refused dial
// answers every caller waiting for it, so a burst of callers against a server
// at its connection cap costs a few refused connections, not one each. Such
// an error matches ErrUnavailable, names the server and says what happened
// (e.g. that the server closed the connection during the handshake, as it
// does at its connection limit). A caller whose ctx ends while it waits gets
// an error matching ctx.Err() that names the last dial failure, if any.
//
// A connection that broke while idle is destroyed, not handed out. An
// acquired connection, pinned or not, counts toward Config.MaxConns until
// it is released or destroyed, so a process holding MaxConns leases on
// wait-pool connections makes further Acquires wait.
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	gen := p.gate.generation()
	for {
		if err := p.usable(); err != nil {
			return nil, err
		}
		res, err := p.pp.Acquire(ctx)
		if err != nil {
			switch {
			case errors.Is(err, errDialDeferred):
				if err := p.waitForDial(ctx, gen); err != nil {
					return nil, err
				}
				continue
			case errors.Is(err, puddle.ErrClosedPool):
				return nil, serverErr(p.cfg.Addr, ErrClosed, nil)
			case ctx.Err() != nil:
				return nil, serverErr(p.cfg.Addr, ctx.Err(), nil)
			}
			return nil, err // from dial: already a *ServerError
		}
		c := res.Value()
		if c.errp.Load() != nil {
			res.Destroy()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			res.Destroy()
			return nil, serverErr(p.cfg.Addr, ErrClosed, nil)
		}
		c.res = res
		c.out.Store(true)
		p.acquired[c] = struct{}{}
		p.nAcquired.Add(1)
		p.mu.Unlock()
		return c, nil
	}
}

// Err is nil while the server is considered up; otherwise the error that
// made it unavailable (matches ErrUnavailable). After Close it matches
// ErrClosed. A server marked down is still up as far as Err goes while a
// lane connection to it is healthy, because Do keeps serving on it (Acquire
// and the dials fail fast meanwhile).
func (p *Pool) Err() error {
	if p.isClosed.Load() {
		return serverErr(p.cfg.Addr, ErrClosed, nil)
	}
	if d := p.down.Load(); d != nil {
		if best, _ := p.bestLane(); best == nil {
			return d
		}
	}
	return nil
}

// Stats is a snapshot of the pool's counters.
func (p *Pool) Stats() Stats {
	s := Stats{
		Addr:          p.cfg.Addr,
		Up:            p.Err() == nil,
		Dials:         p.dials.Load(),
		DialFailures:  p.dialFailures.Load(),
		Broken:        p.broken.Load(),
		Pings:         p.pings.Load(),
		AcquiredConns: int(p.nAcquired.Load()),
	}
	p.mu.Lock()
	s.Requests, s.Writes = p.retReq, p.retWrite
	for c := range p.registry {
		s.Requests += c.nreq.Load()
		s.Writes += c.nwrite.Load()
		if c.out.Load() && c.pins.Load() > 0 {
			s.PinnedConns++
		}
		if c.listener && c.errp.Load() == nil {
			s.ListenerConns++
		}
	}
	for i := range p.lanes {
		if c := p.lanes[i].conn.Load(); c != nil && c.errp.Load() == nil {
			s.LaneConns++
		}
	}
	p.mu.Unlock()
	s.IdleConns = int(p.pp.Stat().IdleResources())
	return s
}

// Close closes every connection (leases on them are released by the server)
// and stops the pool's goroutines. Release leases before calling it.
// Idempotent. Connections still acquired, broken or not, are force-closed
// (their later Release/Destroy is a no-op), so Close never waits for
// callers. Every connection gets its Config.OnConnBroken call.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.isClosed.Store(true)
	// Acquire adds to acquired and register to registry only while the
	// pool is open (under p.mu), so these are complete from here on.
	out := make([]*Conn, 0, len(p.acquired))
	for c := range p.acquired {
		out = append(out, c)
	}
	p.mu.Unlock()

	p.cancel() // stops the janitor, the probe, lane dials and constructors
	// Close every live connection. Acquired ones (including those that
	// broke earlier and so left the registry) go back to puddle destroyed:
	// puddle's Close waits for every acquired resource. Idle ones are
	// destroyed by puddle's Close below.
	for _, c := range p.snapshot(nil) {
		c.fail(ErrClosed)
	}
	for _, c := range out {
		c.fail(ErrClosed)
		if c.takeOut() {
			c.res.Destroy()
		}
	}
	p.bg.Wait() // janitor (and any idle connections it held), probe, lane dials
	// Destroys idle connections and waits for constructors (their context
	// is cancelled; register refuses their connections) and destructors.
	p.pp.Close()
	p.conns.Wait() // readers and flush goroutines
}

func (p *Pool) snapshot(dst []*Conn) []*Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.registry {
		dst = append(dst, c)
	}
	return dst
}

// register adds a freshly dialled connection and starts its reader.
func (p *Pool) register(c *Conn) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return serverErr(p.cfg.Addr, ErrClosed, nil)
	}
	p.registry[c] = struct{}{}
	p.conns.Add(1)
	p.mu.Unlock()
	go c.readLoop()
	return nil
}

// connBroken is called once per connection by Conn.fail.
func (p *Pool) connBroken(c *Conn, err error) {
	p.mu.Lock()
	if _, ok := p.registry[c]; ok {
		delete(p.registry, c)
		p.retReq += c.nreq.Load()
		p.retWrite += c.nwrite.Load()
	}
	p.mu.Unlock()
	p.broken.Add(1)
	if !c.lane && !c.listener && !c.out.Load() {
		p.needSweep.Store(true) // idle in puddle: the janitor destroys it
	}
	if !p.isClosed.Load() {
		p.log.Debug("dflock: connection broken", "server", p.cfg.Addr, "lane", c.lane, "err", err)
	}
	if p.cfg.OnConnBroken != nil {
		p.cfg.OnConnBroken(c, err)
	}
}
