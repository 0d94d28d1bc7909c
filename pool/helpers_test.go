package pool

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// wait bounds every wait in these tests so that a bug fails instead of hanging.
const wait = 5 * time.Second

func newServer(t testing.TB, cfg testutil.Config) *testutil.Server {
	t.Helper()
	return testutil.NewServer(t, cfg)
}

// newPool creates a pool closed at cleanup (before the server, which was
// registered first).
func newPool(t testing.TB, cfg Config) *Pool {
	t.Helper()
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	p, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}

// brokenRecorder collects OnConnBroken calls.
type brokenRecorder struct {
	ch chan brokenEvent
}

type brokenEvent struct {
	c   Owner // nil for connections that own no lease
	err error
}

func newBrokenRecorder() *brokenRecorder {
	return &brokenRecorder{ch: make(chan brokenEvent, 1024)}
}

func (r *brokenRecorder) hook(c Owner, err error) { r.ch <- brokenEvent{c, err} }

// next waits for the next OnConnBroken call.
func (r *brokenRecorder) next(t testing.TB) brokenEvent {
	t.Helper()
	select {
	case ev := <-r.ch:
		return ev
	case <-time.After(wait):
		t.Fatal("no OnConnBroken call")
		return brokenEvent{}
	}
}

func ctxWait(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

func lockReq(key string) wire.Request {
	return wire.Request{Cmd: wire.CmdLock, Key: key, Lease: 30}
}

// holder returns the owner connection id of key on srv, 0 if not held.
func holder(srv *testutil.Server, key string) uint64 {
	for _, l := range srv.Stats().Locks {
		if l.Key == key {
			return l.OwnerConnID
		}
	}
	return 0
}

func waiters(srv *testutil.Server, key string) int {
	for _, l := range srv.Stats().Locks {
		if l.Key == key {
			return l.Waiters
		}
	}
	return 0
}

// result waits for ch; it must come although nothing else happens.
func result[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("%s did not return", what)
		var zero T
		return zero
	}
}
