package dflock

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
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

// A grant token that ParseReply accepts (≤ wire.MaxLine bytes, no
// whitespace) but whose renewal line `<token> <lease>` is over the
// server's 256-byte arg cap. The renewal is sent unvalidated; dflockd
// answers an over-long line with `error` and closes the connection — the
// control lane connection, which owns every uncontended lock of the
// Client on that server. So one odd grant loses an unrelated lock ("b").
func TestHostileGrantTokenTooLongToRenewIsGivenBack(t *testing.T) {
	t.Parallel()
	longTok := strings.Repeat("t", wire.MaxLine-1) // 255 bytes: "t…t 2" is 257 bytes
	var overLong, givenBack atomic.Int64
	addr := testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
		var out string
		switch f[0] {
		case "ping":
			out = "ok"
		case "l":
			if f[1] == "a" {
				out = "ok " + longTok + " 2"
			} else {
				out = "ok " + strings.Repeat("b", 32) + " 2"
			}
		case "r":
			if f[2] == longTok {
				givenBack.Add(1)
			}
			out = "ok"
		case "n":
			if len(f[2]) > wire.MaxLine {
				// dflockd: line too long → `error`, then close.
				overLong.Add(1)
				_, _ = nc.Write([]byte("error\n"))
				return false
			}
			out = "ok 2"
		default:
			out = "ok"
		}
		_, err := nc.Write([]byte(out + "\n"))
		return err == nil
	})
	c := newClient(t, []string{addr})
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancel()
	b, err := c.TryLock(ctx, "b", LeaseTTL(2*time.Second))
	require.NoError(t, err)
	a, err := c.TryLock(ctx, "a", LeaseTTL(2*time.Second))
	if err != nil {
		require.ErrorIs(t, err, wire.ErrProtocol)
		require.Eventually(t, func() bool { return givenBack.Load() == 1 }, 5*time.Second, time.Millisecond,
			"the grant nobody can hold is released")
		require.NoError(t, b.Err(), "the lane (and lock b on it) is untouched")
		return
	}
	t.Logf("TryLock a accepted a %d-byte token", len(a.Token()))
	select {
	case <-b.Done():
		t.Fatalf("lock b lost because lock a's renewal line was over the cap (%d over-long renewals seen by the server): %v",
			overLong.Load(), b.Err())
	case <-time.After(3 * time.Second):
	}
	t.Logf("over-long renewals: %d; a: %v; b: %v", overLong.Load(), a.Err(), b.Err())
}

// An unknown error word from the server (any `error_*`) reaches Error.Reply
// and the error's text raw: unquoted and uncut, up to the 1 MiB line cap,
// control bytes included. Every other piece of server text in an error
// (wire.ProtocolError) is quoted and cut to ~64 bytes.
func TestHostileUnknownErrorWordIsBoundedAndQuoted(t *testing.T) {
	t.Parallel()
	word := "error_" + strings.Repeat("x", 512<<10) + "\x1b[2J\rFORGED"
	addr := testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
		out := "ok"
		if f[0] == "l" {
			out = word
		}
		_, err := nc.Write([]byte(out + "\n"))
		return err == nil
	})
	c := newClient(t, []string{addr})
	ctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
	defer cancel()
	_, err := c.TryLock(ctx, "a")
	require.Error(t, err)
	msg := err.Error()
	t.Logf("error text: %d bytes; holds ESC: %v", len(msg), strings.ContainsRune(msg, 0x1b))
	require.Less(t, len(msg), 1024, "a server's error word is put whole into the error text")
	require.NotContains(t, msg, "\x1b", "raw control bytes from the server in the error text")
}

// A refused renewal's unknown error_* word is quoted and cut in the
// lease's loss error (Lock.Err, OnLeaseLost, the log record), as in every
// other error: no control bytes, not up to the reply line cap.
func TestHostileRefusedRenewalWordIsCutAndQuoted(t *testing.T) {
	t.Parallel()
	word := "error_x\x1b[2J\x1b[31mFORGED" + strings.Repeat("A", 4000) // one status word
	srv := newScriptedServer(t, func(cmd, key, arg string) string {
		switch cmd {
		case "l":
			return "ok tok1 2"
		case "n":
			return word
		}
		return "ok"
	})
	c := newClient(t, []string{srv.addr})
	ctx := testCtx(t)
	l, err := c.TryLock(ctx, "k")
	require.NoError(t, err)
	select {
	case <-l.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the refused renewal did not lose the lease")
	}
	msg := l.Err().Error()
	t.Logf("len(Err().Error()) = %d", len(msg))
	require.NotContains(t, msg, "\x1b", "raw control byte in the loss error")
	require.Less(t, len(msg), 400, "the whole word is in the loss error")
}
