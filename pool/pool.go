package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/puddle/v2"

	"github.com/dflock-sdk/go/wire"
)

// Pool is the set of connections to one server. Goroutine-safe.
//
// It has three kinds of connection, one type each over the same pipelined
// connection: the control lane (Config.LaneConns long-lived connections for
// small non-blocking commands, Do), the wait pool (up to Config.MaxConns
// exclusive connections managed by puddle, handed out as Conns by Acquire),
// and listener connections (ListenerConn, DialListener); plus connections
// of a single request (Query). One janitor goroutine that keeps every connection under the server's
// read timeout and closes idle wait-pool ones that broke, exceed
// Config.MaxIdleConns or outlived Config.MaxConnIdleTime. While the server is down (a
// lane dial failed on the network, or any dial did while no connection to
// the server was alive) calls that would need a new connection fail fast,
// and one probe goroutine re-dials with backoff; a lane connection that is
// still healthy keeps serving meanwhile.
type Pool struct {
	cfg   Config
	log   *slog.Logger
	tls   *tls.Config
	start time.Time // p.now() epoch (monotonic)
	pp    *puddle.Pool[*conn]
	lanes []laneSlot
	// afterLaneScan, if set (tests only, before the pool is used), runs in
	// pickLane between its lock-free scan and kickLaneDials.
	afterLaneScan func()

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	// lifeDone is Config.Lifetime's Done channel (nil without one); ended
	// is set when it closes, before callers reading their own replies are
	// interrupted, and stopLife unregisters that.
	lifeDone <-chan struct{}
	ended    atomic.Bool
	stopLife func() bool
	bg       sync.WaitGroup // janitor, quiet watch, probe, lane dials
	quiet    quietWatch
	io       sync.WaitGroup // reader goroutines and their async flushes

	// closed is set (under mu, so that register and Acquire, which check
	// it under mu, see a consistent answer) by Close and read anywhere.
	closed atomic.Bool
	// downAtClose: the server was down (downErr != nil) when Close began;
	// Stats reports that state after Close. Set before closed.
	downAtClose atomic.Bool

	mu       sync.Mutex
	conns    map[*conn]struct{} // every live connection, whatever its role
	acquired map[*Conn]struct{} // wait-pool acquisitions not yet ended, broken or not
	probing  bool
	// laneDialEnd, made by the first caller to wait for a lane dial, is
	// closed (and cleared) when the next lane dial ends, so that waiting
	// callers wake for the first dial to finish, whichever slot's.
	// laneDialFails counts the failed lane dials and laneDialErr is the
	// last failure.
	laneDialEnd   chan struct{}
	laneDialFails uint64
	laneDialErr   error
	retReq        int64 // counters of connections no longer in conns
	retWrite      int64

	gate     dialGate // paces wait-pool dials (Acquire)
	authHold authHold // holds dials back after an auth refusal

	down       atomic.Pointer[ServerError]
	needSweep  atomic.Bool
	nAcquired  atomic.Int64
	acquiring  atomic.Int64 // Acquires in progress (see AcquireUnlessBusy)
	nListeners atomic.Int64
	nLingering atomic.Int64 // connections lingering (conn.lingersLocked to conn.linger's end)

	dials, dialFailures, broken, pings, idleClosed atomic.Int64

	// upSince and downSince are when the server was last found up (first
	// dial after a down period) and down (Stats.Since), as stamps (0:
	// never). Monotonic, so that a step of the wall clock during an
	// outage does not make DownFor call a blink an outage.
	upSince, downSince atomic.Int64

	// idleDue is at most the p.now() at which the longest-idle wait-pool
	// connection reaches Config.MaxConnIdleTime (never: none is idle), so
	// that the janitor takes the idle connections out only when one may
	// have expired. Release lowers it; the janitor's reap recomputes it.
	idleDue atomic.Int64

	hello   []byte // auth (if any) + ping, encoded once
	hasAuth bool
	// secret is what redaction looks for: the token as the server holds
	// it, and may echo it — trimmed, as the server trims the auth line
	// (the untrimmed token contains it).
	secret string
}

// checkConfig names the first field of cfg out of range (zero means the
// default for every field it checks).
func checkConfig(cfg *Config) error {
	negative := func(field string, v any) error {
		return fmt.Errorf("invalid Config.%s: must not be negative (got %v)", field, v)
	}
	switch {
	case cfg.DialTimeout < 0:
		return negative("DialTimeout", cfg.DialTimeout)
	case cfg.KeepAlive < 0:
		return negative("KeepAlive", cfg.KeepAlive)
	case cfg.KeepAlive > 0 && cfg.KeepAlive < MinKeepAlive:
		return fmt.Errorf("invalid Config.KeepAlive: must be 0 (default) or at least %v (got %v)", MinKeepAlive, cfg.KeepAlive)
	case cfg.MaxConns < 0:
		return negative("MaxConns", cfg.MaxConns)
	case cfg.LaneConns < 0 || cfg.LaneConns > MaxLaneConns:
		return fmt.Errorf("invalid Config.LaneConns: must be between 0 (default) and %d (got %d)", MaxLaneConns, cfg.LaneConns)
	case cfg.MaxConnIdleTime < 0:
		return negative("MaxConnIdleTime", cfg.MaxConnIdleTime)
	case cfg.writeTimeout < 0:
		return negative("writeTimeout", cfg.writeTimeout)
	case cfg.maxReplyLine < 0:
		return negative("maxReplyLine", cfg.maxReplyLine)
	}
	return nil
}

