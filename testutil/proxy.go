package testutil

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// proxyDialTimeout bounds the proxy's dial to its target.
const proxyDialTimeout = 5 * time.Second

// proxyChunkSize is the largest chunk the proxy reads and forwards at once.
const proxyChunkSize = 32 << 10

// proxyQueueLen is how many chunks may wait for their latency to pass in
// each direction of a connection before the proxy stops reading from the
// sender (which then sees ordinary TCP back-pressure).
const proxyQueueLen = 64

// proxyBacklog is the accept backlog the proxy's listener normally has (the
// kernel caps it at its own maximum, as it does Go's default).
const proxyBacklog = 1<<16 - 1

// proxyPlugWait bounds how long Blackhole waits for its plug to fill the
// accept queue (on loopback that takes microseconds, unless a client's
// connection took the place first and the plug's SYN is being dropped).
const proxyPlugWait = 100 * time.Millisecond

// proxyPlugIP is the loopback address plugs dial from, so that the accept
// loop knows a plug by its source alone. Knowing it by the address its dial
// returned is not enough: a dial cancelled just as it connects returns an
// error although the kernel completed it (Go's net, issue 16523), and that
// connection, left in the accept queue, would otherwise be taken for a
// client's and connected through to the target. On a platform that will
// not bind it (only 127.0.0.1 is configured on macOS), plugs dial from the
// default address and are known by what their dial returned.
var proxyPlugIP = net.IPv4(127, 0, 0, 2)

// proxyRelistenRetry bounds how long the proxy retries listening again on
// its address (after RefuseNew) while the port is still in use.
const proxyRelistenRetry = 5 * time.Second

// Proxy sits between a client and a server and injects network faults:
// latency, a blackhole (a partition), connection resets, and the two ways a
// new connection is turned away — refused (nothing listening) or accepted
// and closed (a server at its connection cap). It does not look at the
// bytes, so it works for any TCP protocol, TLS included.
//
// Each accepted client connection gets its own connection to the target; the
// two form a pair. A half-close (FIN) is forwarded as a half-close, and a
// reset from either peer is forwarded as a reset. All methods are safe for
// concurrent use. The zero value is not usable; call NewProxy.
//
// The proxy reserves 127.0.0.2 for itself (see Blackhole): a connection
// from that address is closed, not proxied.
type Proxy struct {
	target string
	addr   string          // where the proxy listens; stable across RefuseNew
	ctx    context.Context // cancelled by Close; aborts dials to the target
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the proxy starts

	latency  atomic.Int64 // time.Duration, one way
	received atomic.Int64 // bytes read from either side, for tests
	turned   atomic.Int64 // connections closed at once by CloseNew

	opMu sync.Mutex // serialises the fault switches and Close

	mu        sync.Mutex
	closed    bool
	pairs     map[*proxyPair]struct{}
	ln        *net.TCPListener // nil while nothing listens (RefuseNew)
	changed   chan struct{}    // closed (and replaced) to make the accept loop look again
	healed    chan struct{}    // non-nil while blackholed; closed when the blackhole lifts
	refuse    bool
	closeNew  bool
	plugs     map[string]struct{} // local addresses of plugs not dialled from proxyPlugIP, not yet accepted
	plugStop  context.CancelFunc  // ends the current blackhole's plug dial
	plugDone  chan struct{}       // closed when that plug goroutine has exited
	plugReady chan struct{}       // closed when that plug's dial has returned
	lnRetries bool                // the accept loop must retry listening
}

// NewProxy starts a proxy listening on a random loopback port and forwarding
// every connection to target (host:port). The target need not be up: a client
// connection whose dial to the target fails is reset.
//
// The caller must Close it, which stops its goroutines; in a test:
// t.Cleanup(func() { _ = p.Close() }).
func NewProxy(target string) (*Proxy, error) {
	return listenProxy("127.0.0.1:0", target)
}

