package wire

import (
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Validate checks every field the command uses against docs/protocol.md §3 and
// the line caps, returning an *ArgError that names the first bad argument.
// Fields the command does not use are ignored, as AppendTo ignores them.
//
// The long-arg caps are those of v1.15+ servers; older servers cap every line
// at MaxLine and close the connection on a longer one. Callers that may talk
// to such servers compare LineLen with MaxLine.
func (r *Request) Validate() error {
	switch r.Cmd {
	case CmdAuth:
		return validateSecret(r.Arg)
	case CmdStats, CmdPing:
		return nil
	case CmdLock:
		return firstErr(ValidateKey("key", r.Key), validateTimeout(r.Timeout), validateLease(r.Lease))
	case CmdSemLock:
		return firstErr(ValidateKey("key", r.Key), validateTimeout(r.Timeout), validateLimit(r.Limit), validateLease(r.Lease))
	case CmdEnqueue:
		return firstErr(ValidateKey("key", r.Key), validateLease(r.Lease))
	case CmdSemEnqueue:
		return firstErr(ValidateKey("key", r.Key), validateLimit(r.Limit), validateLease(r.Lease))
	case CmdWait, CmdSemWait:
		return firstErr(ValidateKey("key", r.Key), validateTimeout(r.Timeout))
	case CmdRelease, CmdSemRelease:
		return firstErr(ValidateKey("key", r.Key), ValidateToken(r.Token))
	case CmdRenew, CmdSemRenew:
		if err := firstErr(ValidateKey("key", r.Key), ValidateToken(r.Token), validateLease(r.Lease)); err != nil {
			return err
		}
		// The token alone may fit while token + " " + lease does not.
		if n := r.argLen(); n > MaxLine {
			return argErr("token", r.Token, "arg line would exceed the "+itoa(MaxLine)+"-byte line cap")
		}
		return nil
	case CmdListen, CmdUnlisten:
		return firstErr(ValidatePattern(r.Key), ValidateGroup(r.Arg))
	case CmdSignal:
		return firstErr(ValidateChannel(r.Key), ValidatePayload(r.Key, r.Arg))
	}
	return &ArgError{Arg: "command", Value: r.Cmd.String(), Reason: "unknown command"}
}

// firstErr returns the first non-nil error. The checks are cheap, so
// evaluating all of them eagerly keeps Validate readable at no real cost.
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

func validateTimeout(v int64) error {
	if v < 0 || v > MaxSeconds {
		return intArgErr("timeout", v, "must be between 0 and "+itoa(MaxSeconds)+" seconds")
	}
	return nil
}

// validateLease accepts 0 because the Request encodes 0 as "omit the lease"
// (server default), which is always valid.
func validateLease(v int64) error {
	if v < 0 || v > MaxSeconds {
		return intArgErr("lease", v, "must be between 1 and "+itoa(MaxSeconds)+" seconds (0 = server default)")
	}
	return nil
}

// validateLimit has no upper bound: released servers accept any positive int,
// and only an unreleased cluster branch caps limits at 1 048 576. Capping here
// would refuse requests that every shipped server accepts.
func validateLimit(v int64) error {
	if v < 1 {
		return intArgErr("limit", v, "must be at least 1")
	}
	return nil
}

// ValidateKey checks a lock/semaphore key (arg names it in the error:
// "key", "pattern", "channel"). The server refuses empty keys and keys with
// space, TAB, CR or LF (other Unicode whitespace is accepted, §3); NUL is
// refused here as well because no other client can type it back.
func ValidateKey(arg, key string) error {
	if key == "" {
		return argErr(arg, key, "must not be empty")
	}
	if len(key) > MaxLine {
		return argErr(arg, key, "longer than "+itoa(MaxLine)+" bytes")
	}
	for i := 0; i < len(key); i++ {
		switch key[i] {
		case ' ', '\t', '\r', '\n', 0:
			return argErr(arg, key, "contains space, TAB, CR, LF or NUL")
		}
	}
	return nil
}

// ValidatePattern checks a listen pattern: key rules plus NATS token rules
// (§6.6): tokens are separated by '.', '*' and '>' must be whole tokens, and
// '>' may only be the last token.
//
// The server accepts empty tokens (`a..b`, `.a`, `a.`) as literals; §6.6
// says nothing against them. They are refused here on purpose: NATS forbids
// them, and a pattern that only matches channels with empty tokens is far
// more likely a typo than an intent. Being stricter than the server costs
// nothing that works, while a typo would otherwise listen silently forever.
func ValidatePattern(pattern string) error {
	if err := ValidateKey("pattern", pattern); err != nil {
		return err
	}
	for start := 0; start <= len(pattern); {
		end := strings.IndexByte(pattern[start:], '.')
		last := end < 0
		if last {
			end = len(pattern)
		} else {
			end += start
		}
		tok := pattern[start:end]
		switch {
		case tok == "":
			return argErr("pattern", pattern, "empty token (leading, trailing or doubled '.')")
		case tok == ">":
			if !last {
				return argErr("pattern", pattern, "'>' must be the last token")
			}
		case tok == "*":
		case strings.ContainsAny(tok, "*>"):
			return argErr("pattern", pattern, "wildcards '*' and '>' must be whole tokens")
		}
		start = end + 1
	}
	return nil
}

// ValidateChannel checks a signal channel: key rules and no '*' or '>'.
func ValidateChannel(channel string) error {
	if err := ValidateKey("channel", channel); err != nil {
		return err
	}
	if strings.ContainsAny(channel, "*>") {
		return argErr("channel", channel, "must not contain '*' or '>'")
	}
	return nil
}

// ValidateToken checks a token: non-empty, ≤ MaxLine, and free of
// whitespace and control characters.
//
// Whitespace means Unicode whitespace: `n` splits its arg with
// strings.Fields, so a token with U+00A0 in it would be cut in two there.
// Control characters (C0, DEL, C1; NUL included) are refused although the
// server would pass most of them through: no server issues them, and the same
// rule decides which grant tokens ParseReply accepts, so a token this client
// accepted from a server is always one it can send back to release the lease.
func ValidateToken(token string) error {
	if reason := tokenProblem(token); reason != "" {
		return argErr("token", token, reason)
	}
	return nil
}

// tokenProblem is ValidateToken's verdict without the error: "" if token is
// fine, else the reason.
func tokenProblem(token string) string {
	switch {
	case token == "":
		return "must not be empty"
	case len(token) > MaxLine:
		return "longer than " + itoa(MaxLine) + " bytes"
	case !tokenCharsOK(token):
		return "contains whitespace or a control character"
	}
	return ""
}

// tokenCharsOK reports whether token has no whitespace and no control
// character (ASCII fast path; no allocation).
func tokenCharsOK(token string) bool {
	for i := 0; i < len(token); {
		c := token[i]
		if c < utf8.RuneSelf {
			if c <= ' ' || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(token[i:])
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
		i += size
	}
	return true
}

// hasLineBreakOrNUL reports whether s contains CR, LF or NUL: CR/LF would
// end the line early (or be stripped), NUL is refused for parity with keys.
func hasLineBreakOrNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\r', '\n', 0:
			return true
		}
	}
	return false
}

