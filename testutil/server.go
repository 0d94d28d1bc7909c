package testutil

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
	"syscall"
	"testing"
	"time"
)

// Defaults of Config, matching dflockd's flags.
const (
	DefaultReadTimeout     = 23 * time.Second
	DefaultWriteTimeout    = 5 * time.Second
	DefaultLease           = 33 * time.Second
	DefaultSweepInterval   = time.Second
	DefaultMaxLocks        = 1024
	DefaultGCInterval      = 5 * time.Second
	DefaultGCMaxIdle       = 60 * time.Second
	DefaultShutdownTimeout = 30 * time.Second
	DefaultPushBuffer      = 64
)

// restartRetry bounds how long Restart retries a port still in use.
const restartRetry = 5 * time.Second

type serverState uint8

const (
	stateRunning serverState = iota
	stateStopped             // Stop: no listener, no state; Restart brings it back
	stateClosed
)

// Server is a running in-process dflockd.
type Server struct {
	cfg          Config // with defaults applied
	clock        Clock  // cfg.Clock
	log          *slog.Logger
	authToken    string
	defaultLease int64 // seconds
	tlsConfig    *tls.Config
	addr         string

	locks *lockTable
	hub   *signalHub

	requests [numCmds]atomic.Int64
	reads    atomic.Int64
	writes   atomic.Int64 // socket Write calls, over all connections (for tests)

	// lifeMu serialises the lifecycle operations (Stop, Restart,
	// DropConnections, Close) so each sees a settled state.
	lifeMu sync.Mutex

	mu         sync.Mutex
	state      serverState
	ln         net.Listener  // nil while stopped or after the listener closed
	lnClosed   chan struct{} // closed when ln is closed
	acceptDone chan struct{}
	conns      map[uint64]*conn
	nextID     uint64
	drained    chan struct{} // closed once draining with no connections left
	drainedSet bool

	drainCh   chan struct{} // closed when Shutdown starts
	drainOnce sync.Once
	quit      chan struct{} // closed by Close; stops the janitor

	stallMu     sync.Mutex
	stallCount  int
	stallCh     chan struct{} // non-nil while stalled; closed on resume
	stallEnded  time.Time     // when the last stall ended
	stallTimers map[Timer]struct{}
	stallGen    uint64 // bumped by endStalls: older resume funcs are no-ops

	closeOnce sync.Once
	wg        sync.WaitGroup // every goroutine the server starts
}