// listenProxy is NewProxy listening on addr. Only RunProcess (-addr with
// -latency) uses it, with none of the fault switches.
func listenProxy(addr, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target:  target,
		addr:    ln.Addr().String(),
		ln:      ln.(*net.TCPListener),
		ctx:     ctx,
		cancel:  cancel,
		pairs:   make(map[*proxyPair]struct{}),
		changed: make(chan struct{}),
		plugs:   make(map[string]struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the host:port clients connect to.
func (p *Proxy) Addr() string { return p.addr }

// SetLatency adds d to the delivery of every chunk of bytes, in both
// directions, so a request/reply round trip takes at least 2*d longer. The
// delay applies to bytes read after the call; order is always preserved, so
// lowering the latency does not let new bytes overtake old ones. d <= 0
// removes the latency.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(max(d, 0))) }

// Blackhole, while on, partitions the network between clients and target,
// as a dropped link or a firewall that silently drops packets would:
//
//   - Established connections stay open, but the proxy stops reading from
//     either side and delivers nothing (bytes and half-closes it had already
//     read are held too). A peer's writes therefore fill the socket buffers
//     and then block, as they do when TCP gets no acknowledgements.
//   - New connections get no answer: the listener's accept queue is
//     plugged, so a client's SYN is dropped and its dial hangs until the
//     client gives up (on Linux and the BSDs; where the kernel will not
//     shrink a listening socket's backlog, the dial completes but nothing is
//     answered). A connection that did get into the queue (one racing the
//     start of the blackhole) is not connected to the target before the
//     blackhole ends.
//
// When the blackhole lifts, TCP's retransmissions win: everything held is
// delivered in order, nothing is lost or duplicated, and a dial still
// pending completes at its next SYN retransmission and is connected through.
// A partition that a connection does not survive (its peer's retransmission
// timeout, TCP_USER_TIMEOUT or keepalive gave up, or a middlebox forgot it)
// is Blackhole(true), then ResetAll, then Blackhole(false). Meanwhile a peer
// closing its side, or timing out, is seen only once the blackhole lifts.
// Blackhole takes precedence over RefuseNew and CloseNew: a partitioned
// network answers nothing, whatever is behind it.
func (p *Proxy) Blackhole(on bool) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	if p.closed || (p.healed != nil) == on {
		p.mu.Unlock()
		return
	}
	if on {
		p.healed = make(chan struct{})
		p.syncListenerLocked()
		p.plugLocked()
		p.notifyLocked()
		ready := p.plugReady
		p.mu.Unlock()
		if ready != nil {
			// Return with the queue plugged, so that a dial made after
			// Blackhole returns finds no room. If a client's connection took
			// the place first, the plug's own dial hangs: that bounds the wait.
			t := time.NewTimer(proxyPlugWait)
			defer t.Stop()
			select {
			case <-ready:
			case <-t.C:
			}
		}
		return
	}
	// Lift: first settle the plug, so that the accept loop can tell it
	// from a client when it finds it in the queue.
	stop, done := p.plugStop, p.plugDone
	p.plugStop, p.plugDone, p.plugReady = nil, nil, nil
	p.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.healed)
	p.healed = nil
	if p.ln != nil {
		proxySetBacklog(p.ln, proxyBacklog)
	}
	p.syncListenerLocked()
	p.notifyLocked()
}

// ResetAll aborts every proxied connection with a TCP reset on both sides:
// the client and the server each see ECONNRESET. New connections are not
// affected. During a blackhole it stands for connections that the partition
// killed: they are gone (held bytes with them) when the blackhole lifts.
func (p *Proxy) ResetAll() {
	for _, pr := range p.snapshot() {
		pr.close(true)
	}
}

