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
		c := NewConn(&scriptConn{chunks: fuzzChunks(data, chunk)}, ConnOptions{MaxLine: limit, Secret: secret})

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

// FuzzParseReplyAcceptsValid builds replies a server may send to each
// command (§5, §6, with the tolerated extensions: a fence field, trailing
// fields, trailing CRs) and checks that ParseReply accepts every one with
// the fields it carries: a valid reply refused would break the connection,
// and with it every lease the connection owns.
func FuzzParseReplyAcceptsValid(f *testing.F) {
	f.Add(uint8(CmdLock), uint8(0), tok, int64(33), uint64(7), false, "x", "")
	f.Add(uint8(CmdEnqueue), uint8(0), tok, int64(0), uint64(7), true, "x", "more 1")
	f.Add(uint8(CmdRenew), uint8(0), tok, int64(9), uint64(1), true, "x", "")
	f.Add(uint8(CmdSignal), uint8(0), tok, int64(3), uint64(0), false, "x", "\r")
	f.Add(uint8(CmdStats), uint8(0), tok, int64(3), uint64(0), false, "x", `{"connections":1}`)
	f.Add(uint8(CmdRelease), uint8(3), tok, int64(3), uint64(0), false, "something_new", "")
	f.Fuzz(func(t *testing.T, cmdByte, kind uint8, token string, n int64, fence uint64, withFence bool, word, extra string) {
		cmd := Command(1 + int(cmdByte)%int(numCommands-1))
		if n < 0 || ValidateToken(token) != nil || strings.ContainsAny(extra, "\n") {
			return
		}
		// extra is either trailing CRs (which the server's reader and ours
		// strip) or free text after the known fields, as a field of its
		// own (a leading space in it makes a doubled space).
		tail, crs := "", ""
		switch {
		case strings.Trim(extra, "\r") == "":
			crs = extra
		case strings.Contains(extra, "\r"):
			return
		default:
			tail = " " + extra
		}
		num := strconv.FormatInt(n, 10)
		fenceField := ""
		if withFence {
			fenceField = " " + strconv.FormatUint(fence, 10)
		}
		want := Reply{}
		var line string
		grant := func(status string, st Status) {
			line = status + " " + token + " " + num + fenceField + tail
			want = Reply{Status: st, Word: status, Token: token, Lease: n, Fence: fence, HasFence: withFence}
			if !withFence {
				var ok bool
				if want.Fence, want.HasFence, ok = fenceOfTail(tail); !ok {
					line = ""
				}
			}
		}
		errWord := "error_" + strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r == '_' {
				return r
			}
			return -1
		}, word)
		switch kind % 4 {
		case 1: // the other non-error statuses the command may get
			switch cmd {
			case CmdLock, CmdSemLock, CmdWait, CmdSemWait:
				line, want = "timeout", Reply{Status: StatusTimeout, Word: "timeout"}
			case CmdEnqueue, CmdSemEnqueue:
				line, want = "queued", Reply{Status: StatusQueued, Word: "queued"}
			default:
				return
			}
		case 2:
			line, want = "error", Reply{Status: StatusError, Word: "error"}
		case 3:
			line, want = errWord, Reply{Status: statusOf([]byte(errWord)), Word: errWord}
			if errWord == "error_" {
				return // not a word any server sends
			}
			if want.Status == StatusErrNotLeader && token != "" {
				line += " " + token // the leader's address
				want.Text = token
			}
		default:
			switch cmd {
			case CmdLock, CmdSemLock, CmdWait, CmdSemWait:
				grant("ok", StatusOK)
			case CmdEnqueue, CmdSemEnqueue:
				grant("acquired", StatusAcquired)
			case CmdRenew, CmdSemRenew:
				line = "ok " + num + fenceField + tail
				want = Reply{Status: StatusOK, Word: "ok", Lease: n, Fence: fence, HasFence: withFence}
				if !withFence {
					var ok bool
					if want.Fence, want.HasFence, ok = fenceOfTail(tail); !ok {
						return
					}
				}
			case CmdSignal:
				line = "ok " + num + tail
				want = Reply{Status: StatusOK, Word: "ok", Count: n}
			case CmdStats:
				if tail == "" {
					return
				}
				line = "ok" + tail
				want = Reply{Status: StatusOK, Word: "ok", Text: extra}
			default: // bare ok, trailing fields ignored
				line, want = "ok"+tail, Reply{Status: StatusOK, Word: "ok"}
			}
		}
		if line == "" {
			return // a grant with a non-canonical decimal where a fence goes
		}
		got, err := ParseReply([]byte(line+crs), cmd)
		if err != nil {
			t.Fatalf("%s: valid reply %q refused: %v", cmd, line+crs, err)
		}
		if got != want {
			t.Fatalf("%s: %q parsed to %+v, want %+v", cmd, line+crs, got, want)
		}
	})
}

// fenceOfTail is the fence a grant or renewal without one of its own gets
// from trailing text: its first field, if it is a decimal as a server
// writes one (what else a server might put there is ParseReply's choice:
// ok says whether the reference has a view).
func fenceOfTail(tail string) (fence uint64, has, ok bool) {
	if tail == "" {
		return 0, false, true
	}
	first, _, _ := strings.Cut(tail[1:], " ")
	v, err := strconv.ParseUint(first, 10, 64)
	if err == nil && strconv.FormatUint(v, 10) == first {
		return v, true, true
	}
	digits := first != "" && strings.Trim(first, "0123456789") == ""
	return 0, false, !digits
}
