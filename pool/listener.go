package pool

import (
	"context"

	"github.com/dflock-sdk/go/wire"
)

// DialListener opens a connection for signal listening (docs/protocol.md §6.6):
// a pipelined Conn like the lane's, outside both the control lane and the
// wait pool, whose reader hands every `sig` push line to onPush.
//
// It is kept alive by the pool's janitor (a ping whenever it has written
// nothing for Config.KeepAlive, which also resets the server's read
// timeout; a connection whose replies stop for 2·KeepAlive is broken), and
// Close closes it. Like a lane connection it is never closed because a
// caller gave up: Do with a cancelled context only stops waiting (the
// reply is still read), so one subscriber's cancelled listen cannot break a
// connection shared by others. Any command is allowed on it; it is meant
// for listen, unlisten and ping. End it with Destroy.
//
// onPush runs on the connection's reader goroutine, once per push in the
// order received, and must not block: the server disconnects a listener
// whose push buffer fills. onBroken, if non-nil, is called exactly once when
// the connection breaks or is destroyed (after Config.OnConnBroken), from
// whichever goroutine noticed; it may be called before DialListener returns
// if the connection breaks at once. It must not block either.
//
// Like every dial of the pool it fails fast (ErrUnavailable) while the
// server is down; a network failure marks the server down when no
// connection to it is alive.
func (p *Pool) DialListener(ctx context.Context, onPush func(wire.Push), onBroken func(error)) (*Conn, error) {
	if err := p.usable(); err != nil {
		return nil, err
	}
	wc, ping, err := p.handshake(ctx, wire.ConnOptions{MaxLine: p.cfg.MaxReplyLine}, false)
	if err != nil {
		return nil, err
	}
	c := p.newConn(wc, ping)
	c.listener, c.onPush, c.onBroken = true, onPush, onBroken
	if err := p.register(c); err != nil {
		_ = wc.Close()
		return nil, err
	}
	p.dials.Add(1)
	if p.down.Load() != nil {
		p.markUp()
	}
	return c, nil
}

// Listener reports whether this is a listener connection (DialListener).
func (c *Conn) Listener() bool { return c.listener }
