package dflock

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// WithLock and WithSemaphore run fn only under a grant: a WithLock that ran
// fn after its acquire failed (with the caller's ended ctx) passed every
// other dflock test and the soak.
func TestWithFnNeverRunsWhenTheAcquireFails(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	ctx := testCtx(t)
	holder := newClient(t, addrsOf(srv))
	l, err := holder.Lock(ctx, "wf")
	require.NoError(t, err)
	defer func() { require.NoError(t, l.Release(ctx)) }()
	s, err := holder.Semaphore(ctx, "wfs", 1)
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Release(ctx)) }()

	plain := newClient(t, addrsOf(srv))
	traced, _ := tracedClient(t, addrsOf(srv))
	for name, c := range map[string]*Client{"plain": plain, "traced": traced} {
		ran := false
		fn := func(context.Context) error { ran = true; return nil }

		err := c.WithLock(ctx, "wf", fn, AcquireTimeout(50*time.Millisecond))
		assert.ErrorIs(t, err, ErrTimeout, name)
		assert.False(t, ran, "%s: WithLock ran fn although the lock was never granted (AcquireTimeout)", name)

		ran = false
		dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		err = c.WithLock(dctx, "wf", fn)
		cancel()
		assert.ErrorIs(t, err, context.DeadlineExceeded, name)
		assert.False(t, ran, "%s: WithLock ran fn although the lock was never granted (ctx deadline)", name)

		ran = false
		err = c.WithSemaphore(ctx, "wfs", 1, fn, AcquireTimeout(50*time.Millisecond))
		assert.ErrorIs(t, err, ErrTimeout, name)
		assert.False(t, ran, "%s: WithSemaphore ran fn although no slot was granted", name)
	}
}
