package testutil

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var clockStart = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func TestManualClockFiresDueTimersInOrderOnAdvance(t *testing.T) {
	t.Parallel()
	clk := NewManualClock(clockStart)
	var mu sync.Mutex
	var fired []string
	at := func(name string) func() {
		return func() {
			mu.Lock()
			fired = append(fired, name)
			mu.Unlock()
		}
	}
	got := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), fired...)
	}
	clk.AfterFunc(3*time.Second, at("3s"))
	clk.AfterFunc(time.Second, at("1s"))
	stopped := clk.AfterFunc(2*time.Second, at("2s"))
	clk.AfterFunc(1<<63-1, at("forever"))
	require.Equal(t, 4, clk.Pending())

	clk.Advance(time.Second - 1)
	assert.Empty(t, got(), "nothing is due before its time")
	assert.Equal(t, clockStart.Add(time.Second-1), clk.Now())
	assert.True(t, stopped.Stop())
	assert.False(t, stopped.Stop(), "a stopped timer stops once")
	clk.Advance(10 * time.Second)
	assert.Equal(t, []string{"1s", "3s"}, got(), "due timers fire in due order, a stopped one never")
	assert.Equal(t, 1, clk.Pending(), "only the timer of the longest duration is left")
	clk.Advance(-time.Hour)
	assert.Equal(t, clockStart.Add(11*time.Second-1), clk.Now(), "time never goes back")

	// A timer that is due already fires without an Advance.
	now := make(chan struct{})
	assert.False(t, clk.AfterFunc(0, func() { close(now) }).Stop(), "it is never pending")
	<-now

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- clk.AwaitPending(ctx, 2) }()
	clk.AfterFunc(time.Second, func() {})
	require.NoError(t, <-done)
	cancel()
	assert.ErrorIs(t, clk.AwaitPending(ctx, 100), context.Canceled)
}

// With a ManualClock a lease ends only when the test advances the clock:
// the sweeper runs on that clock, and the audit log and stats read it.
func TestManualClockDrivesLeaseExpiryAndAudit(t *testing.T) {
	t.Parallel()
	clk := NewManualClock(clockStart)
	log := &auditLog{}
	srv := newServer(t, Config{Clock: clk, Audit: log.record})
	c := dialSrv(t, srv)
	tok := c.lock("k", "0 2", 2)

	l, ok := findLock(srv.Stats(), "k")
	require.True(t, ok)
	assert.Equal(t, 2*time.Second, l.LeaseExpiresIn, "the server's time stands still")
	clk.Advance(2*time.Second - 1)
	assert.Equal(t, "ok 2", c.req("n", "k", tok+" 2"), "renewed a nanosecond before its end")
	clk.Advance(2 * time.Second)
	// The sweeper (every 1 s on this clock) removes it; nothing else touches it.
	require.Eventually(t, func() bool { _, held := findLock(srv.Stats(), "k"); return !held },
		ioWait, time.Millisecond, "the sweeper never removed the lapsed lease")

	evs := log.waitKind(t, AuditExpire, tok)
	require.Len(t, evs, 3)
	assert.Equal(t, []AuditKind{AuditGrant, AuditRenew, AuditExpire}, []AuditKind{evs[0].Kind, evs[1].Kind, evs[2].Kind})
	assert.Equal(t, clockStart, evs[0].Time)
	assert.Equal(t, clockStart.Add(2*time.Second), evs[0].Expires)
	assert.Equal(t, clockStart.Add(2*time.Second-1), evs[1].Time)
	assert.Equal(t, clockStart.Add(4*time.Second-1), evs[1].Expires)
	assert.Equal(t, clk.Now(), evs[2].Time, "expired when the sweeper ran, at the clock's time")
	assert.Equal(t, evs[1].Expires, evs[2].Expires)

	// Idle time and GC are on the same clock.
	st := srv.Stats()
	require.Len(t, st.IdleLocks, 1)
	assert.Equal(t, IdleKeyInfo{Key: "k", Idle: 0}, st.IdleLocks[0], "idle since the sweep, at the clock's now")
	clk.Advance(DefaultGCMaxIdle - 1)
	assert.Equal(t, []IdleKeyInfo{{Key: "k", Idle: DefaultGCMaxIdle - 1}}, srv.Stats().IdleLocks)
	clk.Advance(1)
	// The GC timer fired at the first Advance past its interval and was
	// re-armed from there; one more interval runs it with the key old enough.
	clk.Advance(DefaultGCInterval)
	require.Eventually(t, func() bool { return len(srv.Stats().IdleLocks) == 0 },
		ioWait, time.Millisecond, "the GC never pruned the idle key")
}

// A blocking wait times out when the server's clock passes its timeout,
// counted from when the server queued it.
func TestManualClockDrivesWaitTimeouts(t *testing.T) {
	t.Parallel()
	clk := NewManualClock(clockStart)
	srv := newServer(t, Config{Clock: clk})
	holder, a, b := dialSrv(t, srv), dialSrv(t, srv), dialSrv(t, srv)
	tok := holder.lock("k", "0", 33)

	a.send("l", "k", "5")
	waitLockWaiters(t, srv, "k", 1)
	clk.Advance(5*time.Second - 1)
	// Had a's timeout fired, a would answer `timeout` instead of the grant.
	require.Equal(t, "ok", holder.req("r", "k", tok))
	tok = a.expectGrant("ok", 33)

	b.send("l", "k", "5")
	waitLockWaiters(t, srv, "k", 1)
	clk.Advance(5 * time.Second)
	b.expect("timeout")
	require.Equal(t, "ok", a.req("r", "k", tok))
}

// The read timeout and the pause after a failed auth run on the clock.
func TestManualClockDrivesReadTimeoutAndAuthDelay(t *testing.T) {
	t.Parallel()
	clk := NewManualClock(clockStart)
	srv := newServer(t, Config{Clock: clk, ReadTimeout: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), ioWait)
	defer cancel()
	base := clk.Pending() // the sweeper's and the GC's
	janitor := base

	c := dialSrv(t, srv)
	require.NoError(t, clk.AwaitPending(ctx, base+1), "the connection armed no read timeout")
	clk.Advance(2*time.Second - 1)
	c.ping() // re-arms the timeout
	clk.Advance(2*time.Second - 1)
	c.ping()
	clk.Advance(2 * time.Second)
	c.expect("error")
	c.expectEOF(ioWait)

	// Auth: the failed connection is closed only after the delay passes on
	// the clock (its timer joins the read timeout's of the open connection).
	asrv := newServer(t, Config{Clock: clk, AuthToken: "s3cret"})
	waitConns(t, srv, 0)
	// The Advances above fired srv's sweeper and GC, which its janitor
	// re-arms when it gets to run: count once both servers' are armed, or
	// a late re-arm passes for the auth delay.
	require.Eventually(t, func() bool { return clk.Pending() == 2*janitor }, ioWait, time.Millisecond)
	base = clk.Pending()
	d := dialSrv(t, asrv)
	d.send("auth", "_", "wrong")
	d.expect("error_auth")
	require.NoError(t, clk.AwaitPending(ctx, base+2), "no auth delay armed on the clock")
	assert.Equal(t, 1, asrv.Stats().Connections, "closed before the delay passed")
	clk.Advance(authFailDelay)
	d.expectEOF(ioWait)
}
