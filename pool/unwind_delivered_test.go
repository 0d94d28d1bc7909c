//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// slowFaultCtx panics at the k-th call of its methods and makes every later
// call slow (as the unwinding caller removes its AfterFunc from it): the
// reader, handed the turn back, delivers the reply before the caller
// abandons its call (abandonUnwound's delivered branch).
type slowFaultCtx struct {
	context.Context
	k   int64
	n   atomic.Int64
	hit atomic.Bool
}

func (f *slowFaultCtx) fault() {
	switch n := f.n.Add(1); {
	case n == f.k:
		f.hit.Store(true)
		panic(errCtxBug)
	case n > f.k:
		time.Sleep(50 * time.Millisecond)
	}
}
func (f *slowFaultCtx) Done() <-chan struct{} { f.fault(); return f.Context.Done() }
func (f *slowFaultCtx) Err() error            { f.fault(); return f.Context.Err() }
func (f *slowFaultCtx) Value(k any) any       { f.fault(); return f.Context.Value(k) }
func (f *slowFaultCtx) Deadline() (time.Time, bool) {
	f.fault()
	return f.Context.Deadline()
}

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
		ctx := &slowFaultCtx{Context: base, k: k}
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
