package dflock

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// afterFuncCtx is a caller's context that implements AfterFunc (the
// context package's afterFuncer: context.WithCancel on it registers
// through AfterFunc, and cancelling the child calls the returned stop).
type afterFuncCtx struct {
	context.Context // Background: Deadline, Value
	done            chan struct{}
	mu              sync.Mutex
	stacks          []string
}

func (c *afterFuncCtx) Done() <-chan struct{} { return c.done }
func (c *afterFuncCtx) Err() error {
	select {
	case <-c.done:
		return context.Canceled
	default:
		return nil
	}
}

func (c *afterFuncCtx) AfterFunc(f func()) func() bool {
	stop := context.AfterFunc(c.Context, f) // never runs: c never ends
	return func() bool {
		buf := make([]byte, 1<<16)
		buf = buf[:runtime.Stack(buf, false)]
		c.mu.Lock()
		c.stacks = append(c.stacks, string(buf))
		c.mu.Unlock()
		return stop()
	}
}

// OnEnd's function must be quick and must not block: it runs on a
// connection reader or the scheduler. runHeld's cancels fn's ctx; were that
// a direct child of the caller's ctx, cancelling it would call the stop
// function of a caller's ctx that implements AfterFunc — caller code, run
// inside the lease's finish on the SDK's goroutine. It must run on the
// WithLock caller's goroutine (runHeld's deferred cancels).
func TestWithLockLossRunsNoCallerCodeOnTheReader(t *testing.T) {
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	uctx := &afterFuncCtx{Context: context.Background(), done: make(chan struct{})}
	err := c.WithLock(uctx, "rv-userctx", func(ctx context.Context) error {
		srv.DropConnections()
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
		return nil
	})
	require.ErrorIs(t, err, ErrLockLost)
	uctx.mu.Lock()
	defer uctx.mu.Unlock()
	for _, st := range uctx.stacks {
		require.NotContains(t, st, "renew.(*Lease).finish",
			"the caller's context code ran inside the lease's finish, on an SDK goroutine:\n%s", firstLines(st, 30))
	}
}

func firstLines(s string, n int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > n {
		ls = ls[:n]
	}
	return strings.Join(ls, "\n")
}
