package dflock

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Concurrent long Emits against a server without long signal lines (v1.10,
// v2.x, and v1.11–v1.14) share one pipelined connection, which the server
// closes after the first over-long line. Every one of them must still fail
// with ErrNotSupported (the documented answer), not with a broken-connection
// error that a caller would take as transient and retry.
func TestConcurrentLongEmitsToAServerWithoutLongLinesAreNotSupported(t *testing.T) {
	t.Parallel()
	for _, v := range []testutil.Version{testutil.V1_10, testutil.V2_1} {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, testutil.Config{Version: v})
			c := newClient(t, addrsOf(srv))
			requireConcurrentLongEmitsNotSupported(t, c, 20)
		})
	}
}

// A long Emit accepted on one connection says nothing of the next: when
// the server at the address is replaced by one without long lines (a
// rollback to v1.14 or earlier, or an upgrade to v2.x), concurrent long
// Emits on the re-dialled connection go one at a time again, and all fail
// with ErrNotSupported (pipelined, those behind the first met its close).
func TestLongEmitsAfterTheServerIsReplacedByAnOlderOneAreNotSupported(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	addr := srv.Addr()
	c := newClient(t, []string{addr})
	ctx := testCtx(t)
	payload := strings.Repeat("x", 1000)
	_, err := c.Emit(ctx, "a.b", payload)
	require.NoError(t, err) // accepted: long Emits are pipelined from now on
	require.NoError(t, srv.Stop())
	newServer(t, testutil.Config{Addr: addr, Version: testutil.V2_1})
	require.Eventually(t, func() bool { // the old long-Emit connection is seen closed
		c.signals.mu.Lock()
		defer c.signals.mu.Unlock()
		e := c.signals.emitters[c.servers[0]]
		return e == nil || e.conn == nil || e.conn.err() != nil
	}, 5*time.Second, time.Millisecond)
	requireConcurrentLongEmitsNotSupported(t, c, 5)
}

// A long Emit whose caller gives up while its line is in flight keeps the
// turn until the answer: the next long Emit is not pipelined behind it, so
// a server without long lines, which refuses the first and closes, answers
// it ErrNotSupported (not the close's ErrServerUnavailable).
func TestLongEmitBehindAnAbandonedOneIsNotSupported(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{Version: testutil.V2_1})
	p, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	c := newClient(t, []string{p.Addr()})
	ctx := testCtx(t)
	payload := strings.Repeat("x", 1000)
	_, err = c.Emit(ctx, "a.b", payload) // dials the long-Emit connection
	require.ErrorIs(t, err, ErrNotSupported)
	// The next dial takes a 200ms handshake; the line is written at about
	// 200ms and answered at about 400ms; the caller gives up at 300ms.
	p.SetLatency(100 * time.Millisecond)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = c.Emit(short, "a.b", payload) // gives up while its line is in flight
	require.Error(t, err)
	_, err = c.Emit(ctx, "a.b", payload)
	require.ErrorIs(t, err, ErrNotSupported, "%v", err)
}

// requireConcurrentLongEmitsNotSupported sends rounds of 8 concurrent long
// Emits with c and requires every one to fail with ErrNotSupported.
func requireConcurrentLongEmitsNotSupported(t *testing.T, c *Client, rounds int) {
	t.Helper()
	ctx := testCtx(t)
	payload := strings.Repeat("x", 1000)
	for round := range rounds {
		const n = 8
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { _, errs[i] = c.Emit(ctx, "a.b", payload) })
		}
		wg.Wait()
		for i, err := range errs {
			require.ErrorIs(t, err, ErrNotSupported, "round %d emit %d: %v", round, i, err)
		}
	}
}
