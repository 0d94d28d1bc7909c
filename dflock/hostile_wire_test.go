package dflock

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A server that answers the handshake's ping twice (a surplus grant line
// trails the ping's ok in the same write). The surplus line answers no
// request: the connection must not be used, and in no case may it be
// taken for the reply to the first request sent on the connection. Here
// the real answer to the try-lock is "timeout" (the key is held elsewhere),
// yet TryLock returns a Lock built from the surplus line.
func TestHostileSurplusHandshakeLineIsNotTakenForAReply(t *testing.T) {
	t.Parallel()
	addr := testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
		var out string
		switch f[0] {
		case "ping":
			out = "ok\nok bogustoken 30\n"
		case "l":
			out = "timeout\n" // held by someone else
		default:
			out = "ok\n"
		}
		_, err := nc.Write([]byte(out))
		return err == nil
	})
	// Whether the first request meets the surplus line depends on whether
	// the new connection's reader goroutine has parked yet (then the
	// caller's claim of the turn finds the buffered bytes): a fresh Client
	// each round makes the outcome all but certain.
	for round := range 10 {
		c := newClient(t, []string{addr})
		ctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
		l, err := c.TryLock(ctx, "a")
		if err == nil {
			t.Logf("round %d: TryLock returned a lock with token %q", round, l.Token())
			_ = l.Release(ctx)
		}
		cancel()
		require.NoError(t, c.Close())
		require.Error(t, err, "a surplus handshake line was taken for the try-lock's reply: the client holds a lock the server never granted")
	}
}
