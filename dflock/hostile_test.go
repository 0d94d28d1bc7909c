package dflock

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/shard"
	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// scriptedServer is a broken or hostile dflockd: it answers ping with ok and
// every other request with answer(cmd, key, arg), and counts the
// connections the client closed.
type scriptedServer struct {
	addr   string
	answer func(cmd, key, arg string) string
	mu     sync.Mutex
	closed int // connections the client closed
}

func newScriptedServer(t *testing.T, answer func(cmd, key, arg string) string) *scriptedServer {
	t.Helper()
	s := &scriptedServer{answer: answer}
	s.addr = testutil.ServeRaw(t, s.serve)
	return s
}

func (s *scriptedServer) serve(nc net.Conn) {
	br := bufio.NewReader(nc)
	for {
		var f [3]string
		for i := range f {
			line, err := br.ReadString('\n')
			if err != nil {
				s.mu.Lock()
				s.closed++
				s.mu.Unlock()
				return
			}
			f[i] = strings.TrimRight(line, "\r\n")
		}
		reply := "ok"
		if f[0] != "ping" {
			reply = s.answer(f[0], f[1], f[2])
		}
		if _, err := nc.Write([]byte(reply + "\n")); err != nil {
			return
		}
	}
}

// A grant whose lease is outside the protocol's range (which would overflow
// every deadline computed from it) is refused as a protocol violation and
// given back to the server at once: it is neither reported held nor left
// held on the server.
func TestGrantWithOutOfRangeLeaseIsReleasedAndReported(t *testing.T) {
	t.Parallel()
	const tok = "0123456789abcdef0123456789abcdef"
	// (A lease that does not even parse as an int64 breaks the connection
	// in wire.ParseReply, and the server releases the grant with it.)
	for _, lease := range []string{"10000000000", "9223372037", "0"} {
		t.Run(lease, func(t *testing.T) {
			t.Parallel()
			released := make(chan struct{})
			var once sync.Once
			srv := newScriptedServer(t, func(cmd, key, arg string) string {
				switch cmd {
				case "l":
					return "ok " + tok + " " + lease
				case "r":
					if arg == tok {
						once.Do(func() { close(released) })
					}
				}
				return "ok"
			})
			c := newClient(t, []string{srv.addr})
			ctx := testCtx(t)
			l, err := c.TryLock(ctx, "k")
			require.Error(t, err)
			assert.Nil(t, l)
			assert.True(t, errors.Is(err, wire.ErrProtocol), "%v", err)
			assert.False(t, errors.Is(err, ErrNotAcquired), "%v", err)
			select {
			case <-released:
			case <-ctx.Done():
				t.Fatal("the out-of-range grant was not released")
			}
			assert.Zero(t, c.renewStats().Leases, "nothing may be tracked as held")
		})
	}
}

// The same on a wait-pool connection (a contended Lock), answered in time
// or after the caller's deadline passed (the late answer is settled in the
// background): the grant is released on the connection it came on. It
// was only closed with it, which a server with auto-release off ignores:
// the lock stayed held by nobody until its TTL.
func TestWaitPoolGrantWithOutOfRangeLeaseIsReleased(t *testing.T) {
	t.Parallel()
	const tok = "0123456789abcdef0123456789abcdef"
	for name, delay := range map[string]time.Duration{"in time": 0, "late": 600 * time.Millisecond} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			released := make(chan struct{})
			var once sync.Once
			srv := newScriptedServer(t, func(cmd, key, arg string) string {
				switch {
				case cmd == "l" && strings.HasPrefix(arg, "0"):
					return "timeout" // the lane's try finds the key held
				case cmd == "l":
					time.Sleep(delay)
					return "ok " + tok + " 10000000000"
				case cmd == "r" && arg == tok:
					once.Do(func() { close(released) })
				}
				return "ok"
			})
			c := newClient(t, []string{srv.addr})
			ctx := testCtx(t)
			_, err := c.Lock(ctx, "k", AcquireTimeout(300*time.Millisecond))
			require.Error(t, err)
			if delay == 0 {
				assert.True(t, errors.Is(err, wire.ErrProtocol), "%v", err)
			} else {
				assert.ErrorIs(t, err, ErrNotAcquired)
			}
			select {
			case <-released:
			case <-ctx.Done():
				t.Fatal("the out-of-range grant on a wait-pool connection was never released")
			}
			assert.Zero(t, c.renewStats().Leases, "nothing may be tracked as held")
		})
	}
}

