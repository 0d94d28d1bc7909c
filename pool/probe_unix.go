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

// probe looks at the socket, without consuming anything or waiting, for
// what arrived while nobody read: nothing (the usual case), a close (EOF,
// reset), or bytes. Bytes are a stray line (the server answered nothing
// pending), or under TLS a record: an alert announces the close; a
// handshake record (a TLS 1.2 session ticket) is the reader's to take;
// an application-data record is, under TLS 1.3, whatever the server sent
// encrypted — most likely the close_notify that precedes its FIN, or a
// stray line — and breaks the connection as an alert does, so that the
// request goes to another connection. Only a caller holding the turn to
// read calls it.
func (c *conn) probe() (probeResult, error) {
	if err := c.raw.Read(c.peekFn); err != nil {
		return probeData, nil // e.g. a forced deadline: let the reader look
	}
	switch {
	case c.peekErr == syscall.EAGAIN || c.peekErr == syscall.EWOULDBLOCK:
		return probeQuiet, nil
	case c.peekErr == syscall.EINTR:
		return probeData, nil
	case c.peekErr != nil:
		return probeBroken, c.peekErr
	case c.peekN == 0:
		return probeBroken, io.EOF
	}
	if c.tls {
		switch c.peekBuf[0] {
		case tlsRecordHandshake:
			return probeData, nil
		case tlsRecordAlert:
			return probeBroken, errTLSAlert
		case tlsRecordData:
			return probeBroken, errTLSRecord
		}
	}
	return probeBroken, errStrayBytes
}

// TLS record content types (RFC 8446, section 5.1).
const (
	tlsRecordAlert     = 21
	tlsRecordHandshake = 22
	tlsRecordData      = 23
)

// socketHasBytes reports whether bytes wait in nc's socket (under TLS, its
// transport's), without consuming or waiting.
func socketHasBytes(nc net.Conn) bool {
	rc := rawSocket(nc)
	if rc == nil {
		return false
	}
	var n int
	var perr error
	var b [1]byte
	if err := rc.Read(func(fd uintptr) bool {
		n, _, perr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	}); err != nil {
		return false
	}
	return perr == nil && n > 0
}
