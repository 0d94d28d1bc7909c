package testutil

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLocksFIFOAcrossTwentyWaiters(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	holder := udial(t, s)
	tok := holder.grant("l", "k", "0")

	waiters := make([]*uconn, 20)
	for i := range waiters {
		waiters[i] = udial(t, s)
		waiters[i].send("l", "k", "30")
		// Queue them one at a time so that the join order is known.
		waitFor(t, "waiter queued", func() bool { return lockWaiters(s, "k") == i+1 })
	}
	require.Equal(t, "ok", holder.do("r", "k", tok))
	for i, w := range waiters {
		// Only waiter i can be granted now; a wrong order would leave it blocked.
		tok := grantToken(t, w.line(), "ok")
		assert.Equal(t, 20-i-1, lockWaiters(s, "k"))
		require.Equal(t, "ok", w.do("r", "k", tok), "waiter %d", i)
	}
}

func TestLocksSemaphoreFIFOWithLimit(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	a, b, c := udial(t, s), udial(t, s), udial(t, s)
	ta := a.grant("sl", "s", "0 2")
	b.grant("sl", "s", "0 2")
	assert.Equal(t, "timeout", c.do("sl", "s", "0 2"), "try-acquire at the limit")
	assert.Equal(t, "error_limit_mismatch", c.do("sl", "s", "0 3"))
	c.send("sl", "s", "30 2")
	waitFor(t, "queued", func() bool {
		st := s.Stats()
		return len(st.Semaphores) == 1 && st.Semaphores[0].Waiters == 1
	})
	require.Equal(t, "ok", a.do("sr", "s", ta))
	grantToken(t, c.line(), "ok")
}

func TestLocksLeaseExpiryHandsOn(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{SweepInterval: 100 * time.Millisecond})
	a := udial(t, s)
	tok := a.grant("l", "k", "0 1")
	b := udial(t, s)
	start := time.Now()
	b.send("l", "k", "10")
	grantToken(t, b.line(), "ok")
	elapsed := time.Since(start)
	assert.Greater(t, elapsed, 800*time.Millisecond, "granted before the lease lapsed")
	assert.Less(t, elapsed, 2*time.Second, "expired lease not handed on promptly")
	// A lapsed lease is never resurrected.
	assert.Equal(t, "error", a.do("n", "k", tok))
	assert.Equal(t, "error", a.do("r", "k", tok))
}

func TestLocksRenewOfExpiredUnsweptLeaseHandsOn(t *testing.T) {
	t.Parallel()
	// A sweeper that never runs during the test: only the renew can evict.
	s := NewServer(t, Config{SweepInterval: time.Hour})
	a := udial(t, s)
	tok := a.grant("l", "k", "0 1")
	b := udial(t, s)
	b.send("l", "k", "10")
	waitFor(t, "queued", func() bool { return lockWaiters(s, "k") == 1 })
	time.Sleep(1100 * time.Millisecond) // let the lease lapse: time is the thing under test
	assert.Equal(t, "error", a.do("n", "k", tok))
	grantToken(t, b.line(), "ok")
}

func TestLocksAutoReleaseBoundToAcquiringConnection(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	a, b := udial(t, s), udial(t, s)
	tok := a.grant("l", "k", "0")
	// Renewing and releasing are authorised by (key, token) from anywhere.
	assert.Equal(t, "ok 9", b.do("n", "k", tok+" 9"))
	assert.Equal(t, "ok 33", b.do("n", "k", tok), "renew without lease uses the server default")

	// The renewing connection leaving does not release the lock ...
	b.nc.Close()
	waitFor(t, "b gone", func() bool { return s.Stats().Connections == 1 })
	c := udial(t, s)
	assert.Equal(t, "timeout", c.do("l", "k", "0"))

	// ... the acquiring one does, although b renewed it.
	c.send("l", "k", "10")
	waitFor(t, "queued", func() bool { return lockWaiters(s, "k") == 1 })
	a.nc.Close()
	grantToken(t, c.line(), "ok")
	assert.Equal(t, "error", c.do("n", "k", tok))
}

func TestLocksAutoReleaseDisabled(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{DisableAutoRelease: true})
	a := udial(t, s)
	a.grant("l", "k", "0")
	a.send("e", "q", "")
	assert.Equal(t, "acquired", strings.Fields(a.line())[0])
	a.nc.Close()
	waitFor(t, "a gone", func() bool { return s.Stats().Connections == 0 })
	b := udial(t, s)
	assert.Equal(t, "timeout", b.do("l", "k", "0"), "held slots stay until expiry")
}

func TestLocksPeerCloseWithdrawsBlockedWaiter(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	a := udial(t, s)
	tok := a.grant("l", "k", "0")
	b := udial(t, s)
	b.send("l", "k", "30")
	waitFor(t, "queued", func() bool { return lockWaiters(s, "k") == 1 })
	b.nc.Close()
	waitFor(t, "waiter withdrawn", func() bool { return lockWaiters(s, "k") == 0 })
	// The lock goes to nobody: releasing it leaves the key idle.
	require.Equal(t, "ok", a.do("r", "k", tok))
	assert.Empty(t, s.Stats().Locks)
}