// withDefaults fills in the documented defaults.
func (cfg Config) withDefaults() Config {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	setDur := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	setDur(&cfg.ReadTimeout, DefaultReadTimeout)
	setDur(&cfg.WriteTimeout, DefaultWriteTimeout)
	setDur(&cfg.DefaultLease, DefaultLease)
	setDur(&cfg.SweepInterval, DefaultSweepInterval)
	setDur(&cfg.GCInterval, DefaultGCInterval)
	setDur(&cfg.GCMaxIdle, DefaultGCMaxIdle)
	setDur(&cfg.ShutdownTimeout, DefaultShutdownTimeout)
	if cfg.MaxLocks == 0 {
		cfg.MaxLocks = DefaultMaxLocks
	}
	if cfg.PushBuffer == 0 {
		cfg.PushBuffer = DefaultPushBuffer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	return cfg
}

// validate rejects the values of cfg (before defaults) that have no
// documented meaning, naming the field and the value.
func (cfg Config) validate() error {
	switch cfg.Version {
	case V1_16, V1_10, V2_1:
	default:
		return fmt.Errorf("testutil: unknown version %d", cfg.Version)
	}
	switch cfg.SignalOverflow {
	case OverflowDisconnect, OverflowDrop:
	default:
		return fmt.Errorf("testutil: Config.SignalOverflow %v: want OverflowDisconnect or OverflowDrop", cfg.SignalOverflow)
	}
	for _, f := range []struct {
		name string
		v    int
	}{
		{"MaxWaiters", cfg.MaxWaiters},
		{"MaxSubscriptions", cfg.MaxSubscriptions},
		{"MaxConnections", cfg.MaxConnections},
	} {
		if f.v < 0 {
			return fmt.Errorf("testutil: Config.%s %d: must not be negative (0 = unlimited)", f.name, f.v)
		}
	}
	if cfg.PushBuffer < 0 {
		return fmt.Errorf("testutil: Config.PushBuffer %d: must not be negative (0 = the default, %d)", cfg.PushBuffer, DefaultPushBuffer)
	}
	for _, f := range []struct {
		name   string
		v, def time.Duration
	}{
		{"SweepInterval", cfg.SweepInterval, DefaultSweepInterval},
		{"GCInterval", cfg.GCInterval, DefaultGCInterval},
		{"GCMaxIdle", cfg.GCMaxIdle, DefaultGCMaxIdle},
	} {
		if f.v < 0 {
			return fmt.Errorf("testutil: Config.%s %v: must not be negative (0 = the default, %v)", f.name, f.v, f.def)
		}
	}
	return nil
}

// Start starts a server. It does not need a *testing.T. It rejects a Config
// with a value its field's doc gives no meaning (an unknown Version or
// SignalOverflow, a negative count or interval where negative is not
// documented).
func Start(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	// The lease is announced in whole seconds; round sub-second values up.
	lease := int64((cfg.DefaultLease + time.Second - 1) / time.Second)
	if lease < 1 {
		return nil, errors.New("testutil: DefaultLease must be positive")
	}
	s := &Server{
		cfg:          cfg,
		clock:        cfg.Clock,
		log:          cfg.Logger,
		authToken:    configuredToken(cfg),
		defaultLease: lease,
		locks:        newLockTable(cfg.Version, cfg.MaxLocks, cfg.MaxWaiters, cfg.Audit, cfg.Clock),
		hub:          newSignalHub(cfg.MaxSubscriptions, cfg.SignalOverflow),
		conns:        make(map[uint64]*conn),
		drained:      make(chan struct{}),
		drainCh:      make(chan struct{}),
		quit:         make(chan struct{}),
		stallTimers:  make(map[Timer]struct{}),
	}
	if cfg.TLS != nil {
		s.tlsConfig = cfg.TLS.Clone()
		if s.tlsConfig.MinVersion < tls.VersionTLS12 {
			s.tlsConfig.MinVersion = tls.VersionTLS12
		}
	}
	ln, err := s.listen(context.Background(), cfg.Addr)
	if err != nil {
		return nil, err
	}
	s.addr = ln.Addr().String()
	s.mu.Lock()
	s.serveLocked(ln)
	s.mu.Unlock()
	// Armed before Start returns, so that a test counting a ManualClock's
	// pending timers knows the janitor's are among them.
	sweep, gc := newPeriod(s.clock, cfg.SweepInterval), newPeriod(s.clock, cfg.GCInterval)
	s.wg.Add(1)
	go s.janitor(sweep, gc)
	s.log.Debug("testutil: listening", "addr", s.addr, "version", cfg.Version)
	return s, nil
}

// configuredToken is the auth token the server compares with: trimmed as
// every token source is from v1.16; on V1_10 as given, since it stands for
// v1.10's -auth-token flag, which (unlike a token file) is not trimmed.
func configuredToken(cfg Config) string {
	if cfg.Version == V1_10 {
		return cfg.AuthToken
	}
	return strings.TrimSpace(cfg.AuthToken)
}

// NewServer starts a server for a test and closes it at cleanup.
func NewServer(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	s, err := Start(cfg)
	if err != nil {
		tb.Fatalf("testutil: start server: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func (s *Server) listen(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("testutil: listen: %w", err)
	}
	var wrapped net.Listener = &countingListener{Listener: ln, reads: &s.reads, writes: &s.writes,
		writeTimeout: s.cfg.WriteTimeout, stall: s.stallGate}
	if s.tlsConfig != nil {
		wrapped = tls.NewListener(wrapped, s.tlsConfig)
	}
	return wrapped, nil
}

// serveLocked installs ln and starts its accept loop. s.mu must be held.
func (s *Server) serveLocked(ln net.Listener) {
	s.ln = ln
	s.state = stateRunning
	done, closed := make(chan struct{}), make(chan struct{})
	s.acceptDone, s.lnClosed = done, closed
	s.wg.Add(1)
	go s.acceptLoop(ln, done, closed)
}

// acceptLoop accepts connections on ln until closed is closed. A stalled
// server accepts nothing: a connection accepted as the stall begins is held,
// neither served nor closed, until it ends, and the kernel's backlog keeps
// the rest (their handshakes complete, as with a paused process).
func (s *Server) acceptLoop(ln net.Listener, done, closed chan struct{}) {
	defer s.wg.Done()
	defer close(done)
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient (e.g. EMFILE): back off briefly, as net/http does.
			s.log.Warn("testutil: accept", "err", err)
			select {
			case <-time.After(5 * time.Millisecond):
				continue
			case <-s.quit:
				return
			}
		}
		if !s.awaitStallOr(closed) {
			_ = nc.Close()
			return
		}
		s.mu.Lock()
		if s.ln != ln || (s.cfg.MaxConnections > 0 && len(s.conns) >= s.cfg.MaxConnections) {
			// Over the cap dflockd accepts and closes at once, writing nothing.
			s.mu.Unlock()
			_ = nc.Close()
			continue
		}
		raw, _ := nc.(*countedConn)
		if tc, ok := nc.(*tls.Conn); ok {
			raw = tc.NetConn().(*countedConn)
		}
		s.nextID++
		c := newConn(s, s.nextID, nc, raw)
		s.conns[c.id] = c
		s.wg.Add(1)
		s.mu.Unlock()
		s.log.Debug("testutil: connection opened", "conn", c.id, "remote", nc.RemoteAddr())
		go c.serve()
	}
}

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	delete(s.conns, c.id)
	s.checkDrainedLocked()
	s.mu.Unlock()
}

