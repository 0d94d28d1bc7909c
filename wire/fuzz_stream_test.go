package wire

import (
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
)

// countingScript is a scriptConn that counts Read calls, so that a test can
// tell whether a ReadLine had to go to the network.
type countingScript struct {
	scriptConn
	reads int
}

func (c *countingScript) Read(p []byte) (int, error) {
	c.reads++
	return c.scriptConn.Read(p)
}

// FuzzAwaitLine interleaves AwaitLine with ReadLine over a reply stream cut
// into arbitrary reads (a reply split across reads, several replies in one
// read, lines longer than the read buffer). AwaitLine must consume nothing:
// the lines ReadLine returns are those of ReadLine alone. When AwaitLine
// says ready, the next ReadLine must not read from the network (package
// pool relies on that to read a reply on a caller's goroutine without
// blocking past its context). Nothing may panic, and every failure breaks
// the Conn.
func FuzzAwaitLine(f *testing.F) {
	f.Add([]byte("ok\nqueued 2\n"), uint8(1), uint8(0xff), uint8(64))
	f.Add([]byte("o"), uint8(0), uint8(0x55), uint8(0))
	f.Add([]byte(strings.Repeat("x", 5000)+"\nok\n"), uint8(200), uint8(0xaa), uint8(255))
	f.Add([]byte("ok "+tok+" 33\r\nsig a b\nerror\n"), uint8(3), uint8(0x0f), uint8(32))
	f.Fuzz(func(t *testing.T, data []byte, chunk, pattern, capByte uint8) {
		limit := 16 + int(capByte)*20
		split := func() [][]byte { return fuzzChunks(data, chunk) }

		// Reference: ReadLine alone.
		var want []string
		var wantErr error
		ref := NewConn(&scriptConn{chunks: split()}, ConnOptions{MaxLine: limit})
		for {
			line, err := ref.ReadLine()
			if err != nil {
				wantErr = err
				break
			}
			want = append(want, string(line))
		}

		sc := &countingScript{scriptConn: scriptConn{chunks: split()}}
		c := NewConn(sc, ConnOptions{MaxLine: limit})
		var got []string
		for i := 0; ; i++ {
			if pattern>>(i%8)&1 == 1 {
				ready, err := c.AwaitLine()
				if err != nil {
					if !errors.Is(err, ErrConnBroken) {
						t.Fatalf("AwaitLine error %v does not match ErrConnBroken", err)
					}
					// Only a clean end with nothing buffered may stop here.
					if len(got) != len(want) || !errors.Is(wantErr, io.EOF) {
						t.Fatalf("AwaitLine failed (%v) after %d of %d lines; ReadLine alone ended with %v",
							err, len(got), len(want), wantErr)
					}
					return
				}
				if ready {
					before := sc.reads
					line, err := c.ReadLine()
					if sc.reads != before {
						t.Fatalf("ReadLine after a ready AwaitLine read the network (%d reads)", sc.reads-before)
					}
					if err != nil {
						// Only a line over the cap can fail from the buffer.
						if !errors.Is(err, ErrLineTooLong) {
							t.Fatalf("ReadLine after ready: %v", err)
						}
						if !errors.Is(wantErr, ErrLineTooLong) || len(got) != len(want) {
							t.Fatalf("line %d: %v, ReadLine alone gave %d lines then %v", len(got), err, len(want), wantErr)
						}
						return
					}
					got = append(got, string(line))
					if len(got) > len(want) || got[len(got)-1] != want[len(got)-1] {
						t.Fatalf("line %d: %q, ReadLine alone gave %q", len(got)-1, got[len(got)-1], want)
					}
					continue
				}
			}
			line, err := c.ReadLine()
			if err != nil {
				if len(got) != len(want) {
					t.Fatalf("ended after %d lines with %v; ReadLine alone gave %d then %v", len(got), err, len(want), wantErr)
				}
				if errors.Is(err, ErrLineTooLong) != errors.Is(wantErr, ErrLineTooLong) ||
					errors.Is(err, io.ErrUnexpectedEOF) != errors.Is(wantErr, io.ErrUnexpectedEOF) {
					t.Fatalf("ended with %v; ReadLine alone ended with %v", err, wantErr)
				}
				return
			}
			got = append(got, string(line))
			if len(got) > len(want) || got[len(got)-1] != want[len(got)-1] {
				t.Fatalf("line %d: %q, ReadLine alone gave %q", len(got)-1, got[len(got)-1], want)
			}
		}
	})
}

