package dflock

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Every invalid argument is rejected before any I/O, with an error naming it.
func TestInvalidArgumentsAreRejectedBeforeAnyIO(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	noDial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		t.Errorf("dialled %s: an invalid call reached the network", addr)
		return nil, errors.New("no dialling in this test")
	}
	c := newClient(t, addrsOf(srv), WithDialer(noDial))
	ctx := testCtx(t)
	fn := func(context.Context) error { return nil }
	long := strings.Repeat("k", 257)

	cases := []struct {
		name string
		arg  string
		call func() error
	}{
		{"empty key", "key", func() error { _, err := c.Lock(ctx, ""); return err }},
		{"space in key", "key", func() error { _, err := c.Lock(ctx, "a b"); return err }},
		{"tab in key", "key", func() error { _, err := c.TryLock(ctx, "a\tb"); return err }},
		{"LF in key", "key", func() error { _, err := c.Lock(ctx, "a\nb"); return err }},
		{"CR in key", "key", func() error { _, err := c.Lock(ctx, "a\r"); return err }},
		{"NUL in key", "key", func() error { _, err := c.Lock(ctx, "a\x00b"); return err }},
		{"over-long key", "key", func() error { _, err := c.Lock(ctx, long); return err }},
		{"semaphore bad key", "key", func() error { _, err := c.Semaphore(ctx, " ", 2); return err }},
		{"limit 0", "limit", func() error { _, err := c.Semaphore(ctx, "s", 0); return err }},
		{"limit -1", "limit", func() error { _, err := c.TrySemaphore(ctx, "s", -1); return err }},
		{"negative timeout", "timeout", func() error { _, err := c.Lock(ctx, "k", AcquireTimeout(-time.Nanosecond)); return err }},
		{"negative lease", "lease", func() error { _, err := c.Lock(ctx, "k", LeaseTTL(-time.Second)); return err }},
		{"negative semaphore lease", "lease", func() error { _, err := c.Semaphore(ctx, "k", 1, LeaseTTL(-1)); return err }},
		{"lease in nanoseconds", "lease", func() error { _, err := c.Lock(ctx, "k", LeaseTTL(30)); return err }},
		{"lease just under 1ms", "lease", func() error { _, err := c.TryLock(ctx, "k", LeaseTTL(time.Millisecond-1)); return err }},
		{"enqueue lease in nanoseconds", "lease", func() error { _, err := c.Enqueue(ctx, "k", LeaseTTL(30)); return err }},
		{"nil ctx", "ctx", func() error {
			//lint:ignore SA1012 a nil context is the subject
			_, err := c.Lock(nil, "k")
			return err
		}},
		{"enqueue empty key", "key", func() error { _, err := c.Enqueue(ctx, ""); return err }},
		{"enqueue negative lease", "lease", func() error { _, err := c.Enqueue(ctx, "k", LeaseTTL(-time.Second)); return err }},
		{"enqueue with timeout", "timeout", func() error { _, err := c.Enqueue(ctx, "k", AcquireTimeout(time.Second)); return err }},
		{"enqueue semaphore limit 0", "limit", func() error { _, err := c.EnqueueSemaphore(ctx, "k", 0); return err }},
		{"enqueue semaphore bad key", "key", func() error { _, err := c.EnqueueSemaphore(ctx, "a\nb", 2); return err }},
		{"WithLock nil fn", "fn", func() error { return c.WithLock(ctx, "k", nil) }},
		{"WithLock bad key", "key", func() error { return c.WithLock(ctx, "", fn) }},
		{"WithSemaphore limit 0", "limit", func() error { return c.WithSemaphore(ctx, "k", 0, fn) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			require.ErrorIs(t, err, ErrInvalidArgument)
			var ae *ArgError
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, tc.arg, ae.Arg)
			assert.Contains(t, err.Error(), tc.arg)
		})
	}
	st := srv.Stats()
	assert.Zero(t, st.Connections)
	assert.Empty(t, st.Requests, "the server saw requests")
}

