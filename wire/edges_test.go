package wire

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An over-long line that begins with a long auth token (echoed by a hostile
// or broken server) must not get the token's first bytes into the error:
// ConnOptions.Secret promises that "an over-long line's error" is scrubbed.
// When the line is refused after the first bufio fill (4096 bytes), the
// prefix handed to tooLong holds only part of the secret, which Scrubbed
// cannot find whole: the error kept the secret's first ~68 bytes.
func TestOverlongLineKeepsALongSecretOut(t *testing.T) {
	var b strings.Builder
	for i := 0; b.Len() < 5000; i++ {
		b.WriteString("k")
		b.WriteString(itoa(int64(i * 7919)))
	}
	secret := b.String() // a 5000-byte token: validateSecret allows up to 64 KiB
	c, srv := pipeConn(t, ConnOptions{MaxLine: 100, Secret: secret})
	feed(t, srv, false, "huh "+secret+"\n")
	_, err := c.ReadLine()
	require.ErrorIs(t, err, ErrLineTooLong)
	var pe *ProtocolError
	require.True(t, errors.As(err, &pe))
	assert.NotContains(t, pe.Line, secret[:32], "error line keeps the start of the secret")
	assert.NotContains(t, err.Error(), secret[:32], "error text keeps the start of the secret")
}

// truncate backed off over UTF-8 continuation bytes without bound, so a
// value made of bytes 0x80–0xBF (binary payload, non-UTF-8 key or reply) was
// cut to "": the ArgError carried no value and read as if the value were
// empty, and a ProtocolError showed the line as `""...`.
func TestTruncateKeepsNonUTF8Values(t *testing.T) {
	payload := strings.Repeat("\x80", 100) + "\n"
	err := ValidatePayload("ch", payload)
	var ae *ArgError
	require.True(t, errors.As(err, &ae), "%v", err)
	assert.NotEmpty(t, ae.Value, "bad payload value dropped from the error: %q", err)
	assert.Contains(t, err.Error(), `\x80`)

	_, err = ParseReply([]byte(strings.Repeat("\xbf", 100)), CmdLock)
	require.ErrorIs(t, err, ErrProtocol)
	assert.Contains(t, err.Error(), `\xbf`, "offending reply not shown: %v", err)
}

// A Conn broken by its writer forces the net.Conn's deadline into the past
// "so that the goroutine on the other side returns promptly too; its error
// will then report this cause" (Conn.fail). A reader blocked in AwaitLine
// returned the bare os.ErrDeadlineExceeded of the forced deadline, which
// AwaitLine documents as "nothing happened, the Conn is still usable".
func TestAwaitLineReportsABreakByTheWriter(t *testing.T) {
	c, _ := tcpConn(t, ConnOptions{})
	done := make(chan error, 1)
	go func() {
		_, err := c.AwaitLine()
		done <- err
	}()
	// Wait until the goroutine is parked in AwaitLine's network read.
	for {
		buf := make([]byte, 1<<20)
		st := string(buf[:runtime.Stack(buf, true)])
		if strings.Contains(st, "(*Conn).AwaitLine") && strings.Contains(st, "runtime_pollWait") {
			break
		}
		runtime.Gosched()
	}
	require.NoError(t, c.SetWriteDeadline(aLongTimeAgo))
	werr := c.WriteRequests(Request{Cmd: CmdPing})
	require.ErrorIs(t, werr, ErrConnBroken)
	err := <-done
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrConnBroken, "AwaitLine after the writer broke the Conn: %v", err)
	assert.ErrorIs(t, c.Err(), ErrConnBroken)
}

// A passphrase secret (spaces inside; the server trims only its ends) echoed
// after "error_" or "error_not_leader ": the status word / leader address is
// only the first space-separated field, so it holds the passphrase's first
// word(s), and replacing the whole secret within that field found nothing.
// Conn.ParseReply promises the secret is kept out of r.Word and r.Text.
func TestPassphraseKeptOutOfWordAndText(t *testing.T) {
	const secret = "Tr0ub4dor&3xyzzy horse battery staple"
	c, srv := pipeConn(t, ConnOptions{Secret: secret})
	feed(t, srv, false, "error_"+secret+"\n", "error_not_leader "+secret+"\n")
	line, err := c.ReadLine()
	require.NoError(t, err)
	r, err := c.ParseReply(line, CmdLock)
	require.NoError(t, err)
	assert.NotContains(t, r.Word, "Tr0ub4dor&3xyzzy", "status word keeps the secret's first word")

	line, err = c.ReadLine()
	require.NoError(t, err)
	r, err = c.ParseReply(line, CmdLock)
	require.NoError(t, err)
	assert.NotContains(t, r.Text, "Tr0ub4dor&3xyzzy", "leader address keeps the secret's first word")
}

type ownTimeout struct{}

func (ownTimeout) Error() string   { return "i/o deadline reached" }
func (ownTimeout) Timeout() bool   { return true }
func (ownTimeout) Temporary() bool { return true }

// IsTimeout accepts a deadline's error however the connection reports it:
// os.ErrDeadlineExceeded (wrapped, as net does) or a net.Error of its own
// whose Timeout is true (yamux's); nothing else.
func TestIsTimeoutAcceptsEveryDeadlineError(t *testing.T) {
	require.True(t, IsTimeout(os.ErrDeadlineExceeded))
	require.True(t, IsTimeout(&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}))
	require.True(t, IsTimeout(fmt.Errorf("tls: %w", ownTimeout{})))
	require.False(t, IsTimeout(io.EOF))
	require.False(t, IsTimeout(net.ErrClosed))
	require.False(t, IsTimeout(nil))
}