func TestLocksPipelineFillingReadBufferDuringWaitIsAbuse(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	a := udial(t, s)
	a.grant("l", "k", "0")
	b := udial(t, s)
	b.send("l", "k", "30")
	waitFor(t, "queued", func() bool { return lockWaiters(s, "k") == 1 })
	b.raw(strings.Repeat("ping\n_\n\n", readBufSize/8+1))
	b.expectEOF(unitWait)
	waitFor(t, "waiter withdrawn", func() bool { return lockWaiters(s, "k") == 0 })
}

func TestLocksTwoPhase(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	a, b := udial(t, s), udial(t, s)
	tok := grantToken(t, a.do("e", "k", ""), "acquired")
	assert.Equal(t, "error_already_enqueued", a.do("e", "k", ""))
	assert.Equal(t, "queued", b.do("e", "k", "7"))
	assert.Equal(t, "error_not_enqueued", a.do("w", "k2", "0"))
	assert.Equal(t, "ok "+tok+" 33", a.do("w", "k", "0"))
	assert.Equal(t, "error_not_enqueued", a.do("w", "k", "0"), "w consumes the state")
	assert.Equal(t, "timeout", b.do("w", "k", "0"))
	assert.Equal(t, "error_not_enqueued", b.do("w", "k", "0"))

	assert.Equal(t, "queued", b.do("e", "k", "7"))
	require.Equal(t, "ok", a.do("r", "k", tok))
	// Granted while nobody waited: w picks the grant up.
	assert.Regexp(t, `^ok [0-9a-f]{32} 7$`, b.do("w", "k", "5"))
}

func TestLocksTwoPhaseLeaseLapsedBeforeWait(t *testing.T) {
	t.Parallel()
	for _, evict := range []struct {
		name string
		do   func(s *Server, other *uconn)
		want string
	}{
		{"not evicted", func(*Server, *uconn) {}, "error_lease_expired"},
		{"swept", func(s *Server, _ *uconn) { s.locks.sweep() }, "error_not_enqueued"},
		{"evicted by an acquire", func(_ *Server, o *uconn) { o.grant("l", "k", "0") }, "error_not_enqueued"},
	} {
		t.Run(evict.name, func(t *testing.T) {
			t.Parallel()
			s := NewServer(t, Config{SweepInterval: time.Hour})
			a, o := udial(t, s), udial(t, s)
			grantToken(t, a.do("e", "k", "1"), "acquired")
			waitFor(t, "lease lapsed", func() bool {
				l, ok := findLock(s.Stats(), "k")
				return ok && l.LeaseExpiresIn == 0
			})
			evict.do(s, o)
			assert.Equal(t, evict.want, a.do("w", "k", "0"))
		})
	}
}

func TestLocksMaxLocksAndMaxWaiters(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{MaxLocks: 2, MaxWaiters: 1})
	a, b, c := udial(t, s), udial(t, s), udial(t, s)
	tok := a.grant("l", "k1", "0")
	a.grant("sl", "k2", "0 1")
	assert.Equal(t, "error_max_locks", a.do("l", "k3", "0"))
	require.Equal(t, "ok", a.do("r", "k1", tok))
	assert.Equal(t, "error_max_locks", a.do("l", "k3", "0"), "idle keys count until GC")
	a.grant("l", "k1", "0")
	b.send("l", "k1", "30")
	waitFor(t, "queued", func() bool { return lockWaiters(s, "k1") == 1 })
	assert.Equal(t, "error_max_waiters", c.do("l", "k1", "30"))
	assert.Equal(t, "error_max_waiters", c.do("e", "k1", ""))
}

func TestLocksIdleKeysAreCollected(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{MaxLocks: 1, GCInterval: 50 * time.Millisecond, GCMaxIdle: 100 * time.Millisecond})
	a := udial(t, s)
	tok := a.grant("l", "k1", "0")
	require.Equal(t, "ok", a.do("r", "k1", tok))
	waitFor(t, "idle key collected", func() bool { return len(s.Stats().IdleLocks) == 0 })
	a.grant("l", "k2", "0")
}

func TestLocksV110SharesLockAndSemaphoreKeys(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{Version: V1_10})
	a := udial(t, s)
	a.grant("sl", "s", "0 2")
	assert.Equal(t, "error_limit_mismatch", a.do("l", "s", "0"), "a lock is a limit-1 semaphore")
	tok := a.grant("sl", "one", "0 1")
	assert.Equal(t, "timeout", a.do("l", "one", "0"), "same resource")
	assert.Equal(t, "ok", a.do("r", "one", tok), "r releases an sl token")
	assert.Equal(t, "error", a.do("ping", "_", ""), "no ping on v1.10")
	assert.Equal(t, "error", a.do("listen", "a", ""), "no signals on v1.10")
	assert.NotContains(t, a.do("stats", "_", ""), "signal_channels")

	s16 := NewServer(t, Config{})
	b := udial(t, s16)
	stok := b.grant("sl", "x", "0 2")
	ltok := b.grant("l", "x", "0")
	assert.Equal(t, "error", b.do("r", "x", stok), "separate namespaces from v1.14")
	assert.Equal(t, "error", b.do("sr", "x", ltok))
	assert.Equal(t, "ok", b.do("sr", "x", stok))
	assert.Contains(t, b.do("stats", "_", ""), `"signal_channels":[]`)
}

