package difftest

import (
	"fmt"
	"strings"
	"time"
)

// stepKind is what a step does on its connection.
type stepKind uint8

const (
	stepSend      stepKind = iota // write the chunks and read the replies
	stepOpen                      // dial a new connection named conn
	stepClose                     // the client closes the connection
	stepHalfClose                 // the client shuts down its write side
	stepSleep                     // wait (scripted scenarios)
	stepShutdown                  // graceful shutdown: SIGTERM to dflockd, Server.Shutdown on testutil
)

// step is one action of a session, applied to both servers.
type step struct {
	kind stepKind
	conn string
	// chunks are written in separate write calls, a short pause apart (a
	// request split across writes). They may refer to tokens as {Tn}.
	chunks []string
	// replies is how many reply lines the chunks ask for (complete requests).
	replies int
	// blockFor > 0 marks a request that may wait that long for its reply
	// (l, sl, w, sw with a timeout): if neither server answers promptly the
	// reply is collected later.
	blockFor time.Duration
	sleep    time.Duration
	pause    time.Duration // between chunks; default splitPause
}

// request builds the bytes of one request: three lines ended by eol.
func request(cmd, key, arg string) string { return cmd + "\n" + key + "\n" + arg + "\n" }

// send is a step that sends one complete request.
func send(conn, cmd, key, arg string) step {
	return step{kind: stepSend, conn: conn, chunks: []string{request(cmd, key, arg)}, replies: 1}
}

// sendBlocking is send for a request that may wait up to d for its reply.
func sendBlocking(conn, cmd, key, arg string, d time.Duration) step {
	s := send(conn, cmd, key, arg)
	s.blockFor = d
	return s
}

// sendRaw sends literal bytes that hold n complete requests.
func sendRaw(conn, payload string, n int) step {
	return step{kind: stepSend, conn: conn, chunks: []string{payload}, replies: n}
}

func openConn(conn string) step  { return step{kind: stepOpen, conn: conn} }
func closeConn(conn string) step { return step{kind: stepClose, conn: conn} }
func halfClose(conn string) step { return step{kind: stepHalfClose, conn: conn} }
func shutdown() step             { return step{kind: stepShutdown} }

func sleepFor(d time.Duration) step {
	return step{kind: stepSleep, sleep: d}
}

// String shows the step for a transcript: requests as cmd|key|arg, quoted
// when they hold anything but printable ASCII.
func (s step) String() string {
	switch s.kind {
	case stepOpen:
		return s.conn + " open"
	case stepClose:
		return s.conn + " close"
	case stepHalfClose:
		return s.conn + " shutdown(write)"
	case stepSleep:
		return fmt.Sprintf("sleep %v", s.sleep)
	case stepShutdown:
		return "shutdown (SIGTERM / Server.Shutdown)"
	}
	parts := make([]string, len(s.chunks))
	for i, c := range s.chunks {
		parts[i] = showPayload(c)
	}
	line := s.conn + " > " + strings.Join(parts, " ‖ ")
	if s.blockFor > 0 {
		line += fmt.Sprintf("   (may block %v)", s.blockFor)
	}
	return line
}

// showPayload renders request bytes as "cmd|key|arg; cmd|key|arg".
func showPayload(p string) string {
	const maxShown = 160
	lines := strings.SplitAfter(p, "\n")
	var reqs []string
	var cur []string
	for _, l := range lines {
		if l == "" {
			continue
		}
		cur = append(cur, l)
		if len(cur) == 3 {
			reqs = append(reqs, showRequest(cur))
			cur = nil
		}
	}
	if len(cur) > 0 {
		reqs = append(reqs, showRequest(cur)+" (incomplete)")
	}
	out := strings.Join(reqs, "; ")
	if len(out) > maxShown {
		out = out[:maxShown] + fmt.Sprintf("…(%d bytes)", len(p))
	}
	return out
}

func showRequest(lines []string) string {
	shown := make([]string, len(lines))
	for i, l := range lines {
		body, _ := strings.CutSuffix(l, "\n")
		if len(body) > 40 && strings.Count(body, body[:1]) == len(body) {
			shown[i] = fmt.Sprintf("%q×%d", body[:1], len(body))
			if !strings.HasSuffix(l, "\n") {
				shown[i] += "(no LF)"
			}
			continue
		}
		if isPlain(body) && strings.HasSuffix(l, "\n") {
			shown[i] = body
		} else {
			shown[i] = fmt.Sprintf("%q", l)
		}
	}
	return strings.Join(shown, "|")
}

func isPlain(s string) bool {
	if s == "" || strings.TrimSpace(s) != s {
		return false
	}
	for _, r := range s {
		if r < ' ' || r > '~' || r == '|' || r == '"' {
			return false
		}
	}
	return true
}
