//go:build !linux

package pool

import "net"

// socketPending is false where the bytes a socket holds unread cannot be
// counted without reading them (see inq_linux.go).
func socketPending(net.Conn) bool { return false }

// socketSendIdle is false where it cannot be told (see inq_linux.go).
func socketSendIdle(net.Conn) bool { return false }

// pendingCountable reports whether socketPending can see bytes at all.
const pendingCountable = false
