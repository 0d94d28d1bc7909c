package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dflock-sdk/go/wire"
)

// aLongTimeAgo is a deadline in the past: it interrupts pending I/O at once.
var aLongTimeAgo = time.Unix(1, 0)

// dialAs opens, authenticates and registers a connection of the given role
// (Config.OnDial) whose incoming lines are capped at maxLine. init sets the
// connection's hooks before its reader starts. ctx bounds it, and so does
// DialTimeout. A network failure marks the server down if role is roleLane
// or no connection to the server is alive (see dialFailed). After an auth
// refusal it fails at once while the hold lasts (authHold), unless probe
// is set. A ctx that has already ended dials nothing: that is no dial
// failure (Stats.DialFailures, OnDial), and no auth trial is taken.
func (p *Pool) dialAs(ctx context.Context, role string, probe bool, maxLine int, init func(*conn)) (*conn, error) {
	if err := ctx.Err(); err != nil {
		if p.closed.Load() {
			err = ErrClosed // as dialFailed says it
		}
		return nil, serverErr(p.cfg.Addr, err, nil)
	}
	trial := false
	if !probe {
		var err error
		if trial, err = p.authHold.enter(); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	c, err := p.dialConn(ctx, role == roleLane, maxLine, init)
	p.authHold.done(trial, err)
	if p.cfg.OnDial != nil {
		p.cfg.OnDial(role, time.Since(start), err)
	}
	return c, err
}

func (p *Pool) dialConn(ctx context.Context, lane bool, maxLine int, init func(*conn)) (*conn, error) {
	wc, ping, err := p.handshake(ctx, maxLine, lane)
	if err != nil {
		return nil, err
	}
	c := p.newConn(wc, ping)
	if init != nil {
		init(c)
	}
	if err := p.register(c); err != nil {
		_ = wc.Close()
		return nil, err
	}
	p.dials.Add(1)
	p.reached()
	return c, nil
}

// handshake dials, wraps TLS, authenticates and pings (one write, so it
// costs one round trip beyond TCP and TLS; the ping tells v1.14+ servers
// from older ones and proves that the server really serves the
// connection, e.g. that it was not accepted over --max-connections and
// closed at once). lane says whether a network failure marks the server
// down unconditionally (see dialFailed).
func (p *Pool) handshake(parent context.Context, maxLine int, lane bool) (*wire.Conn, uint32, error) {
	ctx, cancel := context.WithTimeoutCause(parent, p.cfg.DialTimeout, errDialTimeout)
	defer cancel()
	// Close ends every dial at once, whoever's context it runs under
	// (Query and DialListener dial under the caller's).
	defer context.AfterFunc(p.ctx, cancel)()
	nc, err := p.cfg.Dial(ctx, "tcp", p.cfg.Addr)
	if err != nil && !isNilConn(nc) {
		// A dialer's half-made connection (a tunnel whose negotiation
		// failed): closed apart like a failed handshake's.
		p.closeFailed(nc, func() { _ = nc.Close() })
	}
	if err == nil && isNilConn(nc) {
		err = errNilConn // a broken Config.Dial: a failed dial, not a crash
	}
	if err != nil {
		return nil, 0, p.dialFailed(parent, dialTimedOut(ctx, err), lane)
	}
	// From here ctx bounds the handshake through the connection: its
	// deadline is the socket's, and its end (the caller's, DialTimeout's,
	// Close's) poisons that deadline. A connection that is not a kernel
	// socket may have deadlines that do nothing (an SSH channel's setters
	// fail): its close, on that goroutine, ends the exchange instead.
	// closeRaw closes it once whoever gets there first, since a user's
	// Close need not be idempotent (crypto/tls's HandshakeContext, used
	// before, closed it too when ctx ended: twice in all).
	raw := nc
	closeRaw := sync.OnceFunc(func() { _ = raw.Close() })
	userConn := !kernelSocket(raw)
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() {
		_ = raw.SetDeadline(aLongTimeAgo)
		if userConn {
			closeRaw()
		}
	})
	if p.tls != nil {
		tc := tls.Client(raw, p.tls)
		if err := tc.Handshake(); err != nil {
			if !stop() || errors.Is(err, os.ErrDeadlineExceeded) {
				err = cutByContext(ctx, err)
			}
			p.closeFailed(raw, closeRaw)
			return nil, 0, p.dialFailed(parent, p.closedInHandshake(dialTimedOut(ctx, fmt.Errorf("TLS handshake: %w", err))), lane)
		}
		nc = tc
	}
	wc := wire.NewConn(nc, wire.ConnOptions{MaxLine: maxLine, Secret: p.secret})
	ping, err := p.greet(wc)
	err = greetTimedOut(ctx, err)
	if err == nil && wc.Buffered() == 0 && p.tls != nil && (!userConn || rawSocket(raw) != nil) {
		// crypto/tls hands bufio one record per Read: a stray record
		// behind the last reply's sits in the tls.Conn, not in wc's
		// buffer. A read that cannot wait pulls it out if it is there.
		// An expired deadline fails the read before any syscall: bytes
		// still in the kernel need a read that may take them. Only over
		// a socket: a WithDialer transport without one may have no
		// deadlines (the read would wait), or end crypto/tls with its own
		// timeout error (yamux's is not Temporary); there the reader
		// finds a stray record, as bytes nobody asked for, unless the
		// first request is sent before it looks.
		rdl := aLongTimeAgo
		if socketHasBytes(nc) {
			rdl = time.Now().Add(20 * time.Millisecond)
		}
		_ = nc.SetReadDeadline(rdl)
		if _, perr := wc.AwaitLine(); perr != nil && (!wire.IsTimeout(perr) || errors.Is(perr, wire.ErrConnBroken)) {
			err = perr
		}
		if dl, ok := ctx.Deadline(); ok && err == nil {
			_ = nc.SetReadDeadline(dl)
		}
	}
	if err == nil && wc.Buffered() > 0 {
		// Bytes after the handshake's last reply answer nothing: the
		// first request would take them for its reply.
		err = errStrayBytes
	}
	if !stop() {
		switch {
		case err == nil:
			err = ctx.Err() // the deadline is poisoned
		case userConn && !errors.Is(err, os.ErrDeadlineExceeded):
			// Its close, not its deadline, ended the exchange.
			err = greetTimedOut(ctx, fmt.Errorf("%w (the connection was closed to end it): %w", os.ErrDeadlineExceeded, err))
		}
	}
	if err == nil {
		// A connection whose deadlines fail is usable: the keepalive still
		// breaks it if the server stops answering (see conn.noDeadlines).
		_ = nc.SetDeadline(time.Time{})
	}
	if err != nil {
		p.closeFailed(raw, closeRaw)
		// errors.Is, not errors.As: an error whose text held the token
		// (redact) is no *ServerError, and must still be classified.
		if errors.Is(err, ErrAuth) {
			p.dialFailures.Add(1)
			p.reached() // refused, but by the server
			return nil, 0, err
		}
		if errors.Is(err, errAuthReply) {
			// A token for a server without auth (it answers `error`):
			// an auth misconfiguration, like a refused token.
			p.dialFailures.Add(1)
			p.reached()
			return nil, 0, serverErr(p.cfg.Addr, ErrAuth, err)
		}
		return nil, 0, p.dialFailed(parent, p.closedInHandshake(dialTimedOut(ctx, err)), lane)
	}
	return wc, ping, nil
}

