package pool

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/wire"
)

// A caller reading its own reply that meets a push line still
// honours its ctx afterwards (readOwn re-arms its interrupt after a push).
func TestReadOwnPushThenCtxEnds(t *testing.T) {
	t.Parallel()
	addr, _ := countingScriptServer(t, func(nc net.Conn, n int, req [3]string) bool {
		if n == 0 {
			_, err := nc.Write([]byte("sig a.b x\n")) // and no answer
			return err == nil
		}
		_, err := nc.Write([]byte("ok tok 30\n"))
		return err == nil
	})
	p := newPool(t, Config{Addr: addr, LaneConns: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, _, err := p.Do(ctx, wire.Request{Cmd: wire.CmdLock, Key: "k", Timeout: 0})
		done <- err
	}()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(5 * time.Second):
		t.Fatal("Do did not return within 5s of its ctx's end after a push")
	}
}
