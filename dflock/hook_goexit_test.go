package dflock

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A hook that ends its goroutine with runtime.Goexit (t.FailNow, require.*
// in a test's hook) ends the Client's callback goroutine, which no recover
// prevents: another takes over, and every later hook call runs. (Found by
// review: they were queued and never run, and nothing was counted.)
func TestHookThatCallsGoexitDoesNotStopLaterHooks(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	var calls atomic.Int64
	c, err := New([]string{srv.Addr()}, WithHooks(Hooks{
		OnDial: func(DialInfo) {
			if calls.Add(1) == 1 {
				runtime.Goexit() // e.g. require.NoError failing inside a test's hook
			}
		},
	}))
	require.NoError(t, err)
	ctx := testCtx(t)
	for range 3 {
		_, err := c.Stats(ctx) // one query dial, one OnDial, each
		require.NoError(t, err)
	}
	assert.Eventually(t, func() bool { return calls.Load() >= 3 }, testTimeout, time.Millisecond,
		"hook calls after the one that called Goexit never ran (ran %d)", calls.Load())
	require.NoError(t, c.Close())
	s := c.Snapshot()
	t.Logf("OnDial calls: %d, CallbacksDropped: %d", calls.Load(), s.CallbacksDropped)
	assert.EqualValues(t, 3, calls.Load()+s.CallbacksDropped, "hook calls neither run nor counted as dropped")
}
