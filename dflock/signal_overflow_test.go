package dflock

import (
	"context"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// readGate holds the reads of every connection a Client dials while it is
// closed, so that a test can make the server's push buffer fill up behind
// a subscriber however fast the Client's reader is.
type readGate struct {
	mu   sync.Mutex
	open chan struct{} // closed while reads may proceed
}

func newReadGate() *readGate {
	g := &readGate{open: make(chan struct{})}
	close(g.open)
	return g
}

func (g *readGate) hold() {
	g.mu.Lock()
	g.open = make(chan struct{})
	g.mu.Unlock()
}

func (g *readGate) release() {
	g.mu.Lock()
	close(g.open)
	g.mu.Unlock()
}

func (g *readGate) wait() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open
}

func (g *readGate) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &gatedConn{Conn: nc, g: g, closed: make(chan struct{})}, nil
}

type gatedConn struct {
	net.Conn
	g         *readGate
	closeOnce sync.Once
	closed    chan struct{}
}

func (c *gatedConn) Read(p []byte) (int, error) {
	select {
	case <-c.g.wait():
	case <-c.closed:
		return 0, net.ErrClosed
	}
	return c.Conn.Read(p)
}

func (c *gatedConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// fillPushBuffer emits long signals on channel until the server counts no
// receiver for one, then extra more, and returns the payload prefixes
// ("0", "1", ...) of those it counted one receiver for, in order.
func fillPushBuffer(t *testing.T, pub *Client, channel string, extra int) (counted []string) {
	t.Helper()
	payload := strings.Repeat("p", 32<<10)
	missed := 0
	for i := 0; missed <= extra; i++ {
		require.Less(t, i, 100000, "the push buffer never filled")
		switch n := emit(t, pub, channel, strconv.Itoa(i)+" "+payload); n {
		case 0:
			missed++
		case 1:
			counted = append(counted, strconv.Itoa(i))
		default:
			t.Fatalf("Emit counted %d receivers", n)
		}
	}
	return counted
}

// overflowPair starts a server with the given overflow behaviour and a
// tiny push buffer, a subscriber Client whose reads can be held, and a
// publisher Client.
func overflowPair(t *testing.T, overflow testutil.SignalOverflow) (srv *testutil.Server, gate *readGate, sub, pub *Client) {
	srv = newServer(t, testutil.Config{PushBuffer: 4, SignalOverflow: overflow, ReadTimeout: -1, WriteTimeout: -1})
	gate = newReadGate()
	// No keepalive to speak of: an unanswered ping while reads are held
	// would break the connection itself.
	sub = newClient(t, addrsOf(srv), WithDialer(gate.dial),
		WithServerReadTimeout(time.Duration(math.MaxInt64)), WithKeepAlive(time.Hour))
	pub = newClient(t, addrsOf(srv))
	return srv, gate, sub, pub
}

// With a server that drops a signal for a full push buffer and keeps the
// connection (the build issue 11 measured), the subscriber cannot see the
// loss: no gap, nothing dropped locally. Only Emit's count shows it.
func TestSignalsServerDropIsSilentForTheSubscriber(t *testing.T) {
	t.Parallel()
	srv, gate, sub, pub := overflowPair(t, testutil.OverflowDrop)
	ctx := testCtx(t)
	s, err := sub.Listen(ctx, "ov", Buffer(MaxSignalBuffer))
	require.NoError(t, err)

	gate.hold()
	counted := fillPushBuffer(t, pub, "ov", 3)
	waitListening(t, srv, "ov", "") // still subscribed: nothing was disconnected
	gate.release()

	// Exactly the signals Emit counted arrive, in order, with no gap
	// marker among them.
	for i, want := range counted {
		sig, err := s.Next(ctx)
		require.NoError(t, err, "signal %d of %d", i, len(counted))
		prefix, _, _ := strings.Cut(sig.Payload, " ")
		require.Equal(t, want, prefix, "signal %d of %d", i, len(counted))
	}
	// The next signal that fits arrives right behind them, with no gap
	// in between: the listener never learns of the drops.
	for i := 0; ; i++ {
		require.Less(t, i, 100000, "the push buffer never emptied")
		if emit(t, pub, "ov", "after") == 1 {
			break
		}
	}
	sig, err := s.Next(ctx)
	require.NoError(t, err)
	assert.Equal(t, "after", sig.Payload)
	assert.Zero(t, s.Dropped())
	assertEmpty(t, s)
	assert.Zero(t, sub.servers[0].pool.Stats().Broken, "no connection broke")
}

// With a released server (disconnect when the push buffer is full) the
// same overload is a gap, and the subscription is served again after it.
func TestSignalsServerDisconnectIsAGap(t *testing.T) {
	t.Parallel()
	srv, gate, sub, pub := overflowPair(t, testutil.OverflowDisconnect)
	ctx := testCtx(t)
	s, err := sub.Listen(ctx, "ov", Buffer(MaxSignalBuffer))
	require.NoError(t, err)

	gate.hold()
	counted := fillPushBuffer(t, pub, "ov", 0)
	gate.release()

	// Some of the counted signals may die with the connection; then the
	// gap is reported, before anything received after the reconnect.
	for i := 0; ; i++ {
		require.LessOrEqual(t, i, len(counted), "no gap after %d signals", i)
		_, err := s.Next(ctx)
		if err != nil {
			var g *GapError
			require.ErrorAs(t, err, &g)
			assert.Equal(t, srv.Addr(), g.Server)
			break
		}
	}
	// Until the server has dropped the old connection's subscription and
	// taken the re-listen, a signal may find no receiver.
	require.Eventually(t, func() bool { return emit(t, pub, "ov", "after") == 1 }, testTimeout, time.Millisecond)
	assert.Equal(t, "after", nextPastResume(t, s).Payload)
	assertEmpty(t, s)
}
