//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

// AwaitLine serves package pool only where it can probe a socket (see
// pool/probe_unix.go), hence the same platforms here; the tests also peek at
// a socket themselves.

package wire

import (
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// send writes s to the peer end on a goroutine of its own (a net.Pipe write
// blocks until the client reads it) and returns a channel with the
// outcome; cleanup waits for it.
func send(t *testing.T, peer net.Conn, s string) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		_, err := io.WriteString(peer, s)
		done <- err
	}()
	t.Cleanup(func() {
		_ = peer.Close()
		<-exited
	})
	return done
}

func await(t *testing.T, c *Conn) (bool, error) {
	t.Helper()
	type result struct {
		ready bool
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		ready, err := c.AwaitLine()
		ch <- result{ready, err}
	}()
	select {
	case r := <-ch:
		return r.ready, r.err
	case <-time.After(guard):
		_ = c.Close() // unblocks the goroutine
		t.Fatal("AwaitLine did not return")
		return false, nil
	}
}

// waitReadable returns once the peer's bytes (or its close) have reached
// the socket under c, without consuming them.
func waitReadable(t *testing.T, c *Conn) {
	t.Helper()
	rc, err := c.NetConn().(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	var b [1]byte
	require.NoError(t, rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK
	}))
}

// AwaitLine says ready only when the next ReadLine will not wait: a whole
// line is buffered. It consumes nothing, and Buffered counts what it read.
func TestAwaitLineReportsAWholeLine(t *testing.T) {
	t.Parallel()
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			c, peer := tr.dial(t, ConnOptions{})
			assert.Zero(t, c.Buffered())
			send(t, peer, "ok\nqueued 2\n")
			ready, err := await(t, c)
			require.NoError(t, err)
			require.True(t, ready)
			// One write over loopback arrives in one read (as over the pipe).
			assert.Equal(t, len("ok\nqueued 2\n"), c.Buffered(), "both lines read, none consumed")
			ready, err = c.AwaitLine()
			require.NoError(t, err)
			assert.True(t, ready, "a second look changes nothing")

			line, err := c.ReadLine()
			require.NoError(t, err)
			assert.Equal(t, "ok", string(line))
			assert.Equal(t, len("queued 2\n"), c.Buffered())
			ready, err = c.AwaitLine()
			require.NoError(t, err)
			assert.True(t, ready, "the next line is buffered whole: no wait")
			line, err = c.ReadLine()
			require.NoError(t, err)
			assert.Equal(t, "queued 2", string(line))
			assert.Zero(t, c.Buffered())
			require.NoError(t, c.Err())
		})
	}
}

// A line whose end has not arrived is not ready (ReadLine would wait for
// the rest); AwaitLine then returns at once, with what it has, and
// ReadLine later returns the line whole.
func TestAwaitLineIsNotReadyOnAPartialLine(t *testing.T) {
	t.Parallel()
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			c, peer := tr.dial(t, ConnOptions{})
			first := send(t, peer, "o")
			ready, err := await(t, c)
			require.NoError(t, err)
			assert.False(t, ready)
			require.NoError(t, <-first)
			assert.Equal(t, 1, c.Buffered())
			ready, err = await(t, c) // returns although nothing more comes
			require.NoError(t, err)
			assert.False(t, ready)

			send(t, peer, "k\n")
			line, err := c.ReadLine()
			require.NoError(t, err)
			assert.Equal(t, "ok", string(line))
			require.NoError(t, c.Err())
		})
	}
}

// A line longer than the read buffer can never be buffered whole: not
// ready, and ReadLine assembles it.
func TestAwaitLineIsNotReadyOnALineLongerThanTheBuffer(t *testing.T) {
	t.Parallel()
	c, peer := pipeConn(t, ConnOptions{})
	long := strings.Repeat("x", 2*readBufSize)
	send(t, peer, long+"\n")
	ready, err := await(t, c)
	require.NoError(t, err)
	assert.False(t, ready)
	line, err := c.ReadLine()
	require.NoError(t, err)
	assert.Equal(t, long, string(line))
}

