package dflock

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
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

// Stats does not need a wait-pool connection: it answers while every one
// of them is pinned by a held lock (it used to wait until ctx ended).
func TestStatsAnswersWhileEveryWaitPoolConnectionIsPinned(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv), WithMaxConnsPerServer(2))
	other := newClient(t, addrsOf(srv))
	ctx := testCtx(t)

	// Each lock is held elsewhere first, so that c's Lock waits on a
	// wait-pool connection and is granted there, pinning it.
	for _, key := range []string{"pinned-1", "pinned-2"} {
		h, err := other.TryLock(ctx, key)
		require.NoError(t, err)
		got := make(chan error, 1)
		go func() {
			l, err := c.Lock(ctx, key)
			if err == nil {
				t.Cleanup(func() { _ = l.Release(context.Background()) })
			}
			got <- err
		}()
		require.Eventually(t, func() bool { return lockWaiters(srv, key) == 1 }, testTimeout, time.Millisecond)
		require.NoError(t, h.Release(ctx))
		require.NoError(t, <-got)
	}
	ps := c.servers[0].pool.Stats()
	require.Equal(t, 2, ps.PinnedConns, "every wait-pool connection is pinned")
	require.Equal(t, 2, ps.AcquiredConns)

	st, err := c.Stats(ctx)
	require.NoError(t, err)
	require.NotNil(t, st.Servers[0].State)
	var keys []string
	for _, l := range st.Servers[0].State.Locks {
		keys = append(keys, l.Key)
	}
	assert.ElementsMatch(t, []string{"pinned-1", "pinned-2"}, keys)
	assert.Equal(t, 2, c.servers[0].pool.Stats().AcquiredConns, "Stats took no wait-pool connection")
}

// A server with enough keys for a stats reply over 1 MiB (the reply-line
// cap of every other connection) is described in full; a cap below the
// reply fails that server's entry with an error that names the option.
func TestStatsOfAServerWhoseReplyExceedsOneMiB(t *testing.T) {
	t.Parallel()
	// 4,500 keys of 240 bytes: over 1 MiB of keys alone. The server's
	// default key limit (1024) is lifted.
	const n, keyLen = 4500, 240
	srv := newServer(t, testutil.Config{MaxLocks: -1})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	key := func(i int) string { return fmt.Sprintf("%0*d", keyLen, i) }
	// The keys are taken in one pipelined write on a raw connection (the
	// Client is not the subject here, and 9,000 round trips under -race
	// are most of a second) and left idle by closing it: auto-release.
	nc, err := net.Dial("tcp", srv.Addr())
	require.NoError(t, err)
	var req strings.Builder
	for i := range n {
		fmt.Fprintf(&req, "l\n%s\n0\n", key(i))
	}
	go func() { _, _ = nc.Write([]byte(req.String())) }()
	replies := bufio.NewScanner(nc)
	for i := range n {
		require.True(t, replies.Scan(), "reply %d: %v", i, replies.Err())
		require.True(t, strings.HasPrefix(replies.Text(), "ok "), "reply %d: %q", i, replies.Text())
	}
	require.NoError(t, nc.Close())
	require.Eventually(t, func() bool { return len(srv.Stats().IdleLocks) == n }, testTimeout, 5*time.Millisecond)

	st, err := c.Stats(ctx)
	require.NoError(t, err)
	state := st.Servers[0].State
	require.NotNil(t, state)
	require.Len(t, state.IdleLocks, n)
	size := 0
	for _, k := range state.IdleLocks {
		size += len(k.Key)
	}
	require.Greater(t, size, 1<<20, "the reply is over 1 MiB")

	small := newClient(t, addrsOf(srv), WithMaxStatsReply(1<<20))
	st, err = small.Stats(ctx)
	require.Error(t, err)
	t.Log(err)
	assert.Nil(t, st.Servers[0].State)
	require.Error(t, st.Servers[0].Err)
	assert.Contains(t, err.Error(), "WithMaxStatsReply")
	assert.Equal(t, 1, strings.Count(err.Error(), srv.Addr()), "the address once")
	assert.NotErrorIs(t, err, ErrServerUnavailable, "a larger cap would cure it: the server is fine")
	// Nothing else was disturbed: the lane still serves.
	l, err := small.TryLock(ctx, "after")
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))
}

func TestNewRejectsMaxStatsReplyOutOfBounds(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, minStatsReply - 1, MaxStatsReply + 1, min(1<<62, math.MaxInt)} {
		_, err := New(nil, WithMaxStatsReply(n))
		var ae *ArgError
		require.ErrorAs(t, err, &ae, "%d", n)
		assert.Equal(t, "max stats reply", ae.Arg)
		assert.True(t, strings.Contains(err.Error(), fmt.Sprint(MaxStatsReply)), err.Error())
	}
	c, err := New(nil, WithMaxStatsReply(MaxStatsReply))
	require.NoError(t, err)
	require.NoError(t, c.Close())
}