// RefuseNew, while on, stops listening, as a stopped server does: new
// connections are refused by the kernel (the client's dial fails at once
// with ECONNREFUSED), and connections still in the accept queue when it
// begins are reset. Established connections are not affected. Turning it off
// listens again on the same address (retrying for a few seconds, and then in
// the background, while the port is in use).
func (p *Proxy) RefuseNew(on bool) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.refuse == on {
		return
	}
	p.refuse = on
	p.syncListenerLocked()
	deadline := time.Now().Add(proxyRelistenRetry)
	for p.wantListenerLocked() && p.ln == nil && time.Now().Before(deadline) {
		p.mu.Unlock()
		time.Sleep(20 * time.Millisecond) // a port in use: nothing to wait on but time
		p.mu.Lock()
		if p.closed {
			return
		}
		p.syncListenerLocked()
	}
	p.notifyLocked()
}

// CloseNew, while on, accepts every new connection and closes it at once
// with a FIN, writing nothing and without dialling the target — what dflockd
// does with a connection over its --max-connections cap: the client's dial
// succeeds and its first read sees EOF. Established connections are not
// affected.
func (p *Proxy) CloseNew(on bool) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closeNew = on
}

// TurnedAway is the number of connections CloseNew has accepted and closed
// so far: what a connection-cap fault did, for tests that check their
// faults had an effect.
func (p *Proxy) TurnedAway() int64 { return p.turned.Load() }

// Conns is the number of connection pairs currently proxied.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pairs)
}

// Close stops listening, closes every connection pair and waits for all of
// the proxy's goroutines to exit. Later calls return nil.
func (p *Proxy) Close() error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var err error
	if p.ln != nil {
		err = p.ln.Close()
		p.ln = nil
	}
	p.notifyLocked()
	p.mu.Unlock()

	p.cancel()
	for _, pr := range p.snapshot() {
		pr.close(false)
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) snapshot() []*proxyPair {
	p.mu.Lock()
	defer p.mu.Unlock()
	pairs := make([]*proxyPair, 0, len(p.pairs))
	for pr := range p.pairs {
		pairs = append(pairs, pr)
	}
	return pairs
}

// notifyLocked wakes the accept loop to look at the state again.
func (p *Proxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// wantListenerLocked reports whether something should listen on the
// address: always, unless refusing — and even then during a blackhole,
// whose dropped SYNs need a listener to drop them.
func (p *Proxy) wantListenerLocked() bool { return !p.closed && (p.healed != nil || !p.refuse) }

// syncListenerLocked opens or closes the listener to match the state. An
// open that fails (the port is in use) is left to the accept loop to retry.
func (p *Proxy) syncListenerLocked() {
	want := p.wantListenerLocked()
	switch {
	case want && p.ln == nil:
		ln, err := net.Listen("tcp", p.addr)
		if err != nil {
			p.lnRetries = true
			return
		}
		p.lnRetries = false
		p.ln = ln.(*net.TCPListener)
		p.plugLocked()
	case !want && p.ln != nil:
		_ = p.ln.Close() // the kernel resets what is still in the accept queue
		p.ln = nil
		p.lnRetries = false
		clear(p.plugs)
	case !want:
		p.lnRetries = false
	}
}

// plugLocked, during a blackhole, makes the listener drop new SYNs: it stops
// accepting (the deadline wakes a pending Accept), shrinks the backlog to
// its minimum and fills the one place left with a connection of its own —
// the plug — so that the kernel has no room for anyone else's handshake.
func (p *Proxy) plugLocked() {
	if p.healed == nil || p.ln == nil || p.plugStop != nil {
		return
	}
	_ = p.ln.SetDeadline(time.Unix(1, 0))
	proxySetBacklog(p.ln, 0)
	ctx, stop := context.WithCancel(p.ctx)
	done, ready := make(chan struct{}), make(chan struct{})
	p.plugStop, p.plugDone, p.plugReady = stop, done, ready
	p.wg.Add(1)
	go p.plug(ctx, done, ready)
}

// plug connects to the proxy's own listener and holds the connection until
// ctx ends. If a client's connection took the queue's place first, the
// plug's own SYN is dropped and its dial just waits for ctx.
func (p *Proxy) plug(ctx context.Context, done, ready chan struct{}) {
	defer p.wg.Done()
	defer close(done)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: proxyPlugIP}}
	c, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil && ctx.Err() == nil {
		d.LocalAddr = nil // proxyPlugIP is not usable here
		c, err = d.DialContext(ctx, "tcp", p.addr)
	}
	if err != nil {
		close(ready)
		return
	}
	if !proxyIsPlug(c.LocalAddr()) {
		p.mu.Lock()
		p.plugs[c.LocalAddr().String()] = struct{}{}
		p.mu.Unlock()
	}
	close(ready)
	<-ctx.Done()
	_ = c.Close()
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return
		}
		if p.lnRetries {
			p.syncListenerLocked()
		}
		ln, changed, retry := p.ln, p.changed, p.lnRetries
		hold := p.healed != nil
		if ln != nil && !hold {
			_ = ln.SetDeadline(time.Time{})
		}
		p.mu.Unlock()
		if ln == nil || hold {
			var again <-chan time.Time
			if retry {
				again = time.After(20 * time.Millisecond)
			}
			select {
			case <-changed:
			case <-again:
			case <-p.ctx.Done():
				return
			}
			continue
		}
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
				continue // closed or woken by a state change: look again
			}
			// Out of file descriptors or similar: back off, as net/http does.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		p.admit(c)
	}
}