// closeFailed closes the connection of a failed handshake: a kernel socket
// at once; one that WithDialer made on a goroutine of its own, counted in
// p.io so that Close waits for it, since a user's Close may take its time
// and this may be the caller's goroutine (Query, whose caller's context may
// have ended the handshake) — unless the pool is closing, which waits for
// this dial anyway.
func (p *Pool) closeFailed(raw net.Conn, closeRaw func()) {
	if kernelSocket(raw) {
		closeRaw()
		return
	}
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		closeRaw()
		return
	}
	p.io.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.io.Done()
		closeRaw()
	}()
}

// cutByContext is the error of a TLS handshake that ctx's end cut short (its
// deadline, reached or poisoned, or the close of a connection that is not a
// kernel socket): ctx's error, as crypto/tls's HandshakeContext returns,
// which dialTimedOut turns into errDialTimeout if it was DialTimeout's.
// Past the deadline ctx's own timer is due (see greetTimedOut).
func cutByContext(ctx context.Context, err error) error {
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		<-ctx.Done()
	}
	if ctx.Err() == nil {
		return err
	}
	return ctx.Err()
}

// errDialTimeout is the cause of a handshake cut short by Config.DialTimeout.
// It matches os.ErrDeadlineExceeded (as a read that timed out does), never
// context.DeadlineExceeded, which would tell the caller that its own
// context's deadline passed.
var errDialTimeout = fmt.Errorf("dial timeout: %w", os.ErrDeadlineExceeded)

