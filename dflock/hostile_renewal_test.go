package dflock

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/renew"
	"github.com/dflock-sdk/go/testutil"
)

// renewalAnswerServer grants every `l`, blocking ones after grantAfter (the
// try a Lock makes first on its lane is answered timeout when grantAfter is
// set, so that the grant comes from a wait), with lease grantLease, and
// answers every renewal with renewal. It records the lines it read.
func renewalAnswerServer(t *testing.T, grantLease string, grantAfter time.Duration, renewal string) (addr string, seen func() []string) {
	var mu sync.Mutex
	var lines []string
	addr = testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
		mu.Lock()
		lines = append(lines, strings.Join(f[:], " "))
		mu.Unlock()
		out := "ok"
		switch f[0] {
		case "l":
			switch {
			case grantAfter == 0:
				out = "ok tok " + grantLease
			case strings.HasPrefix(f[2], "0 "):
				out = "timeout"
			default:
				time.Sleep(grantAfter)
				out = "ok tok " + grantLease
			}
		case "n":
			out = renewal
		}
		_, err := nc.Write([]byte(out + "\n"))
		return err == nil
	})
	return addr, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), lines...)
	}
}

// A renewal answered ok for 0 seconds says the lease has no time left (no
// dflockd sends one: the client asks for at least a second). The lock is
// lost, the renewal counted refused; before, the client believed the TTL it
// had asked for and went on holding a lease the server had ended.
func TestRenewalAnsweredForNoSecondsLosesTheLock(t *testing.T) {
	t.Parallel()
	addr, _ := renewalAnswerServer(t, "30", 0, "ok 0")
	c := newClient(t, []string{addr})
	ctx := testCtx(t)

	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	err = l.Renew(ctx)
	require.ErrorIs(t, err, ErrLockLost)
	require.ErrorIs(t, err, renew.ErrRefused)
	assert.Contains(t, err.Error(), "no time left")
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("the lost lock's Done never closed")
	}
	require.ErrorIs(t, l.Err(), ErrLockLost)
	st := c.renewStats()
	assert.Equal(t, int64(1), st.Refused, "%+v", st)
	assert.Zero(t, st.Renewed)
	assert.Equal(t, int64(1), c.Snapshot().Lost)
}

// A grant that came late (a wait longer than a quarter of the lease) is
// confirmed by a renewal. Answered for fewer seconds than the grant's
// lease, the lock is tracked (and renewed) for what the server applied;
// answered for none, the lock was not acquired, and its token is released.
func TestLateGrantsConfirmingRenewalAnsweredShorter(t *testing.T) {
	t.Parallel()
	const wait = 1200 * time.Millisecond // > a quarter of the 4 s lease
	t.Run("shorter", func(t *testing.T) {
		t.Parallel()
		addr, seen := renewalAnswerServer(t, "4", wait, "ok 1")
		c := newClient(t, []string{addr})
		ctx := testCtx(t)

		l, err := c.Lock(ctx, "k", LeaseTTL(4*time.Second))
		require.NoError(t, err)
		assert.Contains(t, seen(), "n k tok 4", "the grant was not confirmed")
		assert.Equal(t, time.Second, l.TTL(), "tracked for the grant's lease, not the one the server applied")
		require.NoError(t, l.Release(ctx))
	})
	t.Run("none", func(t *testing.T) {
		t.Parallel()
		addr, seen := renewalAnswerServer(t, "4", wait, "ok 0")
		c := newClient(t, []string{addr})
		ctx := testCtx(t)

		l, err := c.Lock(ctx, "k", LeaseTTL(4*time.Second))
		require.ErrorIs(t, err, ErrNotAcquired, "a lease with no time left was handed over: %v", l)
		require.ErrorIs(t, err, ErrLeaseExpired)
		assert.Zero(t, c.Snapshot().Held)
		require.Eventually(t, func() bool {
			for _, s := range seen() {
				if s == "r k tok" {
					return true
				}
			}
			return false
		}, 5*time.Second, 10*time.Millisecond, "the grant's token was never released")
	})
}