// badStrategy places every key on server index idx, or panics if panics.
type badStrategy struct {
	idx    int
	panics bool
}

func (b badStrategy) Place([]string) (shard.Placement, error) { return b, nil }
func (b badStrategy) Server(string) int {
	if b.panics {
		panic("placement bug")
	}
	return b.idx
}

// A custom sharding strategy that returns an index outside the server list
// gets an error, not a panic; one that panics leaves no operation counted
// in flight, so that Close (which waits for operations) still returns.
func TestBadShardingStrategyNeitherPanicsNorBlocksClose(t *testing.T) {
	t.Parallel()
	a, b := newServer(t, testutil.Config{}), newServer(t, testutil.Config{})
	ctx := testCtx(t)
	for _, idx := range []int{-1, 2, 1 << 30} {
		c := newClient(t, addrsOf(a, b), WithSharding(badStrategy{idx: idx}))
		_, err := c.TryLock(ctx, "k")
		require.Error(t, err)
		assert.Contains(t, err.Error(), "server index "+strconv.Itoa(idx))
		assert.ErrorIs(t, err, ErrInvalidArgument)
		_, err = c.Listen(ctx, "k")
		assert.Error(t, err)
		_, err = c.Emit(ctx, "k", "p")
		assert.Error(t, err)
		assert.Equal(t, "", c.ServerFor("k"))
		require.NoError(t, c.Close())
	}

	c, err := New(addrsOf(a, b), WithSharding(badStrategy{panics: true}))
	require.NoError(t, err)
	for _, call := range []func(){
		func() { _, _ = c.TryLock(ctx, "k") },
		func() { _, _ = c.Lock(ctx, "k") },
		func() { _, _ = c.Enqueue(ctx, "k") },
		func() { _, _ = c.Emit(ctx, "k", "p") },
		func() { _, _ = c.Listen(ctx, "k") },
	} {
		func() {
			defer func() { assert.NotNil(t, recover(), "the strategy's panic reaches its caller") }()
			call()
		}()
	}
	closed := make(chan struct{})
	go func() { _ = c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("Close blocked: a panic left an operation counted in flight")
	}
}

// A grant read by a blocking Lock whose caller gives up while the grant is
// being confirmed (after a long wait the client renews it once before
// returning it) is released on another connection, not only dropped with
// its own: with auto-release off, closing the connection would leave it
// held by nobody until its lease ran out. The server here grants after a
// wait longer than a quarter of the 1 s lease and never answers the renewal.
func TestGrantAbandonedWhileConfirmedIsReleasedElsewhere(t *testing.T) {
	t.Parallel()
	const tok = "0123456789abcdef0123456789abcdef"
	unblock := make(chan struct{})
	released := make(chan string, 4)
	srv := newScriptedServer(t, func(cmd, key, arg string) string {
		switch {
		case cmd == "l" && strings.HasPrefix(arg, "0"):
			return "timeout" // the lane's try: held
		case cmd == "l":
			time.Sleep(300 * time.Millisecond) // a long wait, for a 1 s lease
			return "ok " + tok + " 1"
		case cmd == "n":
			<-unblock // the confirming renewal is never answered
			return "error"
		case cmd == "r":
			released <- key + " " + arg
			return "ok"
		}
		return "error"
	})
	t.Cleanup(func() { close(unblock) }) // before the server's cleanup, which waits for it
	c := newClient(t, []string{srv.addr})
	ctx, cancel := context.WithTimeout(testCtx(t), time.Second)
	defer cancel()
	_, err := c.Lock(ctx, "k", LeaseTTL(time.Second))
	require.ErrorIs(t, err, ErrNotAcquired)
	select {
	case r := <-released:
		assert.Equal(t, "k "+tok, r)
	case <-testCtx(t).Done():
		t.Fatal("the grant whose token the client read was never released")
	}
}