// New creates the pool without dialling (connections are made on demand).
// It starts the janitor goroutine; Close stops it.
func New(cfg Config) (*Pool, error) {
	if cfg.Addr == "" {
		return nil, errors.New("dflock: pool: empty server address")
	}
	if err := checkConfig(&cfg); err != nil {
		return nil, fmt.Errorf("dflock: pool: server %s: %w", cfg.Addr, err)
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = defaultKeepAlive
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = defaultMaxConns
	}
	if cfg.LaneConns == 0 {
		cfg.LaneConns = defaultLaneConns
	}
	switch {
	case cfg.MaxIdleConns == 0:
		cfg.MaxIdleConns = defaultMaxIdleConns
	case cfg.MaxIdleConns < 0:
		cfg.MaxIdleConns = 0
	}
	if cfg.MaxConnIdleTime == 0 {
		cfg.MaxConnIdleTime = defaultMaxConnIdleTime
	}
	if cfg.writeTimeout == 0 {
		cfg.writeTimeout = defaultWriteTimeout
	}
	if cfg.maxReplyLine == 0 {
		cfg.maxReplyLine = wire.DefaultMaxLine
	}
	p := &Pool{
		cfg:      cfg,
		log:      cfg.Logger,
		start:    time.Now(),
		lanes:    make([]laneSlot, cfg.LaneConns),
		conns:    make(map[*conn]struct{}),
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
		p.secret = strings.TrimSpace(cfg.AuthToken)
	}
	p.hello = pingReq.AppendTo(p.hello)
	p.idleDue.Store(never)
	p.authHold.addr, p.authHold.secret = cfg.Addr, p.secret

	pp, err := puddle.NewPool(&puddle.Config[*conn]{
		Constructor: p.dialWaitConn,
		Destructor: func(c *conn) {
			if p.closed.Load() {
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
	if cfg.Lifetime != nil {
		p.lifeDone = cfg.Lifetime.Done()
		p.stopLife = context.AfterFunc(cfg.Lifetime, p.lifetimeEnded)
	}
	p.quiet.kick = make(chan struct{}, 1)
	p.bg.Add(2)
	go p.janitor()
	go p.watchQuiet()
	return p, nil
}

func (p *Pool) now() int64 { return int64(time.Since(p.start)) }

// stamp is p.now() for upSince and downSince, never 0 (which means never).
func (p *Pool) stamp() int64 { return max(p.now(), 1) }

// usable is nil unless the pool is closed or the server is down.
func (p *Pool) usable() error {
	if p.closed.Load() {
		return serverErr(p.cfg.Addr, ErrClosed, nil)
	}
	if d := p.down.Load(); d != nil {
		return d
	}
	return nil
}

// Err is nil while the server is considered up; otherwise the error that
// made it unavailable (matches ErrUnavailable). After Close it matches
// ErrClosed. A server marked down is still up as far as Err goes while a
// lane connection to it is healthy, because Do keeps serving on it (the
// dials fail fast meanwhile, and Acquire unless an idle connection is at
// hand).
func (p *Pool) Err() error {
	if p.closed.Load() {
		return serverErr(p.cfg.Addr, ErrClosed, nil)
	}
	return p.downErr()
}

// downErr is Err without the closed check: the server's own state, which
// Stats keeps reporting after Close (a closed pool is not a down server).
func (p *Pool) downErr() error {
	if d := p.down.Load(); d != nil {
		if best, _ := p.bestLane(); best == nil {
			return d
		}
	}
	return nil
}

// DownFor is how long the server has been down (Err non-nil: its dials
// failing, no healthy lane connection) at now, or 0 while it is up. One
// failed dial marks a server down; the probe re-dials one that only
// blinked within probeMinBackoff, so a caller deciding to give up on the
// server can tell an outage from a blink by how long it has lasted.
func (p *Pool) DownFor(now time.Time) time.Duration {
	if p.downErr() == nil {
		return 0
	}
	since := p.downSince.Load()
	if since == 0 {
		return 0
	}
	return max(now.Sub(p.start.Add(time.Duration(since))), 0)
}

// upForStats is Stats.Up: downErr == nil, as it was when Close began
// once the pool is closed (Close closes the lane connections that kept a
// server marked down up).
func (p *Pool) upForStats() bool {
	if p.closed.Load() {
		return !p.downAtClose.Load()
	}
	return p.downErr() == nil
}

// Stats is a snapshot of the pool's counters.
func (p *Pool) Stats() Stats {
	s := Stats{
		Addr:         p.cfg.Addr,
		Up:           p.upForStats(),
		AuthRefused:  p.authHold.on.Load(),
		Dials:        p.dials.Load(),
		DialFailures: p.dialFailures.Load(),
		Broken:       p.broken.Load(),
		Pings:        p.pings.Load(),
		IdleClosed:   p.idleClosed.Load(),
	}
	p.mu.Lock()
	// Acquired and idle are read together under p.mu, which a connection
	// enters the acquired set under after puddle took it from the idle
	// ones, and leaves under before puddle makes it idle: a reading counts
	// a connection changing hands in neither, never in both (the roles'
	// sum must not exceed the connections open).
	s.AcquiredConns = len(p.acquired)
	s.IdleConns = int(p.pp.Stat().IdleResources())
	s.Requests, s.Writes = p.retReq, p.retWrite
	for c := range p.conns {
		s.Requests += c.nreq.Load()
		s.Writes += c.nwrite.Load()
	}
	for h := range p.acquired {
		if h.pins.Load() > 0 && h.c.errp.Load() == nil {
			s.PinnedConns++
		}
	}
	for i := range p.lanes {
		if l := p.lanes[i].conn.Load(); l != nil && l.c.errp.Load() == nil {
			s.LaneConns++
		}
	}
	p.mu.Unlock()
	since := p.downSince.Load()
	if s.Up {
		since = p.upSince.Load()
	}
	if since != 0 {
		s.Since = p.start.Add(time.Duration(since))
	}
	s.ListenerConns = int(p.nListeners.Load())
	s.LingeringConns = int(p.nLingering.Load())
	return s
}

// Close closes every connection (leases on them are released by the server)
// and stops the pool's goroutines. Release leases before calling it.
// Idempotent: a later call returns at once, even while the first is still
// closing. Connections still acquired, broken or not, are force-closed
// (their later Release/Destroy is a no-op), so Close never waits for
// callers. Every connection gets its Config.OnConnBroken call.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		return
	}
	p.downAtClose.Store(p.downErr() != nil)
	p.closed.Store(true)
	// Acquire adds to acquired and register to conns only while the pool
	// is open (under p.mu), so these are complete from here on.
	out := make([]*Conn, 0, len(p.acquired))
	for h := range p.acquired {
		out = append(out, h)
	}
	p.mu.Unlock()

	p.cancel() // stops the janitor, the probe, lane dials and constructors
	if p.stopLife != nil {
		p.stopLife()
	}
	// Close every live connection. Acquired ones (including those that
	// broke earlier and so left conns) go back to puddle destroyed:
	// puddle's Close waits for every acquired resource. Idle ones are
	// destroyed by puddle's Close below.
	for _, c := range p.snapshot(nil) {
		c.fail(ErrClosed)
	}
	for _, h := range out {
		h.c.fail(ErrClosed)
		if h.takeOut() {
			h.res.Destroy()
		}
	}
	p.bg.Wait() // janitor (and any idle connections it held), quiet watch, probe, lane dials
	// Destroys idle connections and waits for constructors (their context
	// is cancelled; register refuses their connections) and destructors.
	p.pp.Close()
	p.io.Wait() // readers and flush goroutines
}

// lifetimeEnded ends every wait for a reply when Config.Lifetime ends: a
// caller waiting for the reader to deliver its reply is abandoned to the
// reader; one reading its own reply is interrupted. ended is set first: a
// caller that queues its request or takes the turn to read after the loop
// passed its connection (both under the connection's mu) sees it and does
// not start waiting.
func (p *Pool) lifetimeEnded() {
	p.ended.Store(true)
	for _, c := range p.snapshot(nil) {
		c.endWaits()
		c.interruptRead()
	}
}

func (p *Pool) snapshot(dst []*conn) []*conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		dst = append(dst, c)
	}
	return dst
}

