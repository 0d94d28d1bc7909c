package dflock

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A Release made while Close is in progress returns once Close
// knows the outcome; a second Release right after it, with an ended ctx,
// must return that same outcome (not the ctx's error).
func TestReleaseDuringCloseThenReleaseWithEndedCtx(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	c, err := New([]string{px.Addr()})
	require.NoError(t, err)
	ctx := testCtx(t)
	var locks []*Lock
	for i := range 256 {
		l, err := c.TryLock(ctx, fmt.Sprintf("k%d", i))
		require.NoError(t, err)
		locks = append(locks, l)
	}
	px.SetLatency(200 * time.Millisecond)
	closed := closeInBackground(t, c)
	ended, cancel := context.WithCancel(ctx)
	cancel()
	var mu sync.Mutex
	var diff []string
	var wg sync.WaitGroup
	for _, l := range locks {
		wg.Go(func() {
			err1 := l.Release(context.Background())
			err2 := l.Release(ended)
			if fmt.Sprint(err1) != fmt.Sprint(err2) {
				mu.Lock()
				diff = append(diff, fmt.Sprintf("first %v, then %v", err1, err2))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	<-closed
	assert.Empty(t, diff, "%d of %d second Releases differed", len(diff), len(locks))
}

// A Release whose ctx panics while Close is in progress (the
// closing branch of sendRelease) still has its outcome recorded: a later
// Release returns it rather than waiting for its own ctx.
func TestReleaseUnwindingDuringCloseIsRecorded(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	c, err := New([]string{px.Addr()})
	require.NoError(t, err)
	l, err := c.TryLock(testCtx(t), "k")
	require.NoError(t, err)
	px.SetLatency(300 * time.Millisecond)
	closed := closeInBackground(t, c)
	hit, _ := attempt(t, context.Background(), 1, false, func(ctx context.Context) { _ = l.Release(ctx) })
	require.True(t, hit, "the faulty ctx was not called")
	<-closed
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	assert.NoError(t, l.Release(ctx), "a Release after the unwound one, once Close has returned")
}

// closeInBackground starts c.Close and returns once it has begun (calls
// made from now on find the Client closing); closed closes when it returns.
func closeInBackground(t *testing.T, c *Client) (closed <-chan struct{}) {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = c.Close(); close(done) }()
	require.Eventually(t, func() bool {
		if c.enter() {
			c.leave()
			return false
		}
		return true
	}, 5*time.Second, time.Millisecond)
	return done
}