func TestNewRejectsBadServersAndOptions(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		servers []string
		opts    []Option
		arg     string
	}{
		{"no port", []string{"localhost"}, nil, "server"},
		{"port 0", []string{"localhost:0"}, nil, "server"},
		{"port too big", []string{"localhost:65536"}, nil, "server"},
		{"named port", []string{"localhost:http"}, nil, "server"},
		{"empty", []string{""}, nil, "server"},
		{"duplicate", []string{"a:1", "b:2", "a:1"}, nil, "server"},
		{"dial timeout", nil, []Option{WithDialTimeout(0)}, "dial timeout"},
		{"dial timeout in nanoseconds", nil, []Option{WithDialTimeout(5)}, "dial timeout"},
		{"renew ratio", nil, []Option{WithRenewRatio(1)}, "renew ratio"},
		{"keepalive", nil, []Option{WithKeepAlive(-time.Second)}, "keepalive"},
		{"lease", nil, []Option{WithLeaseTTL(-time.Second)}, "lease TTL"},
		{"lease in nanoseconds", nil, []Option{WithLeaseTTL(30)}, "lease TTL"},
		{"max conns", nil, []Option{WithMaxConnsPerServer(0)}, "max conns per server"},
		{"lane conns", nil, []Option{WithLaneConns(0)}, "lane conns"},
		{"sharding", nil, []Option{WithSharding(nil)}, "sharding"},
		{"auth token", nil, []Option{WithAuthToken("a\nb")}, "auth token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.servers, tc.opts...)
			require.Nil(t, c)
			require.ErrorIs(t, err, ErrInvalidArgument)
			var ae *ArgError
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, tc.arg, ae.Arg)
		})
	}
	// A bad entry of a list is named by its place; an empty one says so.
	_, err := New([]string{"a:1", "", "b:2"})
	require.ErrorIs(t, err, ErrInvalidArgument)
	assert.Contains(t, err.Error(), "empty")
	assert.Contains(t, err.Error(), "servers[1]")
	_, err = New([]string{"a:1", "b"})
	assert.Contains(t, err.Error(), "servers[1]")

	// The auth token never appears in an error.
	_, err = New(nil, WithAuthToken("sec\nret"))
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "sec")

	c, err := New(nil)
	require.NoError(t, err)
	assert.Equal(t, []string{DefaultServer}, c.Servers())
	require.NoError(t, c.Close())
	c, err = New([]string{"[::1]:6388", "example.com:1"})
	require.NoError(t, err)
	require.NoError(t, c.Close())
}

// A lease of 0 (the server's default) and one of exactly 1 ms (asked for as
// 1 s, the protocol's shortest) are accepted; the refusal of anything
// between says why.
func TestLeaseUnderAMillisecondIsAUnitMistake(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	_, err := c.TryLock(ctx, "k", LeaseTTL(30))
	require.ErrorIs(t, err, ErrInvalidArgument)
	assert.Contains(t, err.Error(), "a bare number is nanoseconds")

	for _, d := range []time.Duration{0, time.Millisecond} {
		l, err := c.TryLock(ctx, "k", LeaseTTL(d))
		require.NoError(t, err, "lease %v", d)
		require.NoError(t, l.Release(ctx))
	}
	_, err = New(nil, WithLeaseTTL(time.Microsecond))
	require.ErrorIs(t, err, ErrInvalidArgument)
	assert.Contains(t, err.Error(), "must be 0 (the server's default) or at least 1ms")
}

// A timeout under 1 ms is accepted (one computed from a deadline may be
// that short), and it bounds the server's answer too: shorter than a round
// trip, it times out even on a free key — AcquireTimeout(5), meant as
// seconds, fails loudly rather than acting as a try — and leaves nothing
// held. (Its doc said such a timeout was a try; review.)
func TestAcquireTimeoutShorterThanARoundTripTimesOut(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	warm, err := c.TryLock(ctx, "warm") // the lane is connected
	require.NoError(t, err)
	require.NoError(t, warm.Release(ctx))

	_, err = c.Lock(ctx, "free", AcquireTimeout(5))
	require.ErrorIs(t, err, ErrTimeout)
	_, err = c.Semaphore(ctx, "free-sem", 2, AcquireTimeout(5))
	require.ErrorIs(t, err, ErrTimeout)
	require.Eventually(t, func() bool { return len(srv.Stats().Locks) == 0 && len(srv.Stats().Semaphores) == 0 },
		5*time.Second, time.Millisecond, "a grant that crossed the timeout is released: %+v", srv.Stats())

	l, err := c.Lock(ctx, "free", AcquireTimeout(0)) // a try
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
}