func (s *Server) checkDrainedLocked() {
	if s.draining() && len(s.conns) == 0 && !s.drainedSet {
		s.drainedSet = true
		close(s.drained)
	}
}

// Draining reports whether Shutdown has begun: the listener is closed and
// every request from then on is refused as draining. (A dial failing is not
// enough to tell: Shutdown closes the listener a moment before it starts
// refusing requests on open connections.)
func (s *Server) Draining() bool { return s.draining() }

func (s *Server) draining() bool {
	select {
	case <-s.drainCh:
		return true
	default:
		return false
	}
}

func (s *Server) checkSecret(arg []byte) bool { return secretMatches(arg, s.authToken) }

// janitor runs the lease sweeper and the idle-key GC on their periods. On
// V1_10 both stop when a drain starts (dflockd v1.10 ends them with the
// server's context): leases that run out during the drain stay listed until
// something touches their key, and idle keys are no longer pruned.
func (s *Server) janitor(sweep, gc *period) {
	defer s.wg.Done()
	defer func() { sweep.stop(); gc.stop() }()
	var drain <-chan struct{}
	if s.cfg.Version == V1_10 {
		drain = s.drainCh
	}
	for {
		select {
		case <-drain:
			return
		case <-sweep.fired:
			ran := s.clock.Now()
			s.locks.sweep()
			sweep.rearm(ran)
		case <-gc.fired:
			ran := s.clock.Now()
			s.locks.gc(s.cfg.GCMaxIdle)
			gc.rearm(ran)
		case <-s.quit:
			return
		}
	}
}

// period is a job's schedule on a fixed grid of the server's clock, as a
// time.Ticker's. The grid, not the end of the last run, decides the next
// due time, so that a ManualClock advanced while the job ran (or before it
// was re-armed) still gets a run that sees the new time; a run catches up
// on every grid point up to the time it read, so advancing by many periods
// costs one run, not one per period.
type period struct {
	clk   Clock
	every time.Duration
	due   time.Time
	fired <-chan struct{}
	stop  func()
}

func newPeriod(clk Clock, every time.Duration) *period {
	p := &period{clk: clk, every: every, due: clk.Now().Add(every)}
	p.fired, p.stop = clockTimer(clk, every)
	return p
}