// FuzzRequestEncoding checks the encoder against the server's side of §2/§3:
// a request that Validate accepts is exactly three lines within the line
// caps, no line ends in CR (the server would strip it), LineLen is the
// longest of them, and the server's tokenisation of the arg line gives back
// the fields the caller set.
func FuzzRequestEncoding(f *testing.F) {
	f.Add(uint8(CmdLock), "k", "", int64(5), int64(7), int64(0), "")
	f.Add(uint8(CmdRenew), "k", tok, int64(0), int64(33), int64(0), "")
	f.Add(uint8(CmdRelease), "k", tok, int64(0), int64(0), int64(0), "")
	f.Add(uint8(CmdSemLock), "s", "", int64(0), int64(0), int64(3), "")
	f.Add(uint8(CmdListen), "a.*", "", int64(0), int64(0), int64(0), "grp")
	f.Add(uint8(CmdSignal), "a.b", "", int64(0), int64(0), int64(0), " hello world ")
	f.Add(uint8(CmdAuth), "", "", int64(0), int64(0), int64(0), "  s3cret ")
	f.Add(uint8(CmdEnqueue), "k\u00a0x", "", int64(0), int64(9), int64(0), "")
	f.Add(uint8(CmdLock), "k", "", int64(MaxSeconds), int64(MaxSeconds+1), int64(0), "")
	f.Add(uint8(CmdSemLock), "k", "", int64(-1), int64(MaxSeconds), int64(0), "")
	f.Add(uint8(CmdRenew), "k", tok, int64(0), int64(-9223372036854775808), int64(0), "")
	f.Fuzz(func(t *testing.T, cmd uint8, key, token string, timeout, lease, limit int64, arg string) {
		r := Request{Cmd: Command(cmd), Key: key, Token: token, Timeout: timeout, Lease: lease, Limit: limit, Arg: arg}
		if r.Validate() != nil {
			return
		}
		// What reaches the server is within what it accepts (§3): a
		// timeout or lease past MaxSeconds overflows its duration
		// arithmetic, and a limit below 1 is refused.
		switch r.Cmd {
		case CmdLock, CmdSemLock, CmdWait, CmdSemWait:
			if r.Timeout < 0 || r.Timeout > MaxSeconds {
				t.Fatalf("valid %+v has timeout out of [0, %d]", r, int64(MaxSeconds))
			}
		}
		switch r.Cmd {
		case CmdLock, CmdSemLock, CmdEnqueue, CmdSemEnqueue, CmdRenew, CmdSemRenew:
			if r.Lease < 0 || r.Lease > MaxSeconds {
				t.Fatalf("valid %+v has lease out of [0, %d]", r, int64(MaxSeconds))
			}
		}
		if (r.Cmd == CmdSemLock || r.Cmd == CmdSemEnqueue) && r.Limit < 1 {
			t.Fatalf("valid %+v has limit below 1", r)
		}
		enc := string(r.AppendTo(nil))
		parts := strings.Split(enc, "\n")
		if len(parts) != 4 || parts[3] != "" {
			t.Fatalf("%+v encodes to %d lines: %q", r, len(parts)-1, enc)
		}
		longest := 0
		for i, l := range parts[:3] {
			if strings.HasSuffix(l, "\r") {
				t.Fatalf("line %d of %+v ends in CR: %q", i, r, l)
			}
			capI := MaxLine
			if i == 2 && (r.Cmd == CmdSignal || r.Cmd == CmdAuth) {
				capI = MaxLongArg
			}
			if len(l) > capI {
				t.Fatalf("line %d of %+v is %d bytes, over %d", i, r, len(l), capI)
			}
			longest = max(longest, len(l))
		}
		if r.LineLen() != longest {
			t.Fatalf("LineLen %d, longest line %d (%+v)", r.LineLen(), longest, r)
		}
		if parts[0] != r.Cmd.String() {
			t.Fatalf("cmd line %q", parts[0])
		}
		argLine := parts[2]
		fields := strings.Fields(argLine)
		num := func(s string) int64 {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				t.Fatalf("field %q of %q is not an integer", s, argLine)
			}
			return n
		}
		switch r.Cmd {
		case CmdLock, CmdSemLock, CmdEnqueue, CmdSemEnqueue, CmdWait, CmdSemWait,
			CmdRelease, CmdSemRelease, CmdRenew, CmdSemRenew:
			if parts[1] != r.Key {
				t.Fatalf("key line %q, key %q", parts[1], r.Key)
			}
		}
		switch r.Cmd {
		case CmdLock, CmdSemLock:
			want := []int64{r.Timeout}
			if r.Cmd == CmdSemLock {
				want = append(want, r.Limit)
			}
			if r.Lease != 0 {
				want = append(want, r.Lease)
			}
			if len(fields) != len(want) {
				t.Fatalf("arg %q: %d fields, want %d", argLine, len(fields), len(want))
			}
			for i, w := range want {
				if num(fields[i]) != w {
					t.Fatalf("arg %q field %d, want %d", argLine, i, w)
				}
			}
		case CmdEnqueue:
			if s := strings.TrimSpace(argLine); (s == "") != (r.Lease == 0) || (s != "" && num(s) != r.Lease) {
				t.Fatalf("e arg %q for lease %d", argLine, r.Lease)
			}
		case CmdRelease, CmdSemRelease:
			if strings.TrimSpace(argLine) != r.Token {
				t.Fatalf("r arg %q for token %q", argLine, r.Token)
			}
		case CmdRenew, CmdSemRenew:
			if len(fields) == 0 || fields[0] != r.Token || len(fields) > 2 ||
				(len(fields) == 2) != (r.Lease != 0) || (len(fields) == 2 && num(fields[1]) != r.Lease) {
				t.Fatalf("n arg %q for token %q lease %d", argLine, r.Token, r.Lease)
			}
		case CmdListen, CmdUnlisten:
			if parts[1] != r.Key || strings.TrimSpace(argLine) != r.Arg {
				t.Fatalf("listen %q/%q for %q/%q", parts[1], argLine, r.Key, r.Arg)
			}
		case CmdSignal:
			if parts[1] != r.Key || argLine != r.Arg || strings.TrimSpace(argLine) == "" {
				t.Fatalf("signal %q/%q for %q/%q", parts[1], argLine, r.Key, r.Arg)
			}
		case CmdAuth:
			if strings.TrimSpace(argLine) == "" {
				t.Fatalf("auth secret line %q is blank", argLine)
			}
		}
	})
}
