package wire

import "strings"

// MatchPattern reports whether channel matches the NATS-style pattern
// (docs/protocol.md §6.6). The pattern is assumed valid.
//
// Both strings are split on '.' exactly like the server's strings.Split, so
// even the patterns ValidatePattern refuses (empty tokens) match the same
// channels as on the server. It never allocates.
func MatchPattern(pattern, channel string) bool {
	p, c := pattern, channel
	pDone, cDone := false, false
	for !pDone {
		var pt, ct string
		pt, p, pDone = nextToken(p)
		if pt == ">" {
			// One or more remaining channel tokens.
			return !cDone
		}
		if cDone {
			return false
		}
		ct, c, cDone = nextToken(c)
		if pt != "*" && pt != ct {
			return false
		}
	}
	return cDone
}

// nextToken returns the first '.'-separated token of s and the remainder;
// last is true when tok was the final token (strings.Split semantics: "" is
// one empty token, "a." is "a" and "").
func nextToken(s string) (tok, rest string, last bool) {
	if i := strings.IndexByte(s, '.'); i >= 0 {
		return s[:i], s[i+1:], false
	}
	return s, "", true
}
