package wire

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
)

// Server lines of docs/protocol.md §6.10 and §5, plus the fence and push variants.
var replySeeds = []string{
	"ok " + tok + " 33",
	"ok " + tok + " 7",
	"ok 33",
	"ok 9",
	"ok",
	"error",
	"acquired " + tok + " 33",
	"error_already_enqueued",
	"error_not_enqueued",
	`ok {"connections":2,"locks":[],"semaphores":[],"idle_locks":[],"idle_semaphores":[]}`,
	"queued",
	"timeout",
	"error_not_leader 10.0.0.1:6388",
	"ok " + tok + " 33 12345",
	"ok 33 12345",
	"error_something_new",
	"ok 3\r",
	"sig events.a hello world",
	// Hostile grants: tokens the client could not send back, leases beyond
	// MaxSeconds.
	"ok ab\x00cd 33",
	"ok ab\x01cd 33",
	"acquired ab\u00a0cd 33",
	"ok ab\u3000cd 33",
	"ok ab\x7f 33",
	"ok " + strings.Repeat("t", MaxLine+1) + " 33",
	"ok " + tok + " 10000000000",
	"ok " + tok + " 9223372036854775807",
}

func FuzzParseReply(f *testing.F) {
	for _, s := range replySeeds {
		for c := CmdInvalid; c <= numCommands; c++ {
			f.Add(s, uint8(c))
		}
	}
	f.Fuzz(func(t *testing.T, line string, cmd uint8) {
		rep, err := ParseReply([]byte(line), Command(cmd))
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not match ErrProtocol", err)
			}
			return
		}
		if rep.Status == StatusInvalid || rep.Status >= numStatuses {
			t.Fatalf("status %d out of range", rep.Status)
		}
		if rep.Word == "" {
			t.Fatal("empty status word")
		}
		if !strings.HasPrefix(line, rep.Word) {
			t.Fatalf("word %q is not the line's prefix", rep.Word)
		}
		if rep.Lease < 0 || rep.Count < 0 {
			t.Fatalf("negative number in %+v", rep)
		}
		if strings.Contains(rep.Token, " ") {
			t.Fatalf("token %q contains a space", rep.Token)
		}
		grant := Command(cmd).valid() && rep.Status == StatusAcquired
		if rep.Status == StatusOK && Command(cmd).valid() {
			switch Command(cmd) {
			case CmdLock, CmdSemLock, CmdEnqueue, CmdSemEnqueue, CmdWait, CmdSemWait:
				grant = true
			}
		}
		if grant {
			if err := ValidateToken(rep.Token); err != nil {
				t.Fatalf("grant token %q cannot be sent back: %v", rep.Token, err)
			}
			// A grant re-encoded the canonical way parses to the same reply.
			canon := rep.Word + " " + rep.Token + " " + itoa(rep.Lease)
			if rep.HasFence {
				canon += " " + strconv.FormatUint(rep.Fence, 10)
			}
			again, err := ParseReply([]byte(canon), Command(cmd))
			if err != nil || again != rep {
				t.Fatalf("canonical %q parses to %+v, %v; want %+v", canon, again, err, rep)
			}
		}
	})
}

func FuzzParsePush(f *testing.F) {
	for _, s := range []string{"sig events.a hello world", "sig a.b  x", "sig c", "sig  ", "sig a \r", "ok 1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		p, err := ParsePush([]byte(line))
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not match ErrProtocol", err)
			}
			return
		}
		if !IsPush([]byte(line)) {
			t.Fatal("parsed a line IsPush refuses")
		}
		if p.Channel == "" || strings.ContainsAny(p.Channel, " *>\t") {
			t.Fatalf("bad channel %q", p.Channel)
		}
		if p.Payload == "" {
			t.Fatal("empty payload")
		}
		if got := "sig " + p.Channel + " " + p.Payload; got != string(trimCR([]byte(line))) {
			t.Fatalf("push %+v does not reassemble to %q", p, line)
		}
	})
}

// fuzzChunks cuts data into the reads a fuzzed connection delivers: the
// first chunk+1 bytes long, the next ones varied deterministically.
func fuzzChunks(data []byte, chunk uint8) [][]byte {
	step := 1 + int(chunk)
	var chunks [][]byte
	for rest := data; len(rest) > 0; {
		n := min(step, len(rest))
		chunks = append(chunks, rest[:n])
		rest = rest[n:]
		step = step*7%251 + 1
	}
	return chunks
}

