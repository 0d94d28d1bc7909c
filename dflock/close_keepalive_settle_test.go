package dflock

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Close of a Client that holds nothing and has nothing of the caller's in
// flight returns at once, also when the round trip is longer than the
// keepalive (legal: WithKeepAlive is bounded by MinKeepAlive and half the
// read timeout), so that one lane or the other always has a keepalive ping
// pending. pool.SettleLanes, which Close runs to settle interrupted
// acquires, once took those for answers that might carry a grant and made
// Close wait all of DefaultReleaseTimeout (found by review).
func TestCloseIsNotHeldUpByKeepalivePings(t *testing.T) {
	stalled := 0
	for round := range 6 {
		srv := newServer(t, testutil.Config{})
		px, err := testutil.NewProxy(srv.Addr())
		require.NoError(t, err)
		c, err := New([]string{px.Addr()}, WithKeepAlive(20*time.Millisecond))
		require.NoError(t, err)
		ctx := testCtx(t)
		var locks []*Lock
		for i := range 3 {
			l, err := c.Lock(ctx, fmt.Sprintf("k%d", i))
			require.NoError(t, err)
			locks = append(locks, l)
		}
		px.SetLatency(15 * time.Millisecond) // a 30 ms round trip
		time.Sleep(60 * time.Millisecond)    // renewals
		for _, l := range locks {
			// A loaded machine may stretch a round trip past 2×KeepAlive,
			// which breaks the connection and loses its leases: no matter
			// here, where only Close's own wait is measured.
			if err := l.Release(ctx); err != nil {
				require.ErrorIs(t, err, ErrLockLost)
			}
		}
		time.Sleep(100 * time.Millisecond) // nothing of the caller's in flight
		t0 := time.Now()
		require.NoError(t, c.Close())
		d := time.Since(t0)
		_ = px.Close()
		t.Logf("round %d: Close took %v", round, d)
		if d >= time.Second {
			stalled++
		}
	}
	assert.Zero(t, stalled, "rounds whose Close of an idle Client waited ~DefaultReleaseTimeout")
}
