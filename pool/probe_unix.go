//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"crypto/tls"
	"io"
	"net"
	"syscall"
)

// rawSocket returns the socket under nc (under TLS, under its transport)
// for probe, or nil if it has none.
func rawSocket(nc net.Conn) syscall.RawConn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// peekSocket (c.peekFn) looks at the socket without consuming or waiting:
// one recv with MSG_PEEK|MSG_DONTWAIT. It is a RawConn.Read callback.
func (c *conn) peekSocket(fd uintptr) bool {
	c.peekN, _, c.peekErr = syscall.Recvfrom(int(fd), c.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return true
}

// probe tells whether the socket is quiet (nothing to read: the usual
// case), has bytes to read, or is closed (EOF, reset), without consuming
// anything or waiting. Only a caller holding the turn to read calls it.
func (c *conn) probe() (probeResult, error) {
	if c.wc.Buffered() > 0 {
		return probeData, nil // an unsolicited line
	}
	if err := c.raw.Read(c.peekFn); err != nil {
		return probeData, nil // e.g. a forced deadline: let the reader look
	}
	switch {
	case c.peekErr == syscall.EAGAIN || c.peekErr == syscall.EWOULDBLOCK:
		return probeQuiet, nil
	case c.peekErr == syscall.EINTR:
		return probeData, nil
	case c.peekErr != nil:
		return probeClosed, c.peekErr
	case c.peekN == 0:
		return probeClosed, io.EOF
	}
	return probeData, nil
}