func TestLocksV21FenceStrictlyIncreases(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{Version: V2_1})
	a := udial(t, s)
	start := uint64(time.Now().Add(-time.Minute).UnixNano())
	var last uint64
	for i := range 50 {
		key := fmt.Sprintf("k%d", i%3)
		tok := a.grant("l", key, "0")
		raw, err := hex.DecodeString(tok)
		require.NoError(t, err)
		fence := binary.BigEndian.Uint64(raw[:8])
		assert.Greater(t, fence, last, "fence of grant %d", i)
		assert.Greater(t, fence, start, "fence seeded with wall-clock nanoseconds")
		last = fence
		require.Equal(t, "ok", a.do("r", key, tok))
	}
	assert.Equal(t, "error", a.do("listen", "a", ""), "no signals on v2.1")
	assert.Equal(t, "ok", a.do("ping", "_", ""))
}

func TestLocksValidation(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	a := udial(t, s)
	for _, tc := range []struct{ cmd, key, arg, want string }{
		{"L", "k", "0", "error"},
		{"l", "", "0", "error"},
		{"l", "a b", "0", "error"},
		{"l", "k", "", "error"},
		{"l", "k", "-1", "error"},
		{"l", "k", "9223372037", "error"},
		{"l", "k", "0 0", "error"},
		{"l", "k", "0 1 2", "error"},
		{"l", "k", "x", "error"},
		{"sl", "k", "0 0", "error"},
		{"e", "k", "30 junk", "error"},
		{"w", "k", "", "error"},
		{"r", "k", " ", "error"},
		{"n", "k", "", "error"},
		{"signal", "a.*", "p", "error"},
		{"signal", "a", "  ", "error"},
		{"listen", "a.b*", "", "error"},
		{"listen", "a.>.b", "", "error"},
		{"unlisten", "a.>.b", "", "error"},
		{"unlisten", "never", "g", "ok"},
		{"auth", "_", "x", "error"},
	} {
		assert.Equal(t, tc.want, a.do(tc.cmd, tc.key, tc.arg), "%q %q %q", tc.cmd, tc.key, tc.arg)
	}
	assert.Regexp(t, `^ok [0-9a-f]{32} 5$`, a.do("l", "lead", " +1   005 "))
	assert.Regexp(t, `^ok [0-9a-f]{32} 33$`, a.do("l", "nbsp\u00a0key", "0"))

	// 256 content bytes with LF work; 256 + CR is one byte too many and fatal.
	long := strings.Repeat("k", maxLineBytes)
	assert.Regexp(t, `^ok `, a.do("l", long, "0"))
	a.send("l", long+"\r", "0")
	assert.Equal(t, "error", a.line())
	a.expectEOF(unitWait)
}

func TestParseHelpers(t *testing.T) {
	t.Parallel()
	var f [4]string
	assert.Equal(t, 2, fields(" 1 \u00a0 5 ", f[:]))
	assert.Equal(t, []string{"1", "5"}, f[:2])
	assert.Equal(t, 5, fields("a b c d e", f[:]))

	for _, p := range []string{">", "a", "a.*", "*.b", "a.>", "a.*.>", "a..b"} {
		assert.True(t, validPattern(p), p)
	}
	for _, p := range []string{"a*", "a.b>", ">.a", "a.>.>", "**"} {
		assert.False(t, validPattern(p), p)
	}
	for _, tc := range []struct {
		pattern, channel string
		want             bool
	}{
		{">", "a", true}, {">", "a.b.c", true},
		{"a.>", "a", false}, {"a.>", "a.b", true}, {"a.>", "a.b.c", true},
		{"a.*", "a.b", true}, {"a.*", "a.b.c", false}, {"a.*", "a", false},
		{"*.b", "a.b", true}, {"a.b", "a.b", true}, {"a.b", "a.c", false},
		{"a.*.c", "a.b.c", true}, {"a.*.c", "a.b.d", false},
		// Empty tokens count, as with strings.Split on the server.
		{"a.>", "a.", true}, {"a.*", "a.", true}, {"a.*.>", "a.", false}, {"a.*.>", "a..", true},
		{"*", "", true}, {">", "", true}, {"a..b", "a..b", true}, {"a.*.b", "a..b", true},
	} {
		assert.Equal(t, tc.want, matchPattern(tc.pattern, tc.channel), "%s ~ %s", tc.pattern, tc.channel)
	}
}
