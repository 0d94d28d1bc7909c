//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package pool

import (
	"net"
	"syscall"
)

// rawSocket: callers read their own replies only where the socket can be
// probed without consuming (probe_unix.go); here the reader reads them all.
func rawSocket(net.Conn) syscall.RawConn { return nil }

func (c *conn) peekSocket(uintptr) bool { return true }

func (c *conn) probe() (probeResult, error) { return probeData, nil }

func socketHasBytes(net.Conn) bool { return false }
