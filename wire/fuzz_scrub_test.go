package wire

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzConnSecret reads a transcript in which the fuzzer places an auth
// secret (each 0x01 byte of tmpl becomes it) through a Conn that knows the
// secret, and checks that no error and no free-text field shows it, whole
// or cut: an offending line kept by an error must read as the transcript's
// line with the secret replaced, possibly ending early in Redacted.
func FuzzConnSecret(f *testing.F) {
	f.Add([]byte("error_\x01\n"), "pass word", uint8(0), uint8(3), uint8(255))
	f.Add([]byte("error_not_leader \x01\n"), "s3cret", uint8(4), uint8(1), uint8(255))
	f.Add([]byte("bogus \x01 more\r\n"), "a b c", uint8(1), uint8(7), uint8(255))
	f.Add([]byte(strings.Repeat("x", 60)+"\x01"+strings.Repeat("y", 200)+"\n"), "0123456789abcdef", uint8(2), uint8(9), uint8(0))
	f.Add([]byte(strings.Repeat("x", 20)+"\x01\n"), strings.Repeat("z", 100), uint8(3), uint8(50), uint8(0))
	f.Add([]byte("sig a \x01\nsig\x01\nok \x01 33\n"), "tok", uint8(1), uint8(2), uint8(100))
	// A secret longer than the read buffer, begun in what an over-long
	// line's error keeps and running past what was read when it proved
	// too long.
	f.Add([]byte(strings.Repeat("x", 10)+"\x01\n"), strings.Repeat("s", 5000), uint8(0), uint8(250), uint8(200))
	f.Fuzz(func(t *testing.T, tmpl []byte, secret string, cmd, chunk, capByte uint8) {
		// "~" appears in no fixed text of an error, so a secret found in
		// one came from the transcript.
		secret = "~" + secret
		if validateSecret(secret) != nil {
			return
		}
		data := bytes.ReplaceAll(tmpl, []byte{1}, []byte(secret))
		limit := 16 + int(capByte)*20
		step := 1 + int(chunk)
		var chunks [][]byte
		for rest := data; len(rest) > 0; {
			n := min(step, len(rest))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
			step = step*7%251 + 1
		}
		c := NewConn(&scriptConn{chunks: chunks}, ConnOptions{MaxLine: limit, Secret: secret})

		segs := strings.Split(string(data), "\n")
		for i, seg := range segs[:len(segs)-1] {
			scrubbed := strings.ReplaceAll(seg, secret, Redacted)
			if strings.Contains(scrubbed, secret) {
				return // the secret reads across a replacement: nothing to keep out
			}
			checkErr := func(err error) {
				t.Helper()
				var pe *ProtocolError
				if !errors.As(err, &pe) {
					return
				}
				if strings.Contains(pe.Reason, secret) {
					t.Fatalf("line %d: reason %q shows the secret", i, pe.Reason)
				}
				if !showsScrubbedPrefix(pe.Line, scrubbed) {
					t.Fatalf("line %d: error keeps %q, not a prefix of the scrubbed line %q", i, pe.Line, scrubbed)
				}
			}
			line, err := c.ReadLine()
			if err != nil {
				checkErr(err)
				return
			}
			if IsPush(line) {
				_, err := c.ParsePush(line)
				checkErr(err)
				continue
			}
			r, err := c.ParseReply(line, Command(1+(int(cmd)+i)%int(numCommands-1)))
			checkErr(err)
			// Free text comes from the scrubbed line (or is replaced whole).
			if err == nil && (r.Status == StatusErrOther || r.Status == StatusErrNotLeader) &&
				(!strings.Contains(scrubbed, r.Word) && r.Word != "error_"+Redacted ||
					!strings.Contains(scrubbed, r.Text) && r.Text != Redacted) {
				t.Fatalf("line %d: %s reply word %q text %q are not from the scrubbed line %q", i, r.Status, r.Word, r.Text, scrubbed)
			}
		}
	})
}

// showsScrubbedPrefix reports whether kept, an error's copy of a line, is a
// prefix of the scrubbed line, or such a prefix followed by the start of
// Redacted (where the line was cut inside a secret).
func showsScrubbedPrefix(kept, scrubbed string) bool {
	for i := len(kept); i >= 0; i-- {
		if strings.HasPrefix(scrubbed, kept[:i]) {
			return i == len(kept) || strings.HasPrefix(Redacted, kept[i:])
		}
	}
	return false
}

// FuzzDisplay checks the helpers that put values a caller or a server
// chose into messages: bounded, cut only at a character boundary of valid
// UTF-8, never emptied, and (quoted) free of raw control bytes.
func FuzzDisplay(f *testing.F) {
	for _, s := range []string{"", "k", "a b", "\x00\x1b[2J", strings.Repeat("é", 40), strings.Repeat("\xff", 100), strings.Repeat("\x80", 100),
		strings.Repeat("x", 63) + "€", "error_" + strings.Repeat("y", 70), "日本語\n"} {
		f.Add(s, uint8(64))
	}
	f.Fuzz(func(t *testing.T, s string, n uint8) {
		cut := truncate(s, int(n))
		if len(cut) > int(n) || !strings.HasPrefix(s, cut) {
			t.Fatalf("truncate(%q, %d) = %q", s, n, cut)
		}
		if len(s) > int(n) && len(cut) < int(n)-(utf8.UTFMax-1) {
			t.Fatalf("truncate(%q, %d) = %q: cut more than a character", s, n, cut)
		}
		if utf8.ValidString(s) && !utf8.ValidString(cut) {
			t.Fatalf("truncate(%q, %d) = %q splits a character", s, n, cut)
		}

		q := QuoteValue(s)
		body, more := strings.CutSuffix(q, "...")
		if more != (len(s) > displayMax) {
			body = q // a value of its own ending in "..."
		}
		uq, err := strconv.Unquote(body)
		if err != nil || !strings.HasPrefix(s, uq) {
			t.Fatalf("QuoteValue(%q) = %q: unquotes to %q, %v", s, q, uq, err)
		}
		if len(s) > displayMax && len(uq) < displayMax-(utf8.UTFMax-1) {
			t.Fatalf("QuoteValue(%q) = %q keeps too little", s, q)
		}
		if len(q) > 4*displayMax+len(`""...`)+4 {
			t.Fatalf("QuoteValue of %d bytes is %d bytes long", len(s), len(q))
		}

		w := DisplayWord(s)
		for i := 0; i < len(w); i++ {
			if w[i] < ' ' || w[i] == 0x7f {
				t.Fatalf("DisplayWord(%q) = %q holds control byte %#x", s, w, w[i])
			}
		}
		if w != s && w != q {
			t.Fatalf("DisplayWord(%q) = %q: neither the word nor QuoteValue's %q", s, w, q)
		}
	})
}
