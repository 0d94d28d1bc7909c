package wire

import (
	"bytes"
	"strconv"
)

// Command is a request verb of the line protocol (docs/protocol.md §6).
type Command uint8

// The commands of the signal-era protocol. The comment is the word on the
// wire.
const (
	CmdInvalid    Command = iota
	CmdAuth               // auth
	CmdLock               // l
	CmdEnqueue            // e
	CmdWait               // w
	CmdRelease            // r
	CmdRenew              // n
	CmdSemLock            // sl
	CmdSemEnqueue         // se
	CmdSemWait            // sw
	CmdSemRelease         // sr
	CmdSemRenew           // sn
	CmdStats              // stats
	CmdPing               // ping
	CmdListen             // listen
	CmdUnlisten           // unlisten
	CmdSignal             // signal
	numCommands
)

// Wire limits (docs/protocol.md §2, §6.6).
const (
	// MaxLine is the server's cap on the bytes before '\n' of the cmd and key
	// lines and of most arg lines (all versions).
	MaxLine = 256
	// MaxLongArg is the arg-line cap for signal (v1.15+) and auth. Older
	// servers apply MaxLine to these too; see Request.LineLen.
	MaxLongArg = 65536
	// MaxSeconds is the largest timeout or lease the server accepts (v1.15+):
	// math.MaxInt64 nanoseconds in whole seconds.
	MaxSeconds = 9223372036
	// DefaultMaxLine is the default reply-line cap of a Conn. Official
	// Python and TypeScript clients use the same; stats replies grow with the
	// number of keys and are the only replies that get near it.
	DefaultMaxLine = 1 << 20
)

var cmdWords = [numCommands]string{
	CmdInvalid:    "",
	CmdAuth:       "auth",
	CmdLock:       "l",
	CmdEnqueue:    "e",
	CmdWait:       "w",
	CmdRelease:    "r",
	CmdRenew:      "n",
	CmdSemLock:    "sl",
	CmdSemEnqueue: "se",
	CmdSemWait:    "sw",
	CmdSemRelease: "sr",
	CmdSemRenew:   "sn",
	CmdStats:      "stats",
	CmdPing:       "ping",
	CmdListen:     "listen",
	CmdUnlisten:   "unlisten",
	CmdSignal:     "signal",
}

// String returns the protocol word of the command ("l", "sl", "stats", …).
// Values outside the defined set render as "Command(N)" so that they stand
// out in logs instead of encoding as an empty line.
func (c Command) String() string {
	if c > CmdInvalid && c < numCommands {
		return cmdWords[c]
	}
	return "Command(" + strconv.Itoa(int(c)) + ")"
}

// valid reports whether c is one of the defined commands.
func (c Command) valid() bool { return c > CmdInvalid && c < numCommands }

// Request is one protocol request. Only the fields the command uses are
// encoded; the zero value of an optional field means "omit".
type Request struct {
	Cmd     Command
	Key     string // lock/semaphore key, listen pattern or signal channel; "_" is sent for auth/stats/ping
	Token   string // r, n, sr, sn
	Timeout int64  // seconds; l, sl, w, sw (0 = try)
	Lease   int64  // seconds; l, sl, e, se, n, sn (0 = omit: server default)
	Limit   int64  // sl, se
	Arg     string // auth secret, listen/unlisten group, signal payload
}

// ReleaseRequest is the release of a held lease: r for a lock, sr for a
// semaphore slot (the two are separate namespaces from v1.14).
func ReleaseRequest(key, token string, semaphore bool) Request {
	cmd := CmdRelease
	if semaphore {
		cmd = CmdSemRelease
	}
	return Request{Cmd: cmd, Key: key, Token: token}
}

// RenewRequest is the renewal of a held lease to leaseSeconds: n for a lock,
// sn for a semaphore slot. Give the lease explicitly (at least 1): 0 omits
// it, and a renewal without one resets the lease to the server's default
// (valid on the wire, so Validate accepts it; package renew never sends it).
func RenewRequest(key, token string, semaphore bool, leaseSeconds int64) Request {
	cmd := CmdRenew
	if semaphore {
		cmd = CmdSemRenew
	}
	return Request{Cmd: cmd, Key: key, Token: token, Lease: leaseSeconds}
}

// Blocking reports whether the request may park its connection on the
// server (l/sl with Timeout > 0, w/sw). Such a request must not share a
// connection with anything that needs a prompt answer (docs/protocol.md §8f).
func (r *Request) Blocking() bool {
	switch r.Cmd {
	case CmdLock, CmdSemLock:
		return r.Timeout > 0
	case CmdWait, CmdSemWait:
		// Even w with timeout 0 is reported: after an `acquired` enqueue it
		// answers at once, but the caller cannot know that in general, and
		// treating it as blocking costs nothing but a pool connection.
		return true
	}
	return false
}

