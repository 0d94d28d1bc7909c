package wire

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A server that echoes the auth token back cannot get it into an error or
// a free-text field (an unknown error_* word) of what Conn parses — also
// when the token is longer than what an error keeps of a line, or holds
// characters strconv.Quote escapes (the error's quoting hid it from a
// search for the raw token) — while a push that parses keeps its payload.
func TestConnKeepsTheSecretOutOfErrorsAndWords(t *testing.T) {
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
			r, err := c.ParseReply(line, CmdLock)
			require.NoError(t, err)
			assert.Equal(t, StatusErrOther, r.Status)
			assert.Equal(t, "error_"+Redacted, r.Word)

			line, err = c.ReadLine()
			require.NoError(t, err)
			p, err := c.ParsePush(line)
			require.NoError(t, err)
			assert.Equal(t, secret, p.Payload, "a push's payload is data, delivered as sent")

			line, err = c.ReadLine()
			require.NoError(t, err)
			_, err = c.ParseReply(line, CmdLock)
			require.ErrorIs(t, err, ErrProtocol)
			assert.NotContains(t, err.Error(), secret[:12])
			assert.Contains(t, err.Error(), Redacted)

			line, err = c.ReadLine()
			require.NoError(t, err)
			_, err = c.ParsePush(line)
			require.ErrorIs(t, err, ErrProtocol)
			assert.NotContains(t, err.Error(), secret[:12])
		})
	}
}

// Replies a real dflockd sends, in which a short auth token occurs by
// chance (in a random hex grant token, a lease, a renewal's seconds), are
// data: the first version of the secret's scrubbing rewrote them before
// parsing, so that the client tracked a token the server never issued (and
// could not release it), or broke the connection on `ok 33` (found by
// review).
func TestConnLeavesRepliesThatHoldTheSecretByChanceAlone(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		secret, line string
		cmd          Command
		token        string
		lease        int64
	}{
		{"1234", "ok 9f0c11234e7a2b55d0c4a9e8b3f61d27 33", CmdLock, "9f0c11234e7a2b55d0c4a9e8b3f61d27", 33},
		{"cafe", "acquired 00cafe5e7a2b55d0c4a9e8b3f61d2701 30", CmdEnqueue, "00cafe5e7a2b55d0c4a9e8b3f61d2701", 30},
		{"33", "ok 33", CmdRenew, "", 33},
	} {
		c, srv := pipeConn(t, ConnOptions{Secret: tc.secret})
		feed(t, srv, false, tc.line+"\n")
		line, err := c.ReadLine()
		require.NoError(t, err)
		assert.Equal(t, tc.line, string(line), "secret %q", tc.secret)
		r, err := c.ParseReply(line, tc.cmd)
		require.NoError(t, err, "secret %q", tc.secret)
		assert.Equal(t, tc.token, r.Token)
		assert.Equal(t, tc.lease, r.Lease)
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

// A secret with spaces in it (a passphrase) echoed in a grant: the line
// parses differently once the secret is replaced, so the error must be
// rebuilt from the scrubbed line, not taken from parsing it again (which
// succeeded, and the error built from the raw line was kept; found by
// review).
func TestConnKeepsAPassphraseOutOfAGrantsError(t *testing.T) {
	t.Parallel()
	const secret = "correct horse battery staple correct horse battery staple again"
	c, srv := pipeConn(t, ConnOptions{Secret: secret})
	feed(t, srv, false, "ok "+secret+" 30\n")
	line, err := c.ReadLine()
	require.NoError(t, err)
	_, err = c.ParseReply(line, CmdLock)
	require.ErrorIs(t, err, ErrProtocol)
	assert.NotContains(t, err.Error(), "horse battery")
	assert.Contains(t, err.Error(), Redacted)
}

// WithoutSecret also redacts the start of a secret that the truncation of
// an error's Line cut off (review "low": the first 10 bytes of one that
// began at byte 62 were left in the error), and leaves a short line alone.
func TestWithoutSecretRedactsASecretTheLineCutShort(t *testing.T) {
	secret := "S3CRET-0123456789abcdefghijklmnopqrstuvwxyz"
	for _, at := range []int{0, 30, 62, 65} { // 65: only its first byte is kept
		line := "bogus " + strings.Repeat("x", at) + secret
		_, err := ParseReply([]byte(line), CmdPing)
		var pe *ProtocolError
		require.ErrorAs(t, err, &pe)
		clean := pe.WithoutSecret(secret)
		require.NotContains(t, clean.Error(), secret[:3], "secret at %d", at)
		require.Contains(t, clean.Line, Redacted, "secret at %d", at)
	}
	pe := &ProtocolError{Line: "bogus S", Reason: "r"}
	require.Equal(t, "bogus S", pe.WithoutSecret(secret).Line, "an uncut line ending in an S is not a secret cut short")
}

// WithoutSecret finds a secret cut by the line's end before it replaces the
// whole ones: a secret shorter than Redacted made the line grow, and the
// cut start at its end fell past keepMax, kept (review "rv5").
func TestWithoutSecretRedactsACutShortSecretAfterWholeOnes(t *testing.T) {
	const secret = "s3cr"
	whole := strings.Repeat(secret+" ", 8)
	line := whole + strings.Repeat("x", keepMax-len(whole)-3) + "s3c" // cut: "s3c" of "s3cr"
	require.Len(t, line, keepMax)
	e := (&ProtocolError{Line: line, Reason: "r"}).WithoutSecret(secret)
	require.False(t, strings.HasSuffix(e.Line, "s3c"), "the cut secret's start is still there: %q", e.Line[len(e.Line)-20:])
}

// The cut-short secret is looked for after the last whole one: when the
// secret's last byte is also its first (1 hex token in 16), the match could
// begin inside a whole occurrence, which was then cut in two and not
// replaced, leaving all but one byte of it (review "rv6").
func TestWithoutSecretDoesNotCutAWholeSecretThatEndsAsItBegins(t *testing.T) {
	const secret = "a0f3c9e1b2d47a68c0e5f1b3d9a7c24a" // 32 hex digits, first == last
	// The server's echo, cut at keepMax: the whole token, then one byte
	// that happens to be the token's second.
	line := strings.Repeat("x", keepMax-len(secret)-1) + secret + secret[1:2]
	require.Len(t, line, keepMax)
	got := (&ProtocolError{Line: line, Reason: "r"}).WithoutSecret(secret)
	t.Logf("Line  %q", got.Line)
	t.Logf("Error %q", got.Error())
	require.NotContains(t, got.Line, secret[1:16], "a part of the secret stays in Line")
	require.NotContains(t, got.Error(), secret[1:16], "a part of the secret stays in Error()")
}