// admit decides what becomes of an accepted client connection.
func (p *Proxy) admit(c net.Conn) {
	p.mu.Lock()
	if proxyIsPlug(c.RemoteAddr()) {
		p.mu.Unlock()
		_ = c.Close()
		return
	}
	if _, ok := p.plugs[c.RemoteAddr().String()]; ok {
		delete(p.plugs, c.RemoteAddr().String())
		p.mu.Unlock()
		_ = c.Close()
		return
	}
	if p.closed {
		p.mu.Unlock()
		_ = c.Close()
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	go p.connect(c)
}

// connect waits out a blackhole, then turns client away or dials the target
// for it and, if the proxy is still open, starts forwarding.
func (p *Proxy) connect(client net.Conn) {
	defer p.wg.Done()
	refuse, closeNew, ok := p.awaitHeal()
	switch {
	case !ok:
		_ = client.Close()
		return
	case refuse: // accepted just as the listener closed: as close to a refusal as it gets
		proxyAbort(client)
		return
	case closeNew:
		p.turned.Add(1)
		_ = client.Close()
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, proxyDialTimeout)
	var d net.Dialer
	server, err := d.DialContext(ctx, "tcp", p.target)
	cancel()
	if err != nil {
		proxyAbort(client)
		return
	}
	pr := &proxyPair{p: p, client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = client.Close()
		_ = server.Close()
		return
	}
	p.pairs[pr] = struct{}{}
	p.wg.Add(4)
	p.mu.Unlock()

	up := make(chan proxyChunk, proxyQueueLen)
	down := make(chan proxyChunk, proxyQueueLen)
	go pr.read(client, up)
	go pr.write(server, up)
	go pr.read(server, down)
	go pr.write(client, down)
}

// awaitHeal waits while the proxy is blackholed and then reports how new
// connections are to be turned away; ok is false if the proxy closed.
func (p *Proxy) awaitHeal() (refuse, closeNew, ok bool) {
	for {
		p.mu.Lock()
		healed, refuse, closeNew := p.healed, p.refuse, p.closeNew
		p.mu.Unlock()
		if healed == nil {
			return refuse, closeNew, true
		}
		select {
		case <-healed:
		case <-p.ctx.Done():
			return false, false, false
		}
	}
}

// passable waits while the proxy is blackholed; false if the pair closed
// meanwhile.
func (pr *proxyPair) passable() bool {
	for {
		pr.p.mu.Lock()
		healed := pr.p.healed
		pr.p.mu.Unlock()
		if healed == nil {
			return true
		}
		select {
		case <-healed:
		case <-pr.done:
			return false
		}
	}
}

// proxyPair is one client connection and its connection to the target.
type proxyPair struct {
	p              *Proxy
	client, server net.Conn
	done           chan struct{} // closed by close
	once           sync.Once
	finished       atomic.Int32 // directions that ended with a forwarded FIN
}

// proxyChunk is a run of bytes, or the end of a direction (eof), due for
// delivery at a given time.
type proxyChunk struct {
	data  []byte
	due   time.Time
	eof   bool
	reset bool // the peer reset its side: passed on in order, after the bytes before it
}

// close closes both connections, with a reset if asked, and forgets the pair.
func (pr *proxyPair) close(reset bool) {
	pr.once.Do(func() {
		if reset {
			proxySetLinger0(pr.client)
			proxySetLinger0(pr.server)
		}
		_ = pr.client.Close()
		_ = pr.server.Close()
		close(pr.done)
		pr.p.mu.Lock()
		delete(pr.p.pairs, pr)
		pr.p.mu.Unlock()
	})
}

// read moves bytes from src into q, stamped with their delivery time. It
// does not read during a blackhole; a read already under way when one begins
// may still return a chunk, which write then holds.
func (pr *proxyPair) read(src net.Conn, q chan<- proxyChunk) {
	defer pr.p.wg.Done()
	buf := make([]byte, proxyChunkSize)
	for {
		if !pr.passable() {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			pr.p.received.Add(int64(n))
			c := proxyChunk{
				data: append([]byte(nil), buf[:n]...),
				due:  time.Now().Add(time.Duration(pr.p.latency.Load())),
			}
			select {
			case q <- c:
			case <-pr.done:
				return
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			c := proxyChunk{eof: true, due: time.Now().Add(time.Duration(pr.p.latency.Load()))}
			select {
			case q <- c:
			case <-pr.done:
			}
			return
		case proxyIsReset(err):
			// Held like an EOF: a reset crosses neither a blackhole nor
			// the bytes sent before it.
			c := proxyChunk{reset: true, due: time.Now().Add(time.Duration(pr.p.latency.Load()))}
			select {
			case q <- c:
			case <-pr.done:
			}
			return
		default:
			pr.close(false)
			return
		}
	}
}

// write delivers the chunks in q to dst once they are due and no blackhole
// holds them.
func (pr *proxyPair) write(dst net.Conn, q <-chan proxyChunk) {
	defer pr.p.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var c proxyChunk
		select {
		case c = <-q:
		case <-pr.done:
			return
		}
		if wait := time.Until(c.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-pr.done:
				return
			}
		}
		if !pr.passable() {
			return
		}
		if c.reset {
			pr.close(true)
			return
		}
		if c.eof {
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			if pr.finished.Add(1) == 2 {
				pr.close(false)
			}
			return
		}
		if _, err := dst.Write(c.data); err != nil {
			pr.close(proxyIsReset(err))
			return
		}
	}
}

// proxyAbort closes c with a TCP reset instead of a FIN.
func proxyAbort(c net.Conn) {
	proxySetLinger0(c)
	_ = c.Close()
}

// proxySetBacklog changes the accept backlog of a listening socket by
// calling listen(2) on it again, which Linux and the BSDs honour (Windows
// ignores it; then a blackhole's new connections complete their handshake,
// but still get nothing).
func proxySetBacklog(ln *net.TCPListener, n int) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) { _ = proxyListen(syscall.Listen, fd, n) })
}

// proxyListen calls listen, whose descriptor type differs between platforms
// (int on Unix, Handle on Windows), on fd.
func proxyListen[T ~int | ~uintptr](listen func(T, int) error, fd uintptr, n int) error {
	return listen(T(fd), n)
}

func proxySetLinger0(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
}

// proxyIsPlug reports whether addr is a plug's source address (see
// proxyPlugIP).
func proxyIsPlug(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	return ok && ta.IP.Equal(proxyPlugIP)
}

// proxyIsReset reports whether err means the peer reset the connection, which the
// proxy then passes on to the other side.
func proxyIsReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