// dialTimedOut rewrites err, a handshake failure, if DialTimeout ended the
// handshake's ctx: a dialer, net.Dialer's connect and crypto/tls's handshake
// then return the context's error (net's matches it too), which stays in
// the text but leaves the chain for errDialTimeout. Any other err, and one
// the caller's context ended, is returned as it is.
func dialTimedOut(ctx context.Context, err error) error {
	if context.Cause(ctx) != errDialTimeout || !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %v", errDialTimeout, err)
}

// greetTimedOut rewrites err, a failure of the handshake's exchange (auth,
// ping) at the socket's deadline, which is ctx's: a bare "read: i/o
// timeout" reads like an established connection breaking. Past the
// deadline ctx's own timer is due (see callerEnded), and its cause says
// whose deadline it was: DialTimeout's becomes errDialTimeout, as a dial or
// TLS handshake it cut short does; the caller's keeps the read's error in
// the chain, only saying what was awaited.
func greetTimedOut(ctx context.Context, err error) error {
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		<-ctx.Done()
	}
	if context.Cause(ctx) == errDialTimeout {
		return fmt.Errorf("%w: %v", errDialTimeout, &handshakeUnanswered{err: err})
	}
	// Cancelled (by the caller, or by Close) rather than timed out: the
	// poisoned deadline is not the server's silence.
	return &handshakeUnanswered{err: err, cut: errors.Is(ctx.Err(), context.Canceled)}
}

// handshakeUnanswered is a handshake read cut short by its deadline: ctx's,
// or one poisoned to end it (cut).
type handshakeUnanswered struct {
	err error
	cut bool
}

func (e *handshakeUnanswered) Error() string {
	what := "no answer to the handshake (auth, ping): "
	if e.cut {
		what = "handshake (auth, ping) cut short before its answer: "
	}
	return what + strings.TrimPrefix(e.err.Error(), "dflock: ")
}

func (e *handshakeUnanswered) Unwrap() error { return e.err }

// errClosedInHandshake names the likely causes of a connection that the
// server accepted and closed before answering the handshake: dflockd does
// exactly that over --max-connections (and --max-connections-per-ip), and
// its TLS listener to a client speaking plain text, writing nothing.
var errClosedInHandshake = errors.New("the server closed the connection during the handshake; it may be at its connection limit (--max-connections)")

// closedInHandshake adds errClosedInHandshake to a handshake error caused by
// the server closing the connection (EOF, reset, broken pipe).
func (p *Pool) closedInHandshake(err error) error {
	if !peerClosed(err) {
		return err
	}
	if p.tls == nil {
		return fmt.Errorf("%w, or expect TLS (WithTLS): %w", errClosedInHandshake, err)
	}
	return fmt.Errorf("%w: %w", errClosedInHandshake, err)
}

// peerClosed reports whether err says the server closed the connection
// (EOF, reset, broken pipe).
func peerClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED)
}

// errLongToken explains a refused token longer than servers before v1.15
// accept on any line.
var errLongToken = errors.New("the token is longer than 256 bytes, which servers before v1.15 refuse whatever it is")

// errNilConn is the dial error of a Config.Dial that returned neither a
// connection nor an error.
var errNilConn = errors.New("the dialer returned no connection and no error")

