package wire

import (
	"bufio"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// pipeConn frames one end of a net.Pipe and returns the other end as the
// fake server. Each Write on the server end arrives as its own Read on the
// client, which is what lets tests split bytes exactly where they want.
func pipeConn(t *testing.T, opt ConnOptions) (*Conn, net.Conn) {
	t.Helper()
	client, server := net.Pipe()
	c := NewConn(client, opt)
	t.Cleanup(func() {
		_ = c.Close()
		_ = server.Close()
	})
	return c, server
}

// tcpConn is pipeConn over real loopback TCP.
func tcpConn(t *testing.T, opt ConnOptions) (*Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- s
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	server, ok := <-accepted
	require.True(t, ok, "accept failed")
	c := NewConn(client, opt)
	t.Cleanup(func() {
		_ = c.Close()
		_ = server.Close()
	})
	return c, server
}

// feed writes chunks to the peer end from a goroutine, one Write per chunk,
// then optionally closes it. Cleanup waits for the goroutine.
func feed(t *testing.T, server net.Conn, closeAfter bool, chunks ...string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, ch := range chunks {
			if _, err := server.Write([]byte(ch)); err != nil {
				return
			}
		}
		if closeAfter {
			_ = server.Close()
		}
	}()
	t.Cleanup(func() {
		_ = server.Close()
		<-done
	})
}

// readRequest reads one three-line request from the peer side.
func readRequest(br *bufio.Reader) ([3]string, error) {
	var lines [3]string
	for i := range lines {
		l, err := br.ReadString('\n')
		if err != nil {
			return lines, err
		}
		lines[i] = l[:len(l)-1]
	}
	return lines, nil
}

// scriptConn is a net.Conn whose reads replay chunks and whose writes are
// recorded; it lets tests count Write calls and run without a peer.
type scriptConn struct {
	mu     sync.Mutex
	chunks [][]byte
	loop   bool // replay chunks forever (for allocation measurements)
	next   int
	writes [][]byte
	wbytes int
	record bool
}

func (s *scriptConn) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.next >= len(s.chunks) {
			if !s.loop || len(s.chunks) == 0 {
				return 0, io.EOF
			}
			s.next = 0
		}
		ch := s.chunks[s.next]
		if len(ch) == 0 {
			s.next++
			continue
		}
		n := copy(p, ch)
		if n < len(ch) {
			s.chunks[s.next] = ch[n:]
			if s.loop {
				panic("scriptConn: looped chunk larger than the read buffer")
			}
		} else {
			s.next++
		}
		return n, nil
	}
}

func (s *scriptConn) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.record {
		s.writes = append(s.writes, append([]byte(nil), p...))
	}
	s.wbytes += len(p)
	return len(p), nil
}

func (s *scriptConn) Close() error                     { return nil }
func (s *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (s *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (s *scriptConn) SetDeadline(time.Time) error      { return nil }
func (s *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (s *scriptConn) SetWriteDeadline(time.Time) error { return nil }
