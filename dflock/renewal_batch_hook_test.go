package dflock

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// OnRenewalBatch "is called for every batch of renewals once all its
// answers are in (or its connection broke)": summed over the hook calls,
// Size, Renewed and Refused are the renewals Snapshot counts as sent,
// renewed and refused (once nothing is in flight), including a Renew call's.
func TestRenewalBatchHookAccountsForEveryRenewal(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	var mu sync.Mutex
	var size, renewed, refused, calls int
	c, err := New([]string{px.Addr()}, WithKeepAlive(50*time.Millisecond), WithHooks(Hooks{
		OnRenewalBatch: func(b RenewalBatchInfo) {
			mu.Lock()
			size += b.Size
			renewed += b.Renewed
			refused += b.Refused
			calls++
			mu.Unlock()
		},
	}))
	require.NoError(t, err)
	ctx := testCtx(t)
	var locks []*Lock
	for i := range 5 {
		l, err := c.Lock(ctx, fmt.Sprintf("k%d", i))
		require.NoError(t, err)
		locks = append(locks, l)
	}
	time.Sleep(100 * time.Millisecond)
	for _, l := range locks {
		require.NoError(t, l.Renew(ctx))
	}
	px.SetLatency(15 * time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	px.ResetAll() // renewals in flight go unanswered
	for i := range 5 {
		if l, err := c.Lock(ctx, fmt.Sprintf("j%d", i)); err == nil {
			locks = append(locks, l)
		}
	}
	time.Sleep(100 * time.Millisecond)
	for _, l := range locks {
		_ = l.Release(ctx)
	}
	require.NoError(t, c.Close())
	s := c.Snapshot().Servers[0]
	mu.Lock()
	defer mu.Unlock()
	t.Logf("hook: calls=%d size=%d renewed=%d refused=%d; snapshot: sent=%d renewed=%d refused=%d unanswered=%d",
		calls, size, renewed, refused, s.RenewalsSent, s.Renewed, s.RenewalsRefused, s.RenewalsUnanswered)
	require.Positive(t, calls)
	assert.EqualValues(t, s.RenewalsSent, size)
	assert.EqualValues(t, s.Renewed, renewed)
	assert.EqualValues(t, s.RenewalsRefused, refused)
}
