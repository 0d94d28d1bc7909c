package pool

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/dflock-sdk/go/wire"
)

// minQueryLine is the smallest cap Query takes: the handshake's replies
// are read under the same cap, and one too short for them would fail the
// dial as if the server were down.
const minQueryLine = 64

// Query sends req on a short-lived connection of its own — outside the
// control lane and the wait pool, so it never waits for a pool slot and never
// risks a lease-owning connection — reads one reply with a line cap of
// maxLine bytes (0 means Config.maxReplyLine, else at least 64; package
// dflock bounds it, see dflock.MaxStatsReply), and closes the connection.
// ctx bounds dial, handshake and exchange; Close interrupts it. It fails
// fast while the server is down, like Acquire, and its dial is counted in
// Stats.Dials.
//
// It is meant for `stats` (whose reply grows with the server's key count) and
// other requests whose effect outlives the connection (ping, signal, release,
// renew). Requests whose effect would end with the connection — acquires,
// enqueue/wait, listen/unlisten — and auth (which the handshake sends) are
// refused with a *wire.ArgError naming the command, before any dial.
//
// Errors: a reply longer than maxLine matches wire.ErrLineTooLong (and
// wire.ErrConnBroken) and names the cap; it does not match ErrUnavailable,
// because a larger cap would cure it. A connection that breaks for any other
// reason matches ErrUnavailable and wire.ErrConnBroken. A context that ends
// first yields an error matching ctx.Err() only.
//
// The connection is registered like any other while the request is in
// flight (Close ends it, the janitor watches it), but its end is not a
// break: it is neither counted in Stats.Broken nor reported to
// Config.OnConnBroken.
func (p *Pool) Query(ctx context.Context, req wire.Request, maxLine int) (wire.Reply, error) {
	if maxLine < 0 || maxLine > 0 && maxLine < minQueryLine {
		return wire.Reply{}, &wire.ArgError{
			Arg: "maxLine", Value: strconv.Itoa(maxLine),
			Reason: "must be 0 (the pool's default) or at least " + strconv.Itoa(minQueryLine),
		}
	}
	if maxLine == 0 {
		maxLine = p.cfg.maxReplyLine
	}
	switch req.Cmd {
	case wire.CmdLock, wire.CmdSemLock, wire.CmdEnqueue, wire.CmdSemEnqueue, wire.CmdWait, wire.CmdSemWait,
		wire.CmdListen, wire.CmdUnlisten, wire.CmdAuth:
		return wire.Reply{}, &wire.ArgError{
			Arg: "command", Value: req.Cmd.String(),
			Reason: "not allowed in Query: its effect would end with Query's short-lived connection",
		}
	}
	if err := p.usable(); err != nil {
		return wire.Reply{}, err
	}
	c, err := p.dialAs(ctx, roleQuery, false, maxLine, func(c *conn) { c.quiet = true })
	if err != nil {
		return wire.Reply{}, err
	}
	// Pool.Close breaks c, which ends the exchange; closing it here
	// (whatever happened) releases the socket.
	defer c.fail(errDestroyed)
	r, _, _, err := c.do(ctx, &req, "")
	if err == nil {
		return r, nil
	}
	if cerr := callerEnded(ctx); cerr != nil {
		return wire.Reply{}, serverErr(p.cfg.Addr, cerr, nil)
	}
	switch {
	case p.closed.Load():
		return wire.Reply{}, serverErr(p.cfg.Addr, ErrClosed, nil)
	case errors.Is(err, wire.ErrLineTooLong):
		// Not ErrUnavailable: a larger cap would cure it.
		return wire.Reply{}, serverErr(p.cfg.Addr,
			fmt.Errorf("%s reply longer than the %d-byte line cap of this request", req.Cmd, maxLine), causeOf(err))
	}
	return wire.Reply{}, err // a *ServerError matching ErrUnavailable
}
