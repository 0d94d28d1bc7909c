package dflock

import (
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/shard"
	"github.com/dflock-sdk/go/testutil"
)

// Values that used to crash the process (a makeslice panic, an allocation
// of the whole address space) are refused by New with an error naming the
// option and its bound.
func TestNewRejectsOptionsAboveTheirBounds(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		opts  []Option
		arg   string
		bound string
	}{
		{"lane conns MaxInt", []Option{WithLaneConns(math.MaxInt)}, "lane conns", strconv.Itoa(MaxLaneConns)},
		{"lane conns over", []Option{WithLaneConns(MaxLaneConns + 1)}, "lane conns", strconv.Itoa(MaxLaneConns)},
		{"max conns MaxInt", []Option{WithMaxConnsPerServer(math.MaxInt)}, "max conns per server", strconv.Itoa(MaxConnsPerServer)},
		{"max conns over", []Option{WithMaxConnsPerServer(MaxConnsPerServer + 1)}, "max conns per server", strconv.Itoa(MaxConnsPerServer)},
		{"keepalive 1ns", []Option{WithKeepAlive(time.Nanosecond)}, "keepalive", MinKeepAlive.String()},
		{"server read timeout 0", []Option{WithServerReadTimeout(0)}, "server read timeout", "positive"},
		{"server read timeout under its floor", []Option{WithServerReadTimeout(MinServerReadTimeout - 1), WithKeepAlive(MinKeepAlive)}, "server read timeout", MinServerReadTimeout.String()},
		{"auth token over-long", []Option{WithAuthToken(strings.Repeat("s", 65537))}, "auth token", "65536"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(nil, tc.opts...)
			require.Nil(t, c)
			require.ErrorIs(t, err, ErrInvalidArgument)
			var ae *ArgError
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, tc.arg, ae.Arg)
			assert.Contains(t, err.Error(), tc.bound)
		})
	}

	// The bounds themselves are valid.
	c, err := New(nil, WithLaneConns(MaxLaneConns), WithMaxConnsPerServer(MaxConnsPerServer), WithKeepAlive(MinKeepAlive),
		WithServerReadTimeout(MinServerReadTimeout))
	require.NoError(t, err)
	require.NoError(t, c.Close())
}

// A keepalive the server's read timeout would cut off is refused, whichever
// order the two options come in; the defaults pass.
func TestNewRejectsKeepAliveAboveHalfTheServerReadTimeout(t *testing.T) {
	t.Parallel()
	refused := [][]Option{
		{WithKeepAlive(15 * time.Second)},         // default read timeout 23 s
		{WithServerReadTimeout(15 * time.Second)}, // default keepalive 10 s
		{WithKeepAlive(4 * time.Second), WithServerReadTimeout(7 * time.Second)},
		{WithServerReadTimeout(7 * time.Second), WithKeepAlive(4 * time.Second)},
		{WithKeepAlive(DefaultServerReadTimeout/2 + time.Nanosecond)},
		// A later valid keepalive does not hide an invalid option.
		{WithDialTimeout(-1), WithKeepAlive(time.Second)},
	}
	for i, opts := range refused {
		t.Run("refused "+strconv.Itoa(i), func(t *testing.T) {
			c, err := New(nil, opts...)
			require.Nil(t, c)
			require.ErrorIs(t, err, ErrInvalidArgument)
			if i == len(refused)-1 {
				var ae *ArgError
				require.ErrorAs(t, err, &ae)
				assert.Equal(t, "dial timeout", ae.Arg)
				return
			}
			assert.Contains(t, err.Error(), "keepalive")
			assert.Contains(t, err.Error(), "server read timeout")
		})
	}
	accepted := [][]Option{
		nil,
		{WithKeepAlive(DefaultServerReadTimeout / 2)},
		{WithKeepAlive(30 * time.Second), WithServerReadTimeout(time.Minute)},
		{WithServerReadTimeout(time.Minute), WithKeepAlive(30 * time.Second)},
		// A refused combination made valid by a later option.
		{WithKeepAlive(time.Minute), WithServerReadTimeout(time.Minute), WithKeepAlive(20 * time.Second)},
		// No read timeout at all.
		{WithServerReadTimeout(math.MaxInt64), WithKeepAlive(time.Hour)},
	}
	for i, opts := range accepted {
		t.Run("accepted "+strconv.Itoa(i), func(t *testing.T) {
			c, err := New(nil, opts...)
			require.NoError(t, err)
			require.NoError(t, c.Close())
		})
	}
	assert.LessOrEqual(t, DefaultKeepAlive, DefaultServerReadTimeout/2)
}

// Durations the protocol cannot carry mean "forever" and come out as
// MaxDuration, so that no deadline arithmetic downstream overflows.
func TestDurationsAboveTheProtocolMaximumAreClamped(t *testing.T) {
	t.Parallel()
	c, err := New(nil, WithLeaseTTL(math.MaxInt64), WithDialTimeout(math.MaxInt64))
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, MaxDuration, c.opts.leaseTTL)
	assert.Equal(t, MaxDuration, c.opts.dialTimeout)

	a, err := c.acquireOptions([]AcquireOption{AcquireTimeout(math.MaxInt64), LeaseTTL(math.MaxInt64)})
	require.NoError(t, err)
	assert.Equal(t, MaxDuration, a.timeout)
	assert.Equal(t, MaxDuration, a.lease)
	a, err = c.acquireOptions([]AcquireOption{AcquireTimeout(MaxDuration - 1), LeaseTTL(time.Second)})
	require.NoError(t, err)
	assert.Equal(t, MaxDuration-1, a.timeout)
	assert.Equal(t, time.Second, a.lease)
}

// WithRenewRatio accepts any ratio in (0, 1); a tiny one still renews a
// lease at most every MinKeepAlive, not once per round trip.
func TestTinyRenewRatioIsFlooredAtMinKeepAlive(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, []string{srv.Addr()}, WithRenewRatio(1e-12))
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "k", LeaseTTL(time.Minute))
	require.NoError(t, err)
	n0, start := srv.Stats().Requests["n"], time.Now()
	time.Sleep(300 * time.Millisecond)
	n, took := srv.Stats().Requests["n"]-n0, time.Since(start)
	require.NoError(t, l.Release(ctx))
	// One renewal per MinKeepAlive at most (plus the one in flight); the
	// round trip alone allowed over a thousand.
	assert.LessOrEqual(t, n, int64(took/MinKeepAlive)+1, "renewals of one lease in %v", took)
	assert.Positive(t, n, "no renewal at all")
}

func TestRenewRatioErrorNamesTheValue(t *testing.T) {
	t.Parallel()
	_, err := New([]string{"127.0.0.1:1"}, WithRenewRatio(1.5))
	var ae *ArgError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "renew ratio", ae.Arg)
	assert.Equal(t, "1.5", ae.Value)
}

// A strategy that refuses the servers (a ring of 0 virtual nodes) is
// blamed on the sharding option: the list itself is valid.
func TestBadShardingStrategyNamesTheOption(t *testing.T) {
	t.Parallel()
	c, err := New([]string{"127.0.0.1:1", "127.0.0.1:2"}, WithSharding(shard.RingWithVirtualNodes(0)))
	require.Nil(t, c)
	var ae *ArgError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "sharding", ae.Arg, "error: %v", err)
	assert.Contains(t, err.Error(), "virtual nodes")
}
