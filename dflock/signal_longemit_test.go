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
			ctx := testCtx(t)
			payload := strings.Repeat("x", 1000)
			for round := 0; round < 20; round++ {
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
		})
	}
}

// A long Emit accepted once sets emitConn.accepted for good (per server
// address, across connections). When the server at that address is
// replaced by one without long lines (a rollback to v1.14 or earlier, or an
// upgrade to v2.x), concurrent long Emits are pipelined on the re-dialled
// connection: the first gets the refusal (ErrNotSupported), the ones behind
// it meet the close and report ErrServerUnavailable.
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
	time.Sleep(100 * time.Millisecond) // let the old connection's reader see the close
	for round := 0; round < 5; round++ {
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

// The gate is released when its holder's ctx ends, while the holder's
// long line is still in flight on the connection: the next long Emit is
// pipelined behind it, and when the server (here without long lines)
// refuses the first and closes, that Emit meets the close: a transient
// ErrServerUnavailable instead of ErrNotSupported.
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