// isNilConn reports whether nc is nil, or a nil pointer (or other nil
// reference) in a non-nil net.Conn: its methods would most likely
// dereference it, in a dial goroutine where a panic ends the process.
func isNilConn(nc net.Conn) bool {
	if nc == nil {
		return true
	}
	switch v := reflect.ValueOf(nc); v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		return v.IsNil()
	}
	return false
}

var errAuthReply = errors.New("unexpected reply to auth (does the server have auth enabled?)")

// greet sends the handshake (auth, ping) and reads the replies.
func (p *Pool) greet(wc *wire.Conn) (_ uint32, err error) {
	if p.hasAuth {
		defer func() { err = redact(err, p.secret) }()
	}
	if _, err := wc.WriteRaw(p.hello); err != nil {
		return 0, err
	}
	if p.hasAuth {
		r, err := wc.ReadReply(wire.CmdAuth)
		if err != nil {
			return 0, err
		}
		switch r.Status {
		case wire.StatusOK:
		case wire.StatusErrAuth:
			p.log.Warn("dflock: server refused the auth token")
			var cause error
			if len(p.cfg.AuthToken) > wire.MaxLine {
				cause = errLongToken
			}
			return 0, serverErr(p.cfg.Addr, ErrAuth, cause)
		case wire.StatusErrDraining:
			return 0, serverErr(p.cfg.Addr, ErrDraining, nil)
		default:
			return 0, fmt.Errorf("%w: %q", errAuthReply, statusWord(r))
		}
	}
	r, err := wc.ReadReply(wire.CmdPing)
	if err != nil {
		return 0, err
	}
	switch r.Status {
	case wire.StatusOK:
		return pingOK, nil
	case wire.StatusError:
		return pingUnsupported, nil
	case wire.StatusErrAuth:
		// The server requires auth and no token is configured: the ping
		// was the first request, so the server refused it and closes.
		p.log.Warn("dflock: server requires an auth token and none is configured")
		return 0, serverErr(p.cfg.Addr, ErrAuth, errors.New("no auth token configured"))
	case wire.StatusErrDraining:
		return 0, serverErr(p.cfg.Addr, ErrDraining, nil)
	}
	return 0, fmt.Errorf("%w: unexpected reply to ping: %q", wire.ErrProtocol, statusWord(r))
}

func statusWord(r wire.Reply) string {
	if w := r.Word; w != "" {
		if len(w) > 64 { // an unknown error_* word may be as long as the line cap
			w = w[:64] + "..."
		}
		return w // shown with %q
	}
	return fmt.Sprintf("status %d", r.Status)
}

// callerEnded returns ctx's error if ctx has ended or its deadline has
// passed. The handshake's socket deadline is ctx's own, and the two timers
// fire in no set order: a handshake cut short by the caller's deadline can
// fail before ctx.Err() says so, and would otherwise be blamed on the
// server (and mark a healthy, merely slow server down for every caller).
// Past the deadline ctx's own timer is due, so waiting for Done is brief,
// and it yields ctx's real error rather than a guess.
func callerEnded(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

// dialFailed classifies a dial failure: if the caller's context ended it is
// the caller's error; otherwise it is an ErrUnavailable naming the server.
//
// A failed lane dial (the probe's included) marks the server down: calls
// that need a new connection then fail fast while the probe re-dials with
// backoff, instead of every call dialling again. Any other failed dial (wait
// pool, listener, Query) marks it down only if no connection to the
// server is alive: one refused or timed-out dial (a server at
// --max-connections, a dial timeout under load) must not make a server
// whose lane connections are healthy fail fast; the failure is that call's
// error alone.
func (p *Pool) dialFailed(parent context.Context, err error, lane bool) error {
	p.dialFailures.Add(1)
	if p.closed.Load() {
		return serverErr(p.cfg.Addr, ErrClosed, nil)
	}
	if perr := callerEnded(parent); perr != nil {
		if p.closed.Load() {
			return serverErr(p.cfg.Addr, ErrClosed, nil)
		}
		return serverErr(p.cfg.Addr, perr, err)
	}
	// Any other failure counts: refused, reset, timeout, TLS, EOF.
	se := serverErr(p.cfg.Addr, ErrUnavailable, err)
	p.markDown(se, !lane)
	return se
}
