package testutil

import (
	"context"
	"errors"
	"io"
	"net"
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

// Proxy sits between a client and a server and injects network faults:
// latency, a blackhole, connection resets and refused connections. It does
// not look at the bytes, so it works for any TCP protocol, TLS included.
//
// Each accepted client connection gets its own connection to the target; the
// two form a pair. A half-close (FIN) is forwarded as a half-close, and a
// reset from either peer is forwarded as a reset. All methods are safe for
// concurrent use. The zero value is not usable; call NewProxy.
type Proxy struct {
	target string
	ln     net.Listener
	ctx    context.Context // cancelled by Close; aborts dials to the target
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the proxy starts

	latency   atomic.Int64 // time.Duration, one way
	blackhole atomic.Bool
	refuse    atomic.Bool
	received  atomic.Int64 // bytes read from either side, for tests
	swallowed atomic.Int64 // bytes dropped by the blackhole, for tests

	mu     sync.Mutex
	closed bool
	pairs  map[*proxyPair]struct{}
}

// NewProxy starts a proxy listening on a random loopback port and forwarding
// every connection to target (host:port). The target need not be up: a client
// connection whose dial to the target fails is reset.
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target: target,
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		pairs:  make(map[*proxyPair]struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the host:port clients connect to.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLatency adds d to the delivery of every chunk of bytes, in both
// directions, so a request/reply round trip takes at least 2*d longer. The
// delay applies to bytes read after the call; order is always preserved, so
// lowering the latency does not let new bytes overtake old ones. d <= 0
// removes the latency.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(max(d, 0))) }

// Blackhole, while on, silently drops every byte in both directions,
// including half-closes: connections stay open and nothing is delivered. Bytes
// dropped are gone; turning the blackhole off delivers only bytes sent after.
// New connections are still accepted and dialled through, but get nothing
// through either.
func (p *Proxy) Blackhole(on bool) { p.blackhole.Store(on) }

// ResetAll aborts every proxied connection with a TCP reset on both sides:
// the client and the server each see ECONNRESET. New connections are not
// affected.
func (p *Proxy) ResetAll() {
	for _, pr := range p.snapshot() {
		pr.close(true)
	}
}

// RefuseNew, while on, resets every new client connection as soon as it is
// accepted, without dialling the target. Established connections are not
// affected.
func (p *Proxy) RefuseNew(on bool) { p.refuse.Store(on) }

// Conns is the number of connection pairs currently proxied.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pairs)
}

// Close stops listening, closes every connection pair and waits for all of
// the proxy's goroutines to exit. Later calls return nil.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()

	err := p.ln.Close()
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

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors or similar: back off, as net/http does.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		if p.refuse.Load() {
			proxyAbort(c)
			continue
		}
		p.wg.Add(1)
		go p.connect(c)
	}
}

// connect dials the target for client and, if the proxy is still open,
// starts forwarding.
func (p *Proxy) connect(client net.Conn) {
	defer p.wg.Done()
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

// proxyPair is one client connection and its connection to the target.
type proxyPair struct {
	p              *Proxy
	client, server net.Conn
	done           chan struct{} // closed by close
	once           sync.Once
	finished       atomic.Int32 // directions that ended with a forwarded (or swallowed) FIN
}

// proxyChunk is a run of bytes, or the end of a direction (eof), due for
// delivery at a given time.
type proxyChunk struct {
	data []byte
	due  time.Time
	eof  bool
	drop bool // the eof arrived while blackholed: do not forward it
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

// read moves bytes from src into q, stamped with their delivery time.
func (pr *proxyPair) read(src net.Conn, q chan<- proxyChunk) {
	defer pr.p.wg.Done()
	buf := make([]byte, proxyChunkSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			pr.p.received.Add(int64(n))
			if pr.p.blackhole.Load() {
				pr.p.swallowed.Add(int64(n))
			} else {
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
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			c := proxyChunk{
				eof:  true,
				drop: pr.p.blackhole.Load(),
				due:  time.Now().Add(time.Duration(pr.p.latency.Load())),
			}
			select {
			case q <- c:
			case <-pr.done:
			}
			return
		default:
			pr.close(proxyIsReset(err))
			return
		}
	}
}

// write delivers the chunks in q to dst once they are due.
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
		if c.eof {
			if !c.drop && !pr.p.blackhole.Load() {
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
			}
			if pr.finished.Add(1) == 2 {
				pr.close(false)
			}
			return
		}
		if pr.p.blackhole.Load() {
			pr.p.swallowed.Add(int64(len(c.data)))
			continue
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

func proxySetLinger0(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
}

// proxyIsReset reports whether err means the peer reset the connection, which the
// proxy then passes on to the other side.
func proxyIsReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
