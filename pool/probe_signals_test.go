package pool

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// Config.ProbeSignals tells the servers with signals (v1.11–v1.16, random
// tokens) from those without (v1.10, v2.x) on every kind of connection, and
// the probe's `error` on a server without signals leaves the connection
// usable. Without the probe nothing is claimed.
func TestProbeSignalsTellsTheSignalEraApart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		version testutil.Version
		signals bool
	}{
		{"v1.16", testutil.V1_16, true},
		{"v1.10", testutil.V1_10, false},
		{"v2.1", testutil.V2_1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{Version: tc.version})
			ctx := ctxWait(t)
			for _, probe := range []bool{false, true} {
				p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1, ProbeSignals: probe})
				r, lane, err := p.Do(ctx, lockReq("probe"))
				require.NoError(t, err)
				require.Equal(t, wire.StatusOK, r.Status, "the connection works after the probe")
				assert.Equal(t, probe && tc.signals, OwnerHasSignals(lane), "lane, probe %v", probe)
				conn, err := p.Acquire(ctx)
				require.NoError(t, err)
				r, err = conn.Do(ctx, wire.ReleaseRequest("probe", r.Token, false))
				require.NoError(t, err)
				require.Equal(t, wire.StatusOK, r.Status)
				assert.Equal(t, probe && tc.signals, OwnerHasSignals(conn), "wait-pool conn, probe %v", probe)
				conn.Release()
				p.Close()
			}
		})
	}
}