// rearm schedules the first grid point after ran, the clock's time read
// before the run; if the clock has passed it already, the job runs again
// at once.
func (p *period) rearm(ran time.Time) {
	if behind := ran.Sub(p.due); behind >= 0 {
		p.due = p.due.Add((behind/p.every + 1) * p.every)
	}
	p.fired, p.stop = clockTimerAt(p.clk, p.due)
}

// Addr is the host:port the server listens on (stable across Stop/Restart).
func (s *Server) Addr() string { return s.addr }

// closeListenerLocked closes the listener and returns the channel that is
// closed when its accept loop has exited. s.mu must be held.
func (s *Server) closeListenerLocked() chan struct{} {
	if s.ln != nil {
		_ = s.ln.Close()
		close(s.lnClosed)
		s.ln = nil
	}
	return s.acceptDone
}

// dropAll closes every connection and waits until each has cleaned up.
func (s *Server) dropAll() {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	for _, c := range conns {
		<-c.finished
	}
}

// Close stops the server at once: listener and every connection closed, all
// state dropped. It waits for every goroutine the server started. It is
// idempotent and may follow Shutdown or Stop.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.lifeMu.Lock()
		defer s.lifeMu.Unlock()
		s.mu.Lock()
		s.state = stateClosed
		s.closeListenerLocked()
		s.mu.Unlock()
		// The state ends before the connections close, as in a killed
		// process: closing them must not hand slots on first.
		s.locks.stop()
		close(s.quit)
		s.dropAll()
		s.endStalls()
		s.wg.Wait()
		s.hub.reset()
		s.log.Debug("testutil: closed", "addr", s.addr)
	})
	return nil
}

// Shutdown drains like SIGTERM (docs/protocol.md §8j): the listener closes at once
// and blocked waiters get `error`; on V1_16 and V2_1 the next request on each
// connection is answered `error_draining` and the connection closed, on V1_10
// connections keep being served (with the lease sweeper and the idle-key GC
// stopped, as in v1.10). When every connection is gone,
// ShutdownTimeout passes (negative: no limit) or ctx ends, the rest is
// force-closed as by Close. It returns ctx.Err() if ctx ended the drain.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.state == stateClosed {
		s.mu.Unlock()
		return nil
	}
	// Refuse new connections before waking blocked waiters, so a client
	// that sees its wait interrupted can rely on the listener being gone
	// (docs/protocol.md §8j: listener closed at once, then waiters get error).
	s.closeListenerLocked()
	s.drainOnce.Do(func() { close(s.drainCh) })
	s.checkDrainedLocked()
	s.mu.Unlock()

	var timeout <-chan struct{}
	if s.cfg.ShutdownTimeout > 0 {
		fired, stop := clockTimer(s.clock, s.cfg.ShutdownTimeout)
		defer stop()
		timeout = fired
	}
	var err error
	select {
	case <-s.drained:
	case <-timeout:
	case <-ctx.Done():
		err = ctx.Err()
	case <-s.quit: // closed concurrently
	}
	_ = s.Close()
	return err
}

// DropConnections closes every open connection (auto-release applies) but
// keeps listening. It returns once their cleanup is done.
func (s *Server) DropConnections() {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	s.dropAll()
}

// Stop imitates a crash: it closes the listener, drops all lock state at
// once (each holder's lease ends with AuditStop; nothing is handed on to
// waiters), closes every connection and drops all signal state, keeping the
// address for Restart. It ends every stall in progress, as a killed process
// is no longer paused: the restarted server is not stalled (unless Stall is
// called again), and the resume funcs of those stalls become no-ops.
func (s *Server) Stop() error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	s.mu.Lock()
	switch s.state {
	case stateClosed:
		s.mu.Unlock()
		return net.ErrClosed
	case stateStopped:
		s.mu.Unlock()
		return nil
	}
	s.state = stateStopped
	acceptDone := s.closeListenerLocked()
	s.mu.Unlock()
	<-acceptDone
	// As in Close: the state ends at once, before the connections close.
	s.locks.stop()
	s.dropAll()
	// Once the connections are closed, so that nothing held leaves.
	s.endStalls()
	s.hub.reset()
	s.log.Debug("testutil: stopped", "addr", s.addr)
	return nil
}

