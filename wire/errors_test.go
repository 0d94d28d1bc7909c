package wire

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDisplayWord(t *testing.T) {
	for in, want := range map[string]string{
		"error_max_locks":            "error_max_locks",
		"error_new":                  "error_new",
		"error_\x1b[2J":              `"error_\x1b[2J"`,
		"error_a b":                  `"error_a b"`,
		strings.Repeat("x", 65):      `"` + strings.Repeat("x", 64) + `"...`,
		"error_" + string(rune(233)): `"error_é"`,
	} {
		if got := DisplayWord(in); got != want {
			t.Errorf("DisplayWord(%q) = %s, want %s", in, got, want)
		}
	}
}

// A protocol error that no one line caused names no reply: an empty Line
// would read as an empty reply received (review fuzz: a lost lease's Err
// said `bytes received with no request pending in reply ""`). One about an
// empty line still names it.
func TestLinelessProtocolErrorNamesNoReply(t *testing.T) {
	e := LinelessProtocolError("bytes received with no request pending")
	require.ErrorIs(t, e, ErrProtocol)
	require.Equal(t, "dflock: protocol violation: bytes received with no request pending", e.Error())
	require.Equal(t, e.Error(), e.WithoutSecret("s3cret").Error())
	require.Equal(t, `dflock: protocol violation: unknown status word in reply ""`,
		(&ProtocolError{Reason: "unknown status word"}).Error())
}
