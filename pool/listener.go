package pool

import (
	"context"

	"github.com/dflock-sdk/go/wire"
)

// ListenerConn is a connection for signal listening (docs/protocol.md §6.6),
// outside both the control lane and the wait pool. It owns no lease. Like a
// lane connection it is pipelined and never closed because a caller gave
// up, so one subscriber's cancelled listen cannot break a connection shared
// by others; unlike one, any command may be sent on it. It is meant for
// listen, unlisten and ping (and for signals too long for the lane).
type ListenerConn struct {
	c *conn
}

// Do sends req and waits for its reply. If ctx ends first Do returns an
// error matching ctx.Err() and the connection stays open: the reply is
// still read and dropped.
func (l *ListenerConn) Do(ctx context.Context, req wire.Request) (wire.Reply, error) {
	r, _, _, err := l.c.do(ctx, &req, "")
	return r, err
}

// SendBatch is Owner.SendBatch for a listener connection (several
// listen/unlisten requests in one write).
func (l *ListenerConn) SendBatch(reqs []wire.Request, done func(i int, r wire.Reply, err error)) {
	l.c.sendBatch(reqs, done)
}

// Err is nil while the connection is usable; afterwards an error matching
// wire.ErrConnBroken that names the server (see Conn.Err).
func (l *ListenerConn) Err() error { return l.c.Err() }

// Destroy closes the connection. Idempotent.
func (l *ListenerConn) Destroy() { l.c.fail(l.c.p.endCause(errDestroyed)) }

// Unread reports whether bytes have reached the connection that the
// reader has not yet taken as whole lines (a push buffered or arriving):
// a connection about to be closed for quiet is not quiet yet. That
// includes bytes still in the socket's receive buffer, which a reader held
// up on a loaded machine has not read yet, on Linux; elsewhere only what
// the reader has read. A line the reader has taken but not yet handed to
// onPush is not counted, for the microseconds between the two; a caller
// that must not miss that push also counts the pushes onPush has begun.
func (l *ListenerConn) Unread() bool {
	return l.c.wc.BytesRead() > l.c.wc.BytesConsumed() || socketPending(l.c.wc.NetConn())
}

// DialListener opens a listener connection whose reader hands every `sig`
// push line to onPush.
//
// It is kept alive by the pool's janitor (a ping whenever it has written
// nothing for Config.KeepAlive, which also resets the server's read
// timeout; a connection whose replies stop for 2·KeepAlive is broken), and
// Pool.Close closes it. End it with Destroy.
//
// onPush (required: nil is refused, as a listener that drops every signal)
// runs on the connection's reader goroutine, once per push in the
// order received, and must not block: the server disconnects a listener
// whose push buffer fills. onBroken, if non-nil, is called exactly once when
// the connection breaks or is destroyed (after Config.OnConnBroken), from
// whichever goroutine noticed; it may be called before DialListener returns
// if the connection breaks at once. It must not block either.
//
// Like every dial of the pool it fails fast (ErrUnavailable) while the
// server is down; a network failure marks the server down when no
// connection to it is alive.
func (p *Pool) DialListener(ctx context.Context, onPush func(wire.Push), onBroken func(error)) (*ListenerConn, error) {
	if onPush == nil {
		return nil, &wire.ArgError{Arg: "onPush", Reason: "is nil: the listener would drop every signal"}
	}
	if err := p.usable(); err != nil {
		return nil, err
	}
	l := &ListenerConn{}
	p.nListeners.Add(1)
	// Its lines are pushes, at most MaxLongArg bytes (§6.6), and short
	// replies (ok, ok <n>, error): a longer line is a broken server's,
	// which must not make a subscription buffer megabytes per signal.
	_, err := p.dialAs(ctx, roleListener, false, min(p.cfg.maxReplyLine, wire.MaxLongArg), func(c *conn) {
		l.c = c
		c.onPush = onPush
		c.onBroken = func(err error) {
			p.nListeners.Add(-1)
			if onBroken != nil {
				onBroken(err)
			}
		}
	})
	if err != nil {
		p.nListeners.Add(-1)
		return nil, err
	}
	return l, nil
}