// register adds a freshly dialled connection and starts its reader.
func (p *Pool) register(c *conn) error {
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		return serverErr(p.cfg.Addr, ErrClosed, nil)
	}
	p.conns[c] = struct{}{}
	p.io.Add(1)
	p.mu.Unlock()
	go c.readLoop()
	return nil
}

// connBroken is called once per connection by conn.fail. owner is the lease
// owner the connection served, if any.
func (p *Pool) connBroken(c *conn, owner Owner, err error) {
	p.mu.Lock()
	if _, ok := p.conns[c]; ok {
		delete(p.conns, c)
		p.retReq += c.nreq.Load()
		p.retWrite += c.nwrite.Load()
	}
	p.mu.Unlock()
	if c.quiet || c.retired.Load() {
		return
	}
	p.broken.Add(1)
	if !p.closed.Load() {
		p.log.Debug("dflock: connection broken", "err", err)
	}
	if p.cfg.OnConnBroken != nil {
		p.cfg.OnConnBroken(owner, err)
	}
}

// Format prints a Pool as its server's address, for every verb: its fields
// hold the auth token (and atomics that fmt would read racily).
func (p *Pool) Format(f fmt.State, _ rune) {
	_, _ = fmt.Fprintf(f, "pool.Pool[%q]", p.cfg.Addr)
}
