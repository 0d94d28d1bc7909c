package wire

import (
	"strings"
	"testing"
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
