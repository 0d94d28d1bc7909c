package pool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// After Close, Stats.Up and Since stay as they were, also for a server
// marked down by a failed lane dial (here: at its connection cap) while
// another lane connection is healthy, which is Up (Err() is nil: Do keeps
// serving on the lane). Close closed that lane, and Up turned false, Since
// jumping to the failed dial: dflockotel's server.up fell to 0 at shutdown
// in exactly the state where the server is busiest (found by review).
func TestStatsUpStaysAfterCloseWithServerMarkedDownButLaneHealthy(t *testing.T) {
	srv := newServer(t, testutil.Config{MaxConnections: 1})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 2})
	ctx := ctxWait(t)
	_, _, err := p.Do(ctx, lockReq("k"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return p.Stats().DialFailures > 0 }, wait, time.Millisecond)
	before := p.Stats()
	require.True(t, before.Up, "a lane is healthy: up")
	require.NoError(t, p.Err())
	p.Close()
	after := p.Stats()
	t.Logf("before Close: Up=%v Since=%v; after: Up=%v Since=%v", before.Up, before.Since, after.Up, after.Since)
	require.Equal(t, before.Up, after.Up, "Up after Close")
	require.Equal(t, before.Since, after.Since, "Since after Close")
}