// Restart listens again on the same address after Stop, retrying for a few
// seconds while the port is still in use.
func (s *Server) Restart() error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	s.mu.Lock()
	state := s.state
	s.mu.Unlock()
	switch state {
	case stateClosed:
		return net.ErrClosed
	case stateRunning:
		if s.draining() {
			return errors.New("testutil: restart during shutdown")
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), restartRetry)
	defer cancel()
	for {
		ln, err := s.listen(ctx, s.addr)
		if err == nil {
			s.locks.start()
			s.mu.Lock()
			s.serveLocked(ln)
			s.mu.Unlock()
			s.log.Debug("testutil: restarted", "addr", s.addr)
			return nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-s.quit:
			return net.ErrClosed
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stall imitates a paused server process (SIGSTOP, a long GC pause, a VM
// freeze) until the returned function is called (or d passes on the
// server's clock, if d > 0): nothing is read from or written to any
// connection — no reply, no signal push, no grant to a parked waiter, no
// `error` for a read timeout — and no new connection is accepted or served
// (the kernel still completes TCP handshakes into the listen backlog, as for
// a paused process). The lock table keeps running on the server's clock:
// leases expire and freed slots are handed to waiters, whose replies are
// held with the rest. When the stall ends everything held leaves in order.
// Connections keep their state, but read deadlines run on: a connection
// whose deadline passed during the stall is timed out when it ends
// (`error`, then closed), as a resumed dflockd does — also one whose next
// request came in during the stall (dflockd's timer wins that race about a
// quarter of the time; testutil's always does).
// Overlapping stalls nest: the server resumes when all of them have ended.
// Stop (a crash) and Close end every stall in progress; a stall begun while
// the server is stopped holds the restarted server. resume is idempotent,
// and a no-op once Stop or Close has ended its stall.
func (s *Server) Stall(d time.Duration) (resume func()) {
	s.stallMu.Lock()
	if s.stallCount == 0 {
		s.stallCh = make(chan struct{})
	}
	s.stallCount++
	gen := s.stallGen
	var timer Timer
	var once sync.Once
	resume = func() {
		once.Do(func() {
			s.stallMu.Lock()
			defer s.stallMu.Unlock()
			if timer != nil {
				timer.Stop()
				delete(s.stallTimers, timer)
			}
			if gen != s.stallGen {
				return // ended by endStalls
			}
			s.stallCount--
			if s.stallCount == 0 {
				close(s.stallCh)
				s.stallCh = nil
				s.stallEnded = s.clock.Now()
			}
		})
	}
	if d > 0 {
		timer = s.clock.AfterFunc(d, resume)
		s.stallTimers[timer] = struct{}{}
	}
	s.stallMu.Unlock()
	return resume
}

// endStalls ends every stall in progress at once, as if each had been
// resumed, and disarms their timers; their resume funcs become no-ops.
func (s *Server) endStalls() {
	s.stallMu.Lock()
	defer s.stallMu.Unlock()
	for t := range s.stallTimers {
		t.Stop()
	}
	clear(s.stallTimers)
	s.stallGen++
	if s.stallCount > 0 {
		s.stallCount = 0
		close(s.stallCh)
		s.stallCh = nil
		s.stallEnded = s.clock.Now()
	}
}

// awaitStallOr blocks while the server is stalled; false if stop closed first.
func (s *Server) awaitStallOr(stop <-chan struct{}) bool {
	for {
		gate := s.stallGate()
		if gate == nil {
			return true
		}
		select {
		case <-gate:
		case <-stop:
			return false
		}
	}
}

// stallGate returns the channel to wait on while stalled, else nil.
func (s *Server) stallGate() chan struct{} {
	s.stallMu.Lock()
	defer s.stallMu.Unlock()
	return s.stallCh
}

// lastStallEnd is when the last stall ended, on the server's clock.
func (s *Server) lastStallEnd() time.Time {
	s.stallMu.Lock()
	defer s.stallMu.Unlock()
	return s.stallEnded
}
