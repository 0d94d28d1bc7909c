package testutil

import (
	"bytes"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Line caps of docs/protocol.md §2. They count the bytes before '\n', including
// any '\r' that is stripped afterwards.
const (
	maxLineBytes  = 256
	maxLargeBytes = 65536 // `signal` and `auth` args from v1.15; `auth` in v2.x
	readBufSize   = 4096  // the server's bufio.Reader; also the pipelining abuse threshold (§8e)
)

// maxSeconds is MaxInt64 nanoseconds in whole seconds: the upper bound for
// timeouts and leases (§3). Larger values would overflow a time.Duration, so
// every version refuses them: v1.15+ as codes 6/9, v1.10 when converting
// (§15); the wire shows `error` either way.
const maxSeconds = 9223372036

// cmdID identifies a command word. Words that some version knows are kept
// even where the imitated version does not, so that request counters name
// them; dispatch decides per version whether they are unknown.
type cmdID uint8

const (
	cmdUnknown cmdID = iota
	cmdAuth
	cmdLock
	cmdRelease
	cmdRenew
	cmdEnqueue
	cmdWait
	cmdSemLock
	cmdSemRelease
	cmdSemRenew
	cmdSemEnqueue
	cmdSemWait
	cmdStats
	cmdPing
	cmdListen
	cmdUnlisten
	cmdSignal
	numCmds
)

var cmdNames = [numCmds]string{
	cmdUnknown:    "?",
	cmdAuth:       "auth",
	cmdLock:       "l",
	cmdRelease:    "r",
	cmdRenew:      "n",
	cmdEnqueue:    "e",
	cmdWait:       "w",
	cmdSemLock:    "sl",
	cmdSemRelease: "sr",
	cmdSemRenew:   "sn",
	cmdSemEnqueue: "se",
	cmdSemWait:    "sw",
	cmdStats:      "stats",
	cmdPing:       "ping",
	cmdListen:     "listen",
	cmdUnlisten:   "unlisten",
	cmdSignal:     "signal",
}

// lookupCmd matches the command line exactly (case-sensitive, no trimming).
func lookupCmd(b []byte) cmdID {
	switch string(b) {
	case "auth":
		return cmdAuth
	case "l":
		return cmdLock
	case "r":
		return cmdRelease
	case "n":
		return cmdRenew
	case "e":
		return cmdEnqueue
	case "w":
		return cmdWait
	case "sl":
		return cmdSemLock
	case "sr":
		return cmdSemRelease
	case "sn":
		return cmdSemRenew
	case "se":
		return cmdSemEnqueue
	case "sw":
		return cmdSemWait
	case "stats":
		return cmdStats
	case "ping":
		return cmdPing
	case "listen":
		return cmdListen
	case "unlisten":
		return cmdUnlisten
	case "signal":
		return cmdSignal
	}
	return cmdUnknown
}

// supports reports whether the imitated release knows the command. `auth`
// is handled before dispatch and is never "supported" there (§6.1).
func (v Version) supports(c cmdID) bool {
	switch c {
	case cmdUnknown, cmdAuth:
		return false
	case cmdPing:
		return v != V1_10
	case cmdListen, cmdUnlisten, cmdSignal:
		return v == V1_16
	}
	return true
}

// argCap is the line cap for the arg line of a request whose command line
// was cmd (v1.16 ReadRequest selects it from the already-read command).
func (v Version) argCap(cmd []byte) int {
	switch v {
	case V1_16:
		if string(cmd) == "signal" || string(cmd) == "auth" {
			return maxLargeBytes
		}
	case V2_1:
		if string(cmd) == "auth" {
			return maxLargeBytes
		}
	}
	return maxLineBytes
}

// validKey applies the key rules of §3: non-empty, no space, TAB, LF or CR.
func validKey(k []byte) bool {
	return len(k) > 0 && !bytes.ContainsAny(k, " \t\n\r")
}

// fields splits s like strings.Fields (Unicode whitespace) into dst without
// allocating; it returns the number of fields, which may exceed len(dst).
func fields(s string, dst []string) int {
	n := 0
	i := 0
	for i < len(s) {
		// Skip whitespace.
		for i < len(s) {
			r, size := rune(s[i]), 1
			if r >= utf8.RuneSelf {
				r, size = utf8.DecodeRuneInString(s[i:])
			}
			if !unicode.IsSpace(r) {
				break
			}
			i += size
		}
		if i >= len(s) {
			break
		}
		start := i
		for i < len(s) {
			r, size := rune(s[i]), 1
			if r >= utf8.RuneSelf {
				r, size = utf8.DecodeRuneInString(s[i:])
			}
			if unicode.IsSpace(r) {
				break
			}
			i += size
		}
		if n < len(dst) {
			dst[n] = s[start:i]
		}
		n++
	}
	return n
}

// parseInt is Go strconv decimal parsing: optional sign, leading zeros fine.
func parseInt(s string) (int64, bool) {
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil
}

// seconds converts a validated count of seconds (0..maxSeconds) to a
// Duration. It saturates all the same, so that no caller can overflow it.
func seconds(n int64) time.Duration {
	if n > maxSeconds {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(n) * time.Second
}

// parseTimeout validates a timeout field (code 4/6).
func (v Version) parseTimeout(s string) (int64, bool) {
	n, ok := parseInt(s)
	if !ok || n < 0 || n > maxSeconds {
		return 0, false
	}
	return n, true
}

// parseLease validates a lease field (code 4/9).
func (v Version) parseLease(s string) (int64, bool) {
	n, ok := parseInt(s)
	if !ok || n < 1 || n > maxSeconds {
		return 0, false
	}
	return n, true
}

// parseLimit validates a semaphore limit (code 4/13).
func parseLimit(s string) (int, bool) {
	n, ok := parseInt(s)
	if !ok || n < 1 || n > int64(^uint(0)>>1) {
		return 0, false
	}
	return int(n), true
}

// acquireArgs are the parsed arguments of l/sl/e/se.
type acquireArgs struct {
	timeout int64 // l/sl only
	limit   int   // 1 for locks
	lease   int64 // seconds; the default when omitted
}

// parseLockArg parses the arg of `l` (timeout [lease]) or `sl`
// (timeout limit [lease]).
func (v Version) parseLockArg(arg []byte, sem bool, defLease int64) (acquireArgs, bool) {
	var f [4]string
	n := fields(string(arg), f[:])
	a := acquireArgs{limit: 1, lease: defLease}
	minN, maxN := 1, 2
	if sem {
		minN, maxN = 2, 3
	}
	if n < minN || n > maxN {
		return a, false
	}
	var ok bool
	if a.timeout, ok = v.parseTimeout(f[0]); !ok {
		return a, false
	}
	i := 1
	if sem {
		if a.limit, ok = parseLimit(f[1]); !ok {
			return a, false
		}
		i = 2
	}
	if n > i {
		if a.lease, ok = v.parseLease(f[i]); !ok {
			return a, false
		}
	}
	return a, true
}

// parseEnqueueArg parses the arg of `e` (one optional integer on the trimmed
// line) or `se` (limit [lease]).
func (v Version) parseEnqueueArg(arg []byte, sem bool, defLease int64) (acquireArgs, bool) {
	a := acquireArgs{limit: 1, lease: defLease}
	var ok bool
	if !sem {
		s := strings.TrimSpace(string(arg))
		if s == "" {
			return a, true
		}
		a.lease, ok = v.parseLease(s)
		return a, ok
	}
	var f [3]string
	n := fields(string(arg), f[:])
	if n < 1 || n > 2 {
		return a, false
	}
	if a.limit, ok = parseLimit(f[0]); !ok {
		return a, false
	}
	if n == 2 {
		if a.lease, ok = v.parseLease(f[1]); !ok {
			return a, false
		}
	}
	return a, true
}

// parseWaitArg parses the arg of w/sw: the trimmed line as one timeout.
func (v Version) parseWaitArg(arg []byte) (int64, bool) {
	s := strings.TrimSpace(string(arg))
	if s == "" {
		return 0, false
	}
	return v.parseTimeout(s)
}

// parseRenewArg parses the arg of n/sn: token [lease].
func (v Version) parseRenewArg(arg []byte, defLease int64) (token string, lease int64, ok bool) {
	var f [3]string
	n := fields(string(arg), f[:])
	if n < 1 || n > 2 {
		return "", 0, false
	}
	lease = defLease
	if n == 2 {
		if lease, ok = v.parseLease(f[1]); !ok {
			return "", 0, false
		}
	}
	return f[0], lease, true
}

// validPattern implements signal.go:ValidatePattern (§6.6): `*` and `>` must
// be whole dot-separated tokens and `>` must be the last token.
func validPattern(p string) bool {
	for rest := p; ; {
		tok, tail, more := strings.Cut(rest, ".")
		if strings.ContainsAny(tok, "*>") && tok != "*" && tok != ">" {
			return false
		}
		if tok == ">" && more {
			return false
		}
		if !more {
			return true
		}
		rest = tail
	}
}

// isWildcard reports whether a valid pattern contains a `*` or `>` token.
func isWildcard(p string) bool { return strings.ContainsAny(p, "*>") }

// matchPattern implements signal.go:MatchPattern for a valid pattern.
// Both are split on '.' as strings.Split does, so "a." is the tokens "a"
// and "": `>` matches one or more remaining tokens, empty ones included.
func matchPattern(pattern, channel string) bool {
	left := true // channel tokens remain
	for {
		ptok, prest, pmore := strings.Cut(pattern, ".")
		if ptok == ">" {
			return left
		}
		if !left {
			return false
		}
		ctok, crest, cmore := strings.Cut(channel, ".")
		if ptok != "*" && ptok != ctok {
			return false
		}
		if !pmore {
			return !cmore
		}
		pattern, channel, left = prest, crest, cmore
	}
}
