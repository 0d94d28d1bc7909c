//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"context"
	"errors"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A caller's ctx is the caller's code; these contexts panic in one method
// (as a typed nil, or a buggy Value, does) and the caller recovers.
var errCtxBug = errors.New("context bug")

type valuePanicCtx struct{ context.Context }

func (valuePanicCtx) Value(any) any { panic(errCtxBug) }

type errPanicCtx struct{ context.Context }

func (errPanicCtx) Err() error { panic(errCtxBug) }

// kthCallCtx panics at the k-th call of its methods; with slowAfter set,
// every later call (an unwinding caller removing its AfterFunc, say) takes
// that long, so that the reader, handed the turn back, delivers the reply
// before the caller abandons its call.
type kthCallCtx struct {
	context.Context
	k         int64
	slowAfter time.Duration
	n         atomic.Int64
	hit       atomic.Bool
	where     string // the stack at the k-th call
}

func (f *kthCallCtx) fault() {
	switch n := f.n.Add(1); {
	case n == f.k:
		f.where = string(debug.Stack())
		f.hit.Store(true)
		panic(errCtxBug)
	case n > f.k && f.slowAfter > 0:
		time.Sleep(f.slowAfter)
	}
}

func (f *kthCallCtx) Done() <-chan struct{}       { f.fault(); return f.Context.Done() }
func (f *kthCallCtx) Err() error                  { f.fault(); return f.Context.Err() }
func (f *kthCallCtx) Value(k any) any             { f.fault(); return f.Context.Value(k) }
func (f *kthCallCtx) Deadline() (time.Time, bool) { f.fault(); return f.Context.Deadline() }

func recovered(f func()) (p any) {
	defer func() { p = recover() }()
	f()
	return nil
}

// A caller reading its own reply (an idle lane) whose ctx panics as the
// read is armed (context.AfterFunc asks a custom context's Value) hands the
// turn back as it unwinds: the lane still answers, the lease it owns is
// kept, and the grant the caller never saw is released by the reader.
func TestCallerUnwindingWhileReadingItsReplyHandsTheTurnBack(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	r, owner, err := p.Do(ctxWait(t), lockReq("a"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)

	settle(t, owner.(*laneConn).c) // idle, the turn nobody's: the next caller reads its own reply
	bad := valuePanicCtx{ctxWait(t)}
	require.Equal(t, errCtxBug, recovered(func() { _, _, _ = p.Do(bad, lockReq("k")) }))
	require.Eventually(t, func() bool { return srv.Stats().Requests["l"] == 2 }, wait, time.Millisecond,
		"the unwound caller's request was sent")

	r, _, err = p.Do(ctxWait(t), lockReq("b"))
	require.NoError(t, err, "the lane answers after the caller unwound")
	require.Equal(t, wire.StatusOK, r.Status)
	require.Eventually(t, func() bool { return holder(srv, "k") == 0 }, wait, time.Millisecond,
		"the grant nobody took is released")
	require.NotZero(t, holder(srv, "a"), "the lane's lease is kept")
}

// A release whose caller unwinds in ctx.Err, before anything is sent, is
// sent all the same, and late receives its outcome.
func TestRequestUnwindingInCtxErrStillSendsTheRelease(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	r, owner, err := p.Do(ctxWait(t), lockReq("k"))
	require.NoError(t, err)
	require.Equal(t, wire.StatusOK, r.Status)

	type outcome struct {
		r   wire.Reply
		err error
	}
	late := make(chan outcome, 1)
	rel := wire.ReleaseRequest("k", r.Token, false)
	bad := errPanicCtx{ctxWait(t)}
	require.Equal(t, errCtxBug, recovered(func() {
		_, _, _ = owner.Request(bad, rel, func(_ int, r wire.Reply, err error) { late <- outcome{r, err} })
	}))
	select {
	case o := <-late:
		require.NoError(t, o.err)
		require.Equal(t, wire.StatusOK, o.r.Status)
	case <-time.After(wait):
		t.Fatal("late never received the release's outcome")
	}
	require.Zero(t, holder(srv, "k"))
}
