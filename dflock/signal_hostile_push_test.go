package dflock

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// A push no emit could have caused (PROTOCOL §6.6: the channel has no '*'
// or '>'; the payload is not empty; the line fits 64 KiB) comes from a
// broken or hostile server. It is not handed to the subscription: it breaks
// the listener connection like any other protocol violation, which the
// subscriber sees as a gap. Otherwise the consumer would get signals no
// Emit produced, and a subscription would buffer up to Buffer lines of up
// to 1 MiB (the general reply cap) each. A blank payload is delivered:
// v1.11.0 refused only empty ones.
func TestSignalPushOutsideTheProtocolIsNotDelivered(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, pattern, bad string
	}{
		{"oversized payload", "a.b", "sig a.b " + strings.Repeat("x", 512<<10)},
		{"empty payload", "a.b", "sig a.b "},
		{"wildcard channel", "a.*", "sig a.* x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := newScriptedServer(t, func(cmd, key, arg string) string {
				if cmd == "listen" {
					return "ok\n" + tc.bad + "\nsig a.b good"
				}
				return "error"
			})
			c := newClient(t, []string{srv.addr})
			sub, err := c.Listen(testCtx(t), tc.pattern)
			if err != nil {
				// The line came before Listen returned: a Listen whose
				// connection breaks then fails (docs/signals.md).
				require.ErrorIs(t, err, wire.ErrProtocol)
				return
			}
			sig := recvC(t, sub)
			require.ErrorIs(t, sig.Err, ErrSignalGap,
				"a push no server can send was delivered: channel %q, %d-byte payload %.20q",
				sig.Channel, len(sig.Payload), sig.Payload)
		})
	}
	t.Run("blank payload", func(t *testing.T) {
		t.Parallel()
		srv := newScriptedServer(t, func(cmd, key, arg string) string {
			if cmd == "listen" {
				return "ok\nsig a.b  \nsig a.b good"
			}
			return "error"
		})
		c := newClient(t, []string{srv.addr})
		sub, err := c.Listen(testCtx(t), "a.b")
		require.NoError(t, err)
		assert.Equal(t, Signal{Channel: "a.b", Payload: " "}, recvC(t, sub))
		assert.Equal(t, Signal{Channel: "a.b", Payload: "good"}, recvC(t, sub))
	})
}

// A channel with NUL is one this SDK never emits on (it refuses NUL in its
// own requests), but servers accept it (PROTOCOL §3 refuses only space, TAB,
// CR and LF), so another client can. Its push is delivered to the wildcard
// that matches it; it used to be taken for a protocol violation, breaking
// the listener connection and giving every subscription on it a gap.
func TestSignalPushOnAChannelWithNULFromAnotherClientIsDelivered(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, addrsOf(srv))
	ctx := testCtx(t)
	sub, err := c.Listen(ctx, "a.*")
	require.NoError(t, err)
	bystander, err := c.Listen(ctx, "z")
	require.NoError(t, err)

	nc, err := net.Dial("tcp", srv.Addr())
	require.NoError(t, err)
	defer nc.Close()
	require.NoError(t, nc.SetDeadline(time.Now().Add(testTimeout)))
	_, err = nc.Write([]byte("signal\na.x\x00y\nfrom elsewhere\n"))
	require.NoError(t, err)
	line, err := bufio.NewReader(nc).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ok 1\n", line, "the server takes the channel and delivers to the listener")

	assert.Equal(t, 1, emit(t, c, "a.b", "next"))
	assert.Equal(t, Signal{Channel: "a.x\x00y", Payload: "from elsewhere"}, recvC(t, sub))
	assert.Equal(t, Signal{Channel: "a.b", Payload: "next"}, recvC(t, sub), "no gap: the connection held")
	assertEmpty(t, bystander)
	assert.Zero(t, c.Snapshot().SignalGaps)
}
