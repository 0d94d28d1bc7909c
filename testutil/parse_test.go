package testutil

import (
	"strings"
	"testing"
)

// FuzzFields checks the allocation-free splitter against strings.Fields,
// whose semantics §3 prescribes.
func FuzzFields(f *testing.F) {
	for _, s := range []string{"", " 1   5 ", "+1 +5", "30 junk", "\u00a01\u2003", "a\xffb c", "\t\v\f\r"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := strings.Fields(s)
		var got [4]string
		n := fields(s, got[:])
		if n != len(want) {
			t.Fatalf("fields(%q) = %d, want %d", s, n, len(want))
		}
		for i := range min(n, len(got)) {
			if got[i] != want[i] {
				t.Fatalf("fields(%q)[%d] = %q, want %q", s, i, got[i], want[i])
			}
		}
	})
}

// FuzzPattern checks pattern matching invariants on valid patterns.
func FuzzPattern(f *testing.F) {
	for _, s := range [][2]string{{"a.>", "a.b"}, {"*.b", "a.b"}, {">", "x"}, {"a.*", "a"}, {"a..b", "a..b"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, channel string) {
		if !validPattern(pattern) || channel == "" || strings.ContainsAny(channel, "*>") {
			return
		}
		got := matchPattern(pattern, channel)
		if !isWildcard(pattern) && got != (pattern == channel) {
			t.Fatalf("literal %q ~ %q = %v", pattern, channel, got)
		}
		if matchPattern(">", channel) != true {
			t.Fatalf("> must match %q", channel)
		}
		if got && !strings.HasSuffix(pattern, ">") && strings.Count(pattern, ".") != strings.Count(channel, ".") {
			t.Fatalf("%q ~ %q matched with different token counts", pattern, channel)
		}
		if want := splitMatch(pattern, channel); got != want {
			t.Fatalf("%q ~ %q = %v, the server's algorithm says %v", pattern, channel, got, want)
		}
	})
}

// splitMatch is dflockd's MatchPattern as written there: both strings split
// on '.', `*` one token, `>` (last) one or more tokens.
func splitMatch(pattern, channel string) bool {
	p, c := strings.Split(pattern, "."), strings.Split(channel, ".")
	for i, tok := range p {
		switch {
		case tok == ">":
			return len(c) > i
		case i >= len(c):
			return false
		case tok != "*" && tok != c[i]:
			return false
		}
	}
	return len(p) == len(c)
}
