package dflock

import (
	"bufio"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Released and Releases are counters and LeasesHeld falls as Close
// releases: a scraper reading Snapshot during Close never sees a counter go
// down (a metrics backend takes that for a reset) nor a lease come back.
// Close counts a release when its answer comes; a refusal (the lease was
// already gone) counts a loss instead. (Found by review: every release was
// counted up front and a refusal took it back, 1 → 0.)
func TestCloseCountersNeverGoBack(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	c, err := New([]string{px.Addr()})
	require.NoError(t, err)
	ctx := testCtx(t)

	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	// The server forgets the lease behind the Client's back (any holder of
	// the token may release it); the next renewal is seconds away.
	nc, err := net.Dial("tcp", srv.Addr())
	require.NoError(t, err)
	_, err = nc.Write([]byte("r\nk\n" + l.Token() + "\n"))
	require.NoError(t, err)
	line, err := bufio.NewReader(nc).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ok\n", line)
	_ = nc.Close()

	px.SetLatency(100 * time.Millisecond) // widens Close's round trip

	var maxReleased, lastReleased, maxReleases, lastReleases int64
	minHeld, heldBack := 1, 0
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			s := c.Snapshot()
			maxReleased = max(maxReleased, s.Released)
			lastReleased = s.Released
			maxReleases = max(maxReleases, s.Servers[0].Releases)
			lastReleases = s.Servers[0].Releases
			if s.Servers[0].LeasesHeld > minHeld {
				heldBack++
			}
			minHeld = min(minHeld, s.Servers[0].LeasesHeld)
			select {
			case <-done:
				return
			default:
				time.Sleep(50 * time.Microsecond)
			}
		}
	})
	require.NoError(t, c.Close())
	close(done)
	wg.Wait()
	s := c.Snapshot()
	t.Logf("after Close: Released=%d Lost=%d (max Released seen during Close: %d)", s.Released, s.Lost, maxReleased)
	require.EqualValues(t, 1, s.Lost, "Close found the lease lost")
	assert.LessOrEqual(t, maxReleased, lastReleased, "Snapshot.Released went down (%d → %d)", maxReleased, lastReleased)
	assert.LessOrEqual(t, maxReleases, lastReleases, "ServerSnapshot.Releases went down (%d → %d)", maxReleases, lastReleases)
	assert.Zero(t, heldBack, "LeasesHeld rose again during Close")
	assert.Zero(t, s.Servers[0].LeasesHeld)
}