// Stats after Close fails with ErrClosed, and each server's entry says why
// its State is nil, as the doc promises for every missing State (found by
// review: Err was nil there).
func TestStatsAfterCloseSaysWhyEachStateIsMissing(t *testing.T) {
	t.Parallel()
	srv1, srv2 := newServer(t, testutil.Config{}), newServer(t, testutil.Config{})
	c, err := New([]string{srv1.Addr(), srv2.Addr()})
	require.NoError(t, err)
	require.NoError(t, c.Close())

	st, err := c.Stats(testCtx(t))
	require.ErrorIs(t, err, ErrClosed)
	require.Len(t, st.Servers, 2)
	for i, addr := range []string{srv1.Addr(), srv2.Addr()} {
		s := st.Servers[i]
		assert.Equal(t, addr, s.Addr)
		assert.Nil(t, s.State)
		assert.ErrorIs(t, s.Err, ErrClosed, "ServerStats.Err of %s", addr)
		assert.ErrorContains(t, s.Err, addr)
	}
}

// A count below zero, which no server sends, makes the reply a protocol
// error naming the field, as other malformations do; before, it reached
// the caller as it came.
func TestParseServerStateRefusesNegativeCounts(t *testing.T) {
	for doc, field := range map[string]string{
		`{"connections":-5}`: "negative connections",
		`{"locks":[{"key":"a","owner_conn_id":0,"lease_expires_in_s":0,"waiters":-7}]}`: `negative waiters of lock "a"`,
		`{"semaphores":[{"key":"s","limit":-1,"holders":0,"waiters":0}]}`:               `negative limit of semaphore "s"`,
		`{"semaphores":[{"key":"s","limit":2,"holders":-3,"waiters":0}]}`:               `negative holders of semaphore "s"`,
		`{"semaphores":[{"key":"s","limit":2,"holders":0,"waiters":-2}]}`:               `negative waiters of semaphore "s"`,
		`{"signal_channels":[{"pattern":"p","listeners":-1}]}`:                          `negative listeners of pattern "p"`,
	} {
		_, err := parseServerState(doc)
		var pe *wire.ProtocolError
		require.ErrorAs(t, err, &pe, doc)
		assert.Contains(t, err.Error(), field, doc)
	}
	_, err := parseServerState(`{"connections":0,"locks":[{"key":"a","owner_conn_id":0,"lease_expires_in_s":0,"waiters":0}]}`)
	require.NoError(t, err, "zeros are counts")
}

// The hint to raise WithMaxStatsReply goes only with a stats reply over
// that cap, not with a server found unavailable because another line was
// too long (here the handshake's answer to auth, over the 1 MiB cap of
// every other reply): it named a cap that was not the one hit.
func TestStatsHintsAtTheStatsCapOnlyForTheStatsReply(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 2<<20)
	addr := testutil.ServeRaw(t, func(nc net.Conn) {
		if _, err := bufio.NewReader(nc).ReadString('\n'); err == nil {
			_, _ = nc.Write([]byte("ok " + long + "\n"))
		}
		_, _ = io.Copy(io.Discard, nc) // no close with unread bytes: a reset
	})
	c := newClient(t, []string{addr}, WithAuthToken("tok"))
	ctx := testCtx(t)
	_, err := c.TryLock(ctx, "k") // the lane's handshake: the server is down
	require.ErrorIs(t, err, wire.ErrLineTooLong)
	_, err = c.Stats(ctx)
	require.ErrorIs(t, err, ErrServerUnavailable)
	require.ErrorIs(t, err, wire.ErrLineTooLong)
	assert.NotContains(t, err.Error(), "WithMaxStatsReply")
}

// A Stats query whose goroutine exits unfinished (a runtime.Goexit in a
// dialer: a test's t.FailNow, say) reports an error for its server; it
// read as a server that answered nothing, with no error.
func TestStatsReportsAQueryThatExitedUnfinished(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, []string{srv.Addr()}, WithDialer(func(context.Context, string, string) (net.Conn, error) {
		runtime.Goexit()
		return nil, nil
	}))
	st, err := c.Stats(testCtx(t))
	require.ErrorIs(t, err, errQueryUnfinished)
	require.Len(t, st.Servers, 1)
	require.Nil(t, st.Servers[0].State)
	require.ErrorIs(t, st.Servers[0].Err, errQueryUnfinished)
	require.Contains(t, st.Servers[0].Err.Error(), srv.Addr())
}
