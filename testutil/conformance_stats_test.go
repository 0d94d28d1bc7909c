package testutil

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConformanceStats covers §6.7.
func TestConformanceStats(t *testing.T) {
	t.Parallel()

	for _, v := range []Version{V1_16, V1_10, V2_1} {
		t.Run("empty "+versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v})
			c := dialSrv(t, srv)
			want := `ok {"connections":1,"locks":[],"semaphores":[],"idle_locks":[],"idle_semaphores":[]`
			if v == V1_16 {
				want += `,"signal_channels":[]`
			}
			c.send("stats", "_", "")
			c.expect(want + "}")
		})
	}

	t.Run("populated", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		b := dialSrv(t, srv)
		a.lock("held", "0 20", 20)
		b.send("l", "held", "30")
		waitLockWaiters(t, srv, "held", 1)
		a.send("sl", "sem", "0 2")
		a.expectGrant("ok", 33)
		a.send("sl", "sem", "0 2")
		a.expectGrant("ok", 33)
		c := dialSrv(t, srv)
		c.send("sl", "sem", "30 2")
		waitSemWaiters(t, srv, "sem", 1)
		it := a.lock("idle", "0", 33)
		a.send("r", "idle", it)
		a.expect("ok")
		a.send("sl", "isem", "0 3")
		st := a.expectGrant("ok", 33)
		a.send("sr", "isem", st)
		a.expect("ok")

		d := dialSrv(t, srv)
		line := statsLine(d)
		assert.Regexp(t, regexp.MustCompile(`^ok \{"connections":4,"locks":\[\{"key":"held","owner_conn_id":[1-9][0-9]*,"lease_expires_in_s":[0-9.eE+-]+,"waiters":1\}\],`+
			`"semaphores":\[\{"key":"sem","limit":2,"holders":2,"waiters":1\}\],`+
			`"idle_locks":\[\{"key":"idle","idle_s":[0-9.eE+-]+\}\],`+
			`"idle_semaphores":\[\{"key":"isem","idle_s":[0-9.eE+-]+\}\],`+
			`"signal_channels":\[\]\}$`), line)
		ws := decodeStats(t, line)
		require.Len(t, ws.Locks, 1)
		assert.Greater(t, ws.Locks[0].LeaseExpiresInS, 15.0)
		assert.LessOrEqual(t, ws.Locks[0].LeaseExpiresInS, 20.0)
		require.Len(t, ws.IdleLocks, 1)
		assert.GreaterOrEqual(t, ws.IdleLocks[0].IdleS, 0.0)
		assert.Less(t, ws.IdleLocks[0].IdleS, 5.0)

		typed := srv.Stats()
		assert.Equal(t, 4, typed.Connections)
		l, ok := findLock(typed, "held")
		require.True(t, ok)
		assert.Equal(t, ws.Locks[0].OwnerConnID, l.OwnerConnID, "typed and wire owner ids agree")
		assert.Equal(t, 1, l.Waiters)
		s, ok := findSem(typed, "sem")
		require.True(t, ok)
		assert.Equal(t, SemaphoreInfo{Key: "sem", Limit: 2, Holders: 2, Waiters: 1}, s)
		assert.NotNil(t, typed.Requests)
		assert.EqualValues(t, 3, typed.Requests["l"], "requests by command word: %v", typed.Requests)
		assert.EqualValues(t, 4, typed.Requests["sl"], "requests by command word: %v", typed.Requests)
		assert.Positive(t, typed.Reads)

		d.send("zz", "_", "")
		d.expect("error")
		d.send("ZZ", "_", "")
		d.expect("error")
		assert.EqualValues(t, 2, srv.Stats().Requests["?"], "unknown commands counted under ?")
	})

	t.Run("owner ids differ per connection", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		b := dialSrv(t, srv)
		a.lock("a1", "0", 33)
		a.lock("a2", "0", 33)
		b.lock("b1", "0", 33)
		ws := decodeStats(t, statsLine(a))
		ids := map[string]uint64{}
		for _, l := range ws.Locks {
			ids[l.Key] = l.OwnerConnID
		}
		require.Len(t, ids, 3)
		assert.Equal(t, ids["a1"], ids["a2"])
		assert.NotEqual(t, ids["a1"], ids["b1"])
	})

	t.Run("keys are JSON-escaped", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		a.lock(`q"\k`, "0", 33)
		ws := decodeStats(t, statsLine(a))
		require.Len(t, ws.Locks, 1)
		assert.Equal(t, `q"\k`, ws.Locks[0].Key)
	})
}

// wireStats mirrors the §6.7 stats JSON.
type wireStats struct {
	Connections int `json:"connections"`
	Locks       []struct {
		Key             string  `json:"key"`
		OwnerConnID     uint64  `json:"owner_conn_id"`
		LeaseExpiresInS float64 `json:"lease_expires_in_s"`
		Waiters         int     `json:"waiters"`
	} `json:"locks"`
	Semaphores []struct {
		Key     string `json:"key"`
		Limit   int    `json:"limit"`
		Holders int    `json:"holders"`
		Waiters int    `json:"waiters"`
	} `json:"semaphores"`
	IdleLocks []struct {
		Key   string  `json:"key"`
		IdleS float64 `json:"idle_s"`
	} `json:"idle_locks"`
	IdleSemaphores []struct {
		Key   string  `json:"key"`
		IdleS float64 `json:"idle_s"`
	} `json:"idle_semaphores"`
	SignalChannels []struct {
		Pattern   string `json:"pattern"`
		Group     string `json:"group,omitempty"`
		Listeners int    `json:"listeners"`
	} `json:"signal_channels"`
}

func decodeStats(t testing.TB, line string) wireStats {
	t.Helper()
	require.True(t, strings.HasPrefix(line, "ok {"), "stats reply %q", line)
	dec := json.NewDecoder(strings.NewReader(strings.TrimPrefix(line, "ok ")))
	dec.DisallowUnknownFields()
	var st wireStats
	require.NoError(t, dec.Decode(&st), "stats JSON %s", line)
	return st
}

func statsLine(c *rawConn) string {
	c.t.Helper()
	return c.req("stats", "_", "")
}