// An expired read deadline interrupts AwaitLine without breaking the Conn:
// nothing was consumed, so once the deadline is cleared the next line is
// read intact — also when part of it had arrived before the deadline,
// whether AwaitLine had already buffered that part or it was still in the
// socket.
func TestAwaitLineDeadlineKeepsTheConn(t *testing.T) {
	t.Parallel()
	pastDeadline := func(t *testing.T, c *Conn) {
		t.Helper()
		require.NoError(t, c.SetReadDeadline(aLongTimeAgo))
		ready, err := await(t, c)
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
		assert.False(t, ready)
		assert.NotErrorIs(t, err, ErrConnBroken)
		require.NoError(t, c.Err(), "an interrupted AwaitLine must not break the Conn")
		require.NoError(t, c.SetReadDeadline(time.Time{}))
	}

	t.Run("nothing arrived", func(t *testing.T) {
		t.Parallel()
		for _, tr := range transports {
			t.Run(tr.name, func(t *testing.T) {
				t.Parallel()
				c, peer := tr.dial(t, ConnOptions{})
				pastDeadline(t, c)
				send(t, peer, "ok\n")
				ready, err := await(t, c)
				require.NoError(t, err)
				assert.True(t, ready)
				line, err := c.ReadLine()
				require.NoError(t, err)
				assert.Equal(t, "ok", string(line))
			})
		}
	})

	t.Run("interrupting a wait", func(t *testing.T) {
		t.Parallel()
		for _, tr := range transports {
			t.Run(tr.name, func(t *testing.T) {
				t.Parallel()
				c, peer := tr.dial(t, ConnOptions{})
				errc := make(chan error, 1)
				go func() {
					_, err := c.AwaitLine()
					errc <- err
				}()
				// Whether or not the goroutine is already waiting, the
				// deadline ends its wait.
				require.NoError(t, c.SetReadDeadline(aLongTimeAgo))
				var err error
				select {
				case err = <-errc:
				case <-time.After(guard):
					t.Fatal("the deadline did not interrupt AwaitLine")
				}
				require.ErrorIs(t, err, os.ErrDeadlineExceeded)
				require.NoError(t, c.Err())
				require.NoError(t, c.SetReadDeadline(time.Time{}))
				send(t, peer, "ok\n")
				line, err := c.ReadLine()
				require.NoError(t, err)
				assert.Equal(t, "ok", string(line))
			})
		}
	})

	t.Run("half buffered", func(t *testing.T) {
		t.Parallel()
		for _, tr := range transports {
			t.Run(tr.name, func(t *testing.T) {
				t.Parallel()
				c, peer := tr.dial(t, ConnOptions{})
				require.NoError(t, <-func() <-chan error {
					ch := send(t, peer, "o")
					ready, err := await(t, c)
					require.NoError(t, err)
					require.False(t, ready)
					return ch
				}())
				// With bytes buffered AwaitLine does not read, so a
				// deadline has nothing to interrupt.
				require.NoError(t, c.SetReadDeadline(aLongTimeAgo))
				ready, err := await(t, c)
				require.NoError(t, err)
				assert.False(t, ready)
				require.NoError(t, c.Err())
				require.NoError(t, c.SetReadDeadline(time.Time{}))
				send(t, peer, "k\n")
				line, err := c.ReadLine()
				require.NoError(t, err)
				assert.Equal(t, "ok", string(line))
			})
		}
	})

	t.Run("half in the socket", func(t *testing.T) {
		t.Parallel()
		c, peer := tcpConn(t, ConnOptions{})
		require.NoError(t, <-send(t, peer, "o"))
		waitReadable(t, c)
		pastDeadline(t, c)
		assert.Zero(t, c.Buffered())
		ready, err := await(t, c)
		require.NoError(t, err)
		assert.False(t, ready)
		send(t, peer, "k\n")
		line, err := c.ReadLine()
		require.NoError(t, err)
		assert.Equal(t, "ok", string(line))
	})
}

// Every other failure breaks the Conn, as ReadLine's do: EOF (the peer
// closed), and a Conn already broken answers with its sticky error.
func TestAwaitLineEOFBreaksTheConn(t *testing.T) {
	t.Parallel()
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			c, peer := tr.dial(t, ConnOptions{})
			require.NoError(t, peer.Close())
			ready, err := await(t, c)
			assert.False(t, ready)
			require.ErrorIs(t, err, ErrConnBroken)
			require.ErrorIs(t, err, io.EOF)
			require.ErrorIs(t, c.Err(), io.EOF)

			_, err = c.AwaitLine()
			require.ErrorIs(t, err, ErrConnBroken, "sticky")
			_, err = c.ReadLine()
			require.ErrorIs(t, err, io.EOF)
		})
	}
	// A deadline error is the one exception only while the Conn is
	// intact: on a broken one (whose deadline fail forced into the past)
	// AwaitLine reports the break.
	t.Run("after a write failure", func(t *testing.T) {
		t.Parallel()
		c, peer := pipeConn(t, ConnOptions{})
		require.NoError(t, peer.Close())
		_, err := c.WriteRaw([]byte("n\n\n\n"))
		require.Error(t, err)
		_, err = await(t, c)
		require.ErrorIs(t, err, ErrConnBroken)
		assert.False(t, errors.Is(err, os.ErrDeadlineExceeded))
	})
}
