package pool

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// New refuses an out-of-range Config field with an error naming it, and a
// huge LaneConns is refused, not allocated (it panicked in makeslice).
func TestNewNamesTheBadConfigField(t *testing.T) {
	cases := []struct {
		field string
		cfg   Config
	}{
		{"Config.KeepAlive", Config{KeepAlive: -time.Second}},
		{"Config.KeepAlive", Config{KeepAlive: time.Microsecond}}, // healthy connections broke 241 times a second
		{"Config.KeepAlive", Config{KeepAlive: MinKeepAlive - 1}},
		{"Config.DialTimeout", Config{DialTimeout: -time.Second}},
		{"Config.MaxConns", Config{MaxConns: -1}},
		{"Config.LaneConns", Config{LaneConns: -1}},
		{"Config.LaneConns", Config{LaneConns: MaxLaneConns + 1}},
		{"Config.LaneConns", Config{LaneConns: math.MaxInt}},
		{"Config.MaxConnIdleTime", Config{MaxConnIdleTime: -time.Second}},
	}
	for _, tc := range cases {
		cfg := tc.cfg
		cfg.Addr = "127.0.0.1:1"
		var p *Pool
		var err error
		require.NotPanics(t, func() { p, err = New(cfg) }, tc.field)
		if p != nil {
			p.Close()
		}
		require.ErrorContains(t, err, tc.field)
	}
	p, err := New(Config{Addr: "127.0.0.1:1", LaneConns: MaxLaneConns, KeepAlive: MinKeepAlive})
	require.NoError(t, err)
	p.Close()
}
