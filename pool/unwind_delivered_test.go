//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A Request whose reply the reader delivers while its caller is
// unwinding (before await's defer abandons the call) still gives late the
// outcome: abandonUnwound's delivered branch.
func TestRequestUnwindingAfterDeliveryStillTellsLate(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	base, cancel := context.WithCancel(context.Background())
	defer cancel()
	h, err := p.Acquire(ctxWait(t))
	require.NoError(t, err)
	defer h.Destroy()
	for k := int64(1); k <= 20; k++ {
		settle(t, h.c)
		ctx := &kthCallCtx{Context: base, k: k, slowAfter: 50 * time.Millisecond}
		late := make(chan error, 1)
		done := make(chan any, 1)
		go func() {
			defer func() { done <- recover() }()
			_, answered, _ := h.Request(ctx, wire.ReleaseRequest("k", "tok", false), func(_ int, _ wire.Reply, err error) { late <- err })
			if answered {
				late <- nil
			}
		}()
		<-done
		select {
		case <-late:
		case <-time.After(3 * time.Second):
			t.Fatalf("k=%d: the outcome reached neither the caller nor late", k)
		}
		t.Logf("k=%d hit=%v calls=%d", k, ctx.hit.Load(), ctx.n.Load())
		if !ctx.hit.Load() {
			break
		}
	}
}