// refMatch is the server's algorithm (signal.go MatchPattern) written the
// obvious, allocating way.
func refMatch(pattern, channel string) bool {
	pt := strings.Split(pattern, ".")
	ct := strings.Split(channel, ".")
	for i, p := range pt {
		if p == ">" {
			return len(ct) > i
		}
		if i >= len(ct) {
			return false
		}
		if p != "*" && p != ct[i] {
			return false
		}
	}
	return len(pt) == len(ct)
}

func FuzzPattern(f *testing.F) {
	seeds := [][2]string{
		{">", "a"}, {"a.>", "a.b"}, {"a.>", "a.b.c"}, {"a.>", "a"}, {"a.*", "a.b"}, {"*", "a.b"},
		{"a.b*", "a.bc"}, {"a.>.b", "a.x.b"}, {"a..b", "a..b"}, {"events.*.created", "events.eu.created"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, channel string) {
		got := MatchPattern(pattern, channel)
		if want := refMatch(pattern, channel); got != want {
			t.Fatalf("MatchPattern(%q, %q) = %v, server algorithm says %v", pattern, channel, got, want)
		}
		if ValidatePattern(pattern) != nil {
			return
		}
		wild := false
		for _, tok := range strings.Split(pattern, ".") {
			wild = wild || tok == "*" || tok == ">"
		}
		if !wild && got != (pattern == channel) {
			t.Fatalf("literal pattern %q vs %q: match=%v", pattern, channel, got)
		}
		if ValidateChannel(channel) == nil && !MatchPattern(">", channel) {
			t.Fatalf("'>' does not match valid channel %q", channel)
		}
		if !wild && ValidateChannel(pattern) != nil {
			t.Fatalf("valid literal pattern %q is not a valid channel", pattern)
		}
	})
}

func FuzzConnRead(f *testing.F) {
	var transcript bytes.Buffer
	for _, s := range replySeeds {
		transcript.WriteString(s + "\n")
	}
	f.Add(transcript.Bytes(), uint8(7), uint8(64))
	f.Add([]byte("ok\r\nok 33\r\r\nsig a b c\n"), uint8(1), uint8(0))
	f.Add([]byte(strings.Repeat("x", 5000)+"\nok\n"), uint8(200), uint8(255))
	f.Add([]byte("ok 3"), uint8(2), uint8(16))
	f.Fuzz(func(t *testing.T, data []byte, chunk, capByte uint8) {
		limit := 16 + int(capByte)*20 // 16 … 5116: below and above the read buffer
		c := NewConn(&scriptConn{chunks: fuzzChunks(data, chunk)}, ConnOptions{MaxLine: limit})

		segs := strings.Split(string(data), "\n")
		complete, tail := segs[:len(segs)-1], segs[len(segs)-1]
		for i, seg := range complete {
			line, err := c.ReadLine()
			if len(seg) > limit {
				if !errors.Is(err, ErrProtocol) || !errors.Is(err, ErrConnBroken) {
					t.Fatalf("segment %d (%d bytes > %d): err=%v", i, len(seg), limit, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("segment %d: unexpected error %v", i, err)
			}
			if len(line) > limit {
				t.Fatalf("line of %d bytes over cap %d", len(line), limit)
			}
			if want := strings.TrimRight(seg, "\r"); string(line) != want {
				t.Fatalf("segment %d: got %q want %q", i, line, want)
			}
		}
		_, err := c.ReadLine()
		switch {
		case !errors.Is(err, ErrConnBroken):
			t.Fatalf("after the input: err=%v, want broken", err)
		case tail == "" && !errors.Is(err, io.EOF):
			t.Fatalf("clean end: err=%v, want EOF", err)
		case tail != "" && !errors.Is(err, io.ErrUnexpectedEOF) && !(len(tail) > limit && errors.Is(err, ErrProtocol)):
			t.Fatalf("partial tail %d bytes: err=%v", len(tail), err)
		}

		// The same bytes through ReadReply never panic, and every failure
		// breaks the connection.
		c = NewConn(&scriptConn{chunks: [][]byte{data}}, ConnOptions{MaxLine: limit})
		for cmd := CmdAuth; ; cmd = cmd%(numCommands-1) + 1 {
			if _, err := c.ReadReply(cmd); err != nil {
				if !errors.Is(err, ErrConnBroken) {
					t.Fatalf("ReadReply error %v is not ErrConnBroken", err)
				}
				break
			}
		}
	})
}
