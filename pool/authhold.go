package pool

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// After the server refuses a handshake's token, dials are held back for
// authHoldMin, doubling with every refused trial up to authHoldMax. A
// refusal cannot heal by itself (the token is fixed for the pool's
// lifetime: the server's must change), yet every call that needs a
// connection dialled again: a service retrying its calls against a server
// that refuses its token made thousands of dials a second (the server
// holds each refused connection 100 ms before closing it), and logged a
// refusal for each. The cap is the probe's: once the server takes the
// token, calls recover within authHoldMax, as they do after an outage.
const (
	authHoldMin = probeMinBackoff
	authHoldMax = probeMaxBackoff
)

// errAuthHeld is the cause of a call failed without a dial because the
// server refused the last one's token moments ago.
var errAuthHeld = errors.New("not dialled: the server refused the last dial's authentication moments ago, and dials are held back after a refusal (50 ms, doubling to 2 s while refusals last)")

// authHold holds dials back after an auth refusal (see authHoldMin). While
// it holds, a dial fails at once with the last refusal; once the hold
// ends, one dial at a time (the trial) asks the server again: a refusal
// doubles the hold, a success lifts it, anything else (the network, the
// caller's context) leaves the next dial to try.
//
// The probe does not consult it: it dials only while the server is down,
// with a backoff of its own, and its refusal arms the hold like any other.
type authHold struct {
	on atomic.Bool // a refusal since the last success (held is set); false: the fast path

	addr, secret string // for the held error (Pool.secret: it is redacted)

	mu      sync.Mutex
	held    error     // what a held-back dial fails with; nil: no hold
	until   time.Time // no dial before this
	backoff time.Duration
	trying  bool // a trial dial is under way
}

// enter decides whether a dial may go ahead. It returns the error to fail
// with at once, or trial=true for the one dial that asks the server again
// once a hold has ended (its outcome goes to done).
func (h *authHold) enter() (trial bool, err error) {
	if !h.on.Load() {
		return false, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.held == nil:
		return false, nil
	case h.trying || time.Now().Before(h.until):
		return false, h.held
	}
	h.trying = true
	return true, nil
}

// done records the outcome of a dial: err is what it returned.
func (h *authHold) done(trial bool, err error) {
	// errors.Is, not errors.As: a refusal whose text held the token
	// (redact) is no *ServerError.
	refused := err != nil && errors.Is(err, ErrAuth)
	if !refused && err != nil && !trial {
		return // a network or context failure tells nothing about the token
	}
	if err == nil && !h.on.Load() {
		return // the fast path: no hold to lift
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if trial {
		h.trying = false
	}
	switch {
	case err == nil:
		h.held, h.backoff, h.until = nil, 0, time.Time{}
		h.on.Store(false)
	case refused && (trial || h.held == nil):
		// Only a trial (or the first refusal) moves the hold: the refusals
		// of dials already under way when it began would double it at once.
		h.backoff = min(max(2*h.backoff, authHoldMin), authHoldMax)
		// Equal jitter: clients refused together do not retry together,
		// and none retries at once.
		h.until = time.Now().Add(h.backoff/2 + rand.N(h.backoff/2+1))
		h.held = redact(heldErr(h.addr, err), h.secret)
		h.on.Store(true)
	}
}

// heldErr is the error of the dials held back after refusal: ErrAuth, with
// the refusal's own cause (a token too long for the server, none
// configured, ...) after errAuthHeld.
func heldErr(addr string, refusal error) error {
	var se *ServerError
	if errors.As(refusal, &se) && se.Cause == nil {
		return serverErr(addr, ErrAuth, errAuthHeld)
	}
	if se != nil {
		refusal = se.Cause
	}
	return serverErr(addr, ErrAuth, fmt.Errorf("%w; the last refusal: %w", errAuthHeld, refusal))
}