// keyLine returns the second request line. Commands that ignore the key
// still need the line to be present; "_" is the protocol's convention.
func (r *Request) keyLine() string {
	switch r.Cmd {
	case CmdAuth, CmdStats, CmdPing:
		return "_"
	}
	return r.Key
}

// AppendTo appends the three request lines to dst. It never allocates when
// dst has room. It does not validate; call Validate first.
func (r *Request) AppendTo(dst []byte) []byte {
	if r.Cmd.valid() {
		dst = append(dst, cmdWords[r.Cmd]...)
	} else {
		dst = append(dst, r.Cmd.String()...)
	}
	dst = append(dst, '\n')
	dst = append(dst, r.keyLine()...)
	dst = append(dst, '\n')
	dst = r.appendArg(dst)
	return append(dst, '\n')
}

// CountRequests counts the whole requests in p, a prefix of requests
// encoded by AppendTo (three lines each): those a write that sent p
// delivered. A request cut short does not count.
func CountRequests(p []byte) int {
	return bytes.Count(p, newline) / 3
}

var newline = []byte{'\n'}

func appendOptLease(dst []byte, lease int64) []byte {
	if lease == 0 {
		return dst
	}
	dst = append(dst, ' ')
	return strconv.AppendInt(dst, lease, 10)
}

// appendArg writes the arg line (without '\n') in the layouts of §6.
func (r *Request) appendArg(dst []byte) []byte {
	switch r.Cmd {
	case CmdLock:
		dst = strconv.AppendInt(dst, r.Timeout, 10)
		dst = appendOptLease(dst, r.Lease)
	case CmdSemLock:
		dst = strconv.AppendInt(dst, r.Timeout, 10)
		dst = append(dst, ' ')
		dst = strconv.AppendInt(dst, r.Limit, 10)
		dst = appendOptLease(dst, r.Lease)
	case CmdEnqueue:
		if r.Lease != 0 {
			dst = strconv.AppendInt(dst, r.Lease, 10)
		}
	case CmdSemEnqueue:
		dst = strconv.AppendInt(dst, r.Limit, 10)
		dst = appendOptLease(dst, r.Lease)
	case CmdWait, CmdSemWait:
		dst = strconv.AppendInt(dst, r.Timeout, 10)
	case CmdRelease, CmdSemRelease:
		dst = append(dst, r.Token...)
	case CmdRenew, CmdSemRenew:
		dst = append(dst, r.Token...)
		dst = appendOptLease(dst, r.Lease)
	case CmdAuth, CmdListen, CmdUnlisten, CmdSignal:
		dst = append(dst, r.Arg...)
	}
	return dst
}

// intLen is the length of strconv.FormatInt(v, 10).
func intLen(v int64) int {
	n := 1
	u := uint64(v)
	if v < 0 {
		n++
		u = -u
	}
	for u >= 10 {
		u /= 10
		n++
	}
	return n
}

func optLeaseLen(lease int64) int {
	if lease == 0 {
		return 0
	}
	return 1 + intLen(lease)
}

// argLen is len(r.appendArg(nil)) without encoding.
func (r *Request) argLen() int {
	switch r.Cmd {
	case CmdLock:
		return intLen(r.Timeout) + optLeaseLen(r.Lease)
	case CmdSemLock:
		return intLen(r.Timeout) + 1 + intLen(r.Limit) + optLeaseLen(r.Lease)
	case CmdEnqueue:
		if r.Lease == 0 {
			return 0
		}
		return intLen(r.Lease)
	case CmdSemEnqueue:
		return intLen(r.Limit) + optLeaseLen(r.Lease)
	case CmdWait, CmdSemWait:
		return intLen(r.Timeout)
	case CmdRelease, CmdSemRelease:
		return len(r.Token)
	case CmdRenew, CmdSemRenew:
		return len(r.Token) + optLeaseLen(r.Lease)
	case CmdAuth, CmdListen, CmdUnlisten, CmdSignal:
		return len(r.Arg)
	}
	return 0
}

// LineLen returns the longest of the three encoded lines, without the '\n'
// (for routing requests whose arg exceeds MaxLine away from lease-owning
// connections: servers before v1.15 close the connection on such a line).
func (r *Request) LineLen() int {
	return max(len(r.Cmd.String()), len(r.keyLine()), r.argLen())
}
