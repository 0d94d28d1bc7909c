package wire

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A server that echoes the auth token back cannot get it out of the Conn in
// a reply line — also when the token is longer than what an error keeps of
// a line, or holds characters strconv.Quote escapes (the error's quoting
// hid it from a search for the raw token) — while a well-formed push keeps
// its payload as sent.
func TestConnScrubsTheSecretFromReplies(t *testing.T) {
	t.Parallel()
	for name, secret := range map[string]string{
		"hex64": strings.Repeat("0123456789abcdef", 4),
		"quote": `s3cret"Token\42`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, srv := pipeConn(t, ConnOptions{Secret: secret})
			feed(t, srv, false,
				"error_"+secret+"\n",
				"sig ch "+secret+"\n",
				"huh "+secret+" "+secret+"\n",
				"sig "+secret+"\n", // a push that does not parse
			)
			line, err := c.ReadLine()
			require.NoError(t, err)
			assert.Equal(t, "error_"+Redacted, string(line))

			line, err = c.ReadLine()
			require.NoError(t, err)
			assert.Equal(t, "sig ch "+secret, string(line), "a push's payload is data, delivered as sent")

			line, err = c.ReadLine()
			require.NoError(t, err)
			assert.Equal(t, "huh "+Redacted+" "+Redacted, string(line))
			_, err = ParseReply(line, CmdLock)
			require.ErrorIs(t, err, ErrProtocol)
			assert.NotContains(t, err.Error(), secret[:12])

			line, err = c.ReadLine()
			require.NoError(t, err)
			assert.Equal(t, "sig "+Redacted, string(line))
		})
	}
}

// An over-long line's error keeps its first bytes: never the secret's.
func TestConnScrubsTheSecretFromAnOverlongLine(t *testing.T) {
	t.Parallel()
	secret := strings.Repeat("s3cret", 10)
	c, srv := pipeConn(t, ConnOptions{MaxLine: 100, Secret: secret})
	feed(t, srv, false, "huh "+secret+strings.Repeat("x", 200)+"\n")
	_, err := c.ReadLine()
	requireBroken(t, c, err, ErrLineTooLong)
	assert.NotContains(t, err.Error(), "s3crets3cret")
	var pe *ProtocolError
	require.ErrorAs(t, err, &pe)
	assert.NotContains(t, pe.Line, "s3crets3cret")
}