// ValidatePayload checks a signal payload for channel: not blank, no CR/LF/NUL,
// ≤ MaxLongArg − 5 − len(channel) bytes (so that the `sig <channel> <payload>`
// push line fits the 64 KiB readers of every client, §6.6).
func ValidatePayload(channel, payload string) error {
	if strings.TrimSpace(payload) == "" {
		return argErr("payload", payload, "must not be blank")
	}
	if hasLineBreakOrNUL(payload) {
		return argErr("payload", payload, "contains CR, LF or NUL")
	}
	if limit := MaxLongArg - 5 - len(channel); len(payload) > limit {
		return argErr("payload", payload, "longer than "+itoa(int64(limit))+" bytes for this channel")
	}
	return nil
}

// ValidateGroup checks a queue-group name: no CR/LF/NUL, no leading or
// trailing whitespace, ≤ MaxLine bytes (empty = no group). The server trims
// the group line, so " g" would silently join group "g".
func ValidateGroup(group string) error {
	if group == "" {
		return nil
	}
	if len(group) > MaxLine {
		return argErr("group", group, "longer than "+itoa(MaxLine)+" bytes")
	}
	if hasLineBreakOrNUL(group) {
		return argErr("group", group, "contains CR, LF or NUL")
	}
	if strings.TrimSpace(group) != group {
		return argErr("group", group, "has leading or trailing whitespace")
	}
	return nil
}

// validateSecret checks an auth secret. The server trims the secret line and
// the configured token, so a blank secret can never match; leading and
// trailing whitespace is harmless and allowed.
func validateSecret(secret string) error {
	// The value is never echoed: it is a credential.
	if strings.TrimSpace(secret) == "" {
		return &ArgError{Arg: "secret", Reason: "must not be blank"}
	}
	if len(secret) > MaxLongArg {
		return &ArgError{Arg: "secret", Reason: "longer than " + itoa(MaxLongArg) + " bytes"}
	}
	if hasLineBreakOrNUL(secret) {
		return &ArgError{Arg: "secret", Reason: "contains CR, LF or NUL"}
	}
	return nil
}

// Seconds converts a duration to whole protocol seconds, rounding up
// (a positive sub-second duration becomes 1), because the server only knows
// whole seconds and a lease or timeout must never come out shorter than asked.
//
// Negative durations round away from zero (−1ns becomes −1) so that Validate
// still rejects them instead of seeing a try-lock. Durations above
// MaxSeconds (e.g. math.MaxInt64 meaning "forever") clamp to MaxSeconds.
func Seconds(d time.Duration) int64 {
	s := int64(d / time.Second)
	switch rem := d % time.Second; {
	case rem > 0:
		s++
	case rem < 0:
		s--
	}
	return min(s, MaxSeconds)
}
