package pool

import (
	"net"

	"golang.org/x/sys/unix"
)

// socketPending reports whether the kernel holds bytes received on nc's
// socket (under TLS, its transport's) that no read has taken yet. It takes
// neither the bytes nor the socket's read lock (RawConn.Control), so it
// answers while the connection's reader is blocked in a read, or has not
// got round to one.
func socketPending(nc net.Conn) bool {
	rc := rawSocket(nc)
	if rc == nil {
		return false
	}
	n := 0
	if err := rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }); err != nil {
		return false
	}
	return n > 0
}

// socketSendIdle reports whether the kernel holds nothing written to nc's
// socket (under TLS, its transport's) that the peer has not acknowledged:
// a write a flusher has begun, if any, has not reached the kernel yet,
// rather than being blocked on a peer that stopped reading. False when it
// cannot tell.
func socketSendIdle(nc net.Conn) bool {
	rc := rawSocket(nc)
	if rc == nil {
		return false
	}
	n := -1
	if err := rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.TIOCOUTQ); err == nil {
			n = v
		}
	}); err != nil {
		return false
	}
	return n == 0
}

// pendingCountable reports whether socketPending can see bytes at all.
const pendingCountable = true
