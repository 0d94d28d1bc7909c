package dflock

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/shard"
	"github.com/dflock-sdk/go/testutil"
)

// nilPlacementStrategy is a (buggy) custom Strategy whose Place returns
// neither a Placement nor an error.
type nilPlacementStrategy struct{}

func (nilPlacementStrategy) Place([]string) (shard.Placement, error) { return nil, nil }

// New refuses a Strategy whose Place returns (nil, nil): every keyed call
// of a multi-server Client would panic with a nil dereference.
func TestNilPlacementIsRejectedByNew(t *testing.T) {
	t.Parallel()
	a, b := newServer(t, testutil.Config{}), newServer(t, testutil.Config{})
	c, err := New(addrsOf(a, b), WithSharding(nilPlacementStrategy{}))
	if c != nil {
		defer c.Close()
		var perr any
		func() {
			defer func() { perr = recover() }()
			_, _ = c.TryLock(testCtx(t), "k")
		}()
		assert.Nil(t, perr, "TryLock panicked")
	}
	require.Error(t, err, "New accepted a Strategy that placed nothing")
	require.ErrorIs(t, err, ErrInvalidArgument)
}

// One server listed in two spellings ("h:6388" and "h:06388", "h:+6388",
// "H:6388") is refused as listed twice or as a bad port, not taken for two
// servers (two pools, and two shares of the keys for one server); a host
// with control characters is refused (it would land raw in every error and
// log line).
func TestServerListSpellingsOfOneServerAndControlCharacters(t *testing.T) {
	t.Parallel()
	for _, list := range [][]string{
		{"127.0.0.1:6388", "127.0.0.1:06388"},
		{"127.0.0.1:6388", "127.0.0.1:+6388"},
		{"h\x00:6388"},
		{"h\x7f:6388"},
		{"Example.com:6388", "example.com:6388"},
		{"h\u2028:6388"},
		{"[::1]:6388", "[0:0:0:0:0:0:0:1]:6388"},
		{"[::ffff:127.0.0.1]:6388", "127.0.0.1:6388"},
		{"example.com.:6388", "example.com:6388"},
		{"[fe80::1%eth0]:6388", "[FE80::1%eth0]:6388"},
	} {
		c, err := New(list)
		if c != nil {
			_ = c.Close()
		}
		assert.ErrorIs(t, err, ErrInvalidArgument, "New(%q)", list)
	}
}

// Addresses that only look alike are different servers: an IPv6 zone is an
// interface name, case-sensitive on Linux.
func TestServerListDistinctServersAreAccepted(t *testing.T) {
	t.Parallel()
	for _, list := range [][]string{
		{"[fe80::1%eth0]:6388", "[fe80::1%ETH0]:6388"},
		{"[::1]:6388", "[::2]:6388"},
		{"example.com:6388", "example.com:6389"},
	} {
		c, err := New(list)
		require.NoError(t, err, "New(%q)", list)
		require.Equal(t, list, c.Servers())
		require.NoError(t, c.Close())
	}
}
