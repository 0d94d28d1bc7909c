package dflock

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
