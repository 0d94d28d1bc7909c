package dflock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

func TestStatsReportsServersAndClientCounters(t *testing.T) {
	t.Parallel()
	a, b := newServer(t, testutil.Config{}), newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(a, b))
	ctx := testCtx(t)

	l, err := c.Lock(ctx, "st-lock", LeaseTTL(20*time.Second))
	require.NoError(t, err)
	s, err := c.Semaphore(ctx, "st-sem", 4)
	require.NoError(t, err)
	_, err = c.TryLock(ctx, "st-lock")
	require.ErrorIs(t, err, ErrNotAcquired)

	st, err := c.Stats(ctx)
	require.NoError(t, err)
	require.Len(t, st.Servers, 2)
	assert.Equal(t, a.Addr(), st.Servers[0].Addr)
	assert.Equal(t, b.Addr(), st.Servers[1].Addr)
	var lockSeen, semSeen bool
	for _, ss := range st.Servers {
		require.NoError(t, ss.Err)
		require.NotNil(t, ss.State)
		assert.True(t, ss.Pool.Up)
		for _, lk := range ss.State.Locks {
			if lk.Key == "st-lock" {
				lockSeen = true
				assert.Equal(t, c.ServerFor("st-lock"), ss.Addr)
				assert.NotZero(t, lk.OwnerConnID)
				assert.InDelta(t, float64(20*time.Second), float64(lk.LeaseExpiresIn), float64(2*time.Second))
			}
		}
		for _, sm := range ss.State.Semaphores {
			if sm.Key == "st-sem" {
				semSeen = true
				assert.Equal(t, 4, sm.Limit)
				assert.Equal(t, 1, sm.Holders)
			}
		}
	}
	assert.True(t, lockSeen)
	assert.True(t, semSeen)
	assert.EqualValues(t, 2, st.Client.Acquired)
	assert.EqualValues(t, 2, st.Client.LaneGrants)
	assert.EqualValues(t, 2, st.Client.Held)
	assert.EqualValues(t, 2, st.Renew.Leases)

	require.NoError(t, l.Release(ctx))
	require.NoError(t, s.Release(ctx))
	st, err = c.Stats(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 2, st.Client.Released)
	assert.Zero(t, st.Client.Held)

	// A down server: its entry carries the error, the others are complete.
	require.NoError(t, b.Stop())
	st, err = c.Stats(ctx)
	require.Error(t, err)
	assert.NoError(t, st.Servers[0].Err)
	assert.NotNil(t, st.Servers[0].State)
	assert.Error(t, st.Servers[1].Err)
	assert.Nil(t, st.Servers[1].State)
}

func TestParseServerStateOfEveryVersion(t *testing.T) {
	doc := `{"connections":2,"locks":[{"key":"k1","owner_conn_id":3,"lease_expires_in_s":32.998938038,"waiters":1}],` +
		`"semaphores":[{"key":"s","limit":3,"holders":2,"waiters":0}],"idle_locks":[{"key":"old","idle_s":4.5}],` +
		`"idle_semaphores":[],"signal_channels":[{"pattern":"a.>","group":"g","listeners":2},{"pattern":"b","listeners":1}]}`
	st, err := parseServerState(doc)
	require.NoError(t, err)
	assert.Equal(t, 2, st.Connections)
	require.Len(t, st.Locks, 1)
	assert.Equal(t, LockState{Key: "k1", OwnerConnID: 3, LeaseExpiresIn: 32998938038, Waiters: 1}, st.Locks[0])
	assert.Equal(t, []SemaphoreState{{Key: "s", Limit: 3, Holders: 2}}, st.Semaphores)
	assert.Equal(t, []IdleKey{{Key: "old", Idle: 4500 * time.Millisecond}}, st.IdleLocks)
	assert.Equal(t, []SignalChannel{{Pattern: "a.>", Group: "g", Listeners: 2}, {Pattern: "b", Listeners: 1}}, st.SignalChannels)

	_, err = parseServerState(`{"connections":1,"locks":[],"semaphores":[],"idle_locks":[],"idle_semaphores":[]}`)
	require.NoError(t, err)
	_, err = parseServerState(`{"signal_channels":null}`)
	require.NoError(t, err)
	_, err = parseServerState(`not json`)
	require.Error(t, err)
}
