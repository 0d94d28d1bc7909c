package wire

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseReplyTranscript(t *testing.T) {
	t.Parallel()
	// Server bytes of docs/protocol.md §6.10 (without the '\n').
	tests := []struct {
		line string
		cmd  Command
		want Reply
	}{
		{"ok " + tok + " 33", CmdLock, Reply{Status: StatusOK, Word: "ok", Token: tok, Lease: 33}},
		{"ok " + tok + " 7", CmdLock, Reply{Status: StatusOK, Word: "ok", Token: tok, Lease: 7}},
		{"ok 33", CmdRenew, Reply{Status: StatusOK, Word: "ok", Lease: 33}},
		{"ok 9", CmdRenew, Reply{Status: StatusOK, Word: "ok", Lease: 9}},
		{"ok", CmdRelease, Reply{Status: StatusOK, Word: "ok"}},
		{"error", CmdRelease, Reply{Status: StatusError, Word: "error"}},
		{"acquired " + tok + " 33", CmdEnqueue, Reply{Status: StatusAcquired, Word: "acquired", Token: tok, Lease: 33}},
		{"error_already_enqueued", CmdEnqueue, Reply{Status: StatusErrAlreadyEnqueued, Word: "error_already_enqueued"}},
		{"ok " + tok + " 33", CmdWait, Reply{Status: StatusOK, Word: "ok", Token: tok, Lease: 33}},
		{"error_not_enqueued", CmdWait, Reply{Status: StatusErrNotEnqueued, Word: "error_not_enqueued"}},
		{"error", CmdInvalid, Reply{Status: StatusError, Word: "error"}},
		{`ok {"connections":2,"locks":[],"semaphores":[],"idle_locks":[],"idle_semaphores":[]}`, CmdStats,
			Reply{Status: StatusOK, Word: "ok", Text: `{"connections":2,"locks":[],"semaphores":[],"idle_locks":[],"idle_semaphores":[]}`}},
	}
	for _, tt := range tests {
		t.Run(tt.cmd.String()+" "+tt.line, func(t *testing.T) {
			got, err := ParseReply([]byte(tt.line), tt.cmd)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			got, err = ParseReply([]byte(tt.line+"\r\r"), tt.cmd)
			require.NoError(t, err, "trailing CRs are tolerated")
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestParseReplyShapes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		line string
		cmd  Command
		want Reply
	}{
		{"sem grant", "ok t 5", CmdSemLock, Reply{Status: StatusOK, Word: "ok", Token: "t", Lease: 5}},
		{"sem enqueue grant", "acquired t 5", CmdSemEnqueue, Reply{Status: StatusAcquired, Word: "acquired", Token: "t", Lease: 5}},
		{"sem wait grant", "ok t 5", CmdSemWait, Reply{Status: StatusOK, Word: "ok", Token: "t", Lease: 5}},
		{"e grant with ok", "ok t 5", CmdEnqueue, Reply{Status: StatusOK, Word: "ok", Token: "t", Lease: 5}},
		{"grant with fence", "ok t 5 18446744073709551615", CmdLock,
			Reply{Status: StatusOK, Word: "ok", Token: "t", Lease: 5, Fence: 1<<64 - 1, HasFence: true}},
		{"acquired with fence", "acquired t 5 42", CmdEnqueue,
			Reply{Status: StatusAcquired, Word: "acquired", Token: "t", Lease: 5, Fence: 42, HasFence: true}},
		{"grant with fence and more", "ok t 5 42 future stuff", CmdWait,
			Reply{Status: StatusOK, Word: "ok", Token: "t", Lease: 5, Fence: 42, HasFence: true}},
		{"grant with unknown 4th field", "ok t 5 x=1", CmdLock, Reply{Status: StatusOK, Word: "ok", Token: "t", Lease: 5}},
		// Past 2^64 a number must not wrap (2^64+5 read as 5): no fence.
		{"grant with fence past 2^64", "ok t 5 18446744073709551621", CmdLock, Reply{Status: StatusOK, Word: "ok", Token: "t", Lease: 5}},
		{"renew with fence past 2^64", "ok 33 18446744073709551616", CmdRenew, Reply{Status: StatusOK, Word: "ok", Lease: 33}},
		{"renew with fence", "ok 33 7", CmdRenew, Reply{Status: StatusOK, Word: "ok", Lease: 33, Fence: 7, HasFence: true}},
		{"sem renew", "ok 12", CmdSemRenew, Reply{Status: StatusOK, Word: "ok", Lease: 12}},
		{"renew with unknown field", "ok 12 zz", CmdSemRenew, Reply{Status: StatusOK, Word: "ok", Lease: 12}},
		{"sem release", "ok", CmdSemRelease, Reply{Status: StatusOK, Word: "ok"}},
		{"auth", "ok", CmdAuth, Reply{Status: StatusOK, Word: "ok"}},
		{"auth failed", "error_auth", CmdAuth, Reply{Status: StatusErrAuth, Word: "error_auth"}},
		{"ping", "ok", CmdPing, Reply{Status: StatusOK, Word: "ok"}},
		{"ping on v1.10", "error", CmdPing, Reply{Status: StatusError, Word: "error"}},
		{"listen", "ok", CmdListen, Reply{Status: StatusOK, Word: "ok"}},
		{"unlisten", "ok", CmdUnlisten, Reply{Status: StatusOK, Word: "ok"}},
		{"bare ok ignores extras", "ok extra", CmdPing, Reply{Status: StatusOK, Word: "ok"}},
		{"signal", "ok 3", CmdSignal, Reply{Status: StatusOK, Word: "ok", Count: 3}},
		{"signal zero", "ok 0 extra", CmdSignal, Reply{Status: StatusOK, Word: "ok", Count: 0}},
		{"stats with spaces", "ok {\"a\": 1}", CmdStats, Reply{Status: StatusOK, Word: "ok", Text: "{\"a\": 1}"}},
		{"queued", "queued", CmdEnqueue, Reply{Status: StatusQueued, Word: "queued"}},
		{"sem queued", "queued", CmdSemEnqueue, Reply{Status: StatusQueued, Word: "queued"}},
		{"timeout l", "timeout", CmdLock, Reply{Status: StatusTimeout, Word: "timeout"}},
		{"timeout sl", "timeout", CmdSemLock, Reply{Status: StatusTimeout, Word: "timeout"}},
		{"timeout w", "timeout", CmdWait, Reply{Status: StatusTimeout, Word: "timeout"}},
		{"timeout sw", "timeout", CmdSemWait, Reply{Status: StatusTimeout, Word: "timeout"}},
		{"max locks", "error_max_locks", CmdLock, Reply{Status: StatusErrMaxLocks, Word: "error_max_locks"}},
		{"max waiters", "error_max_waiters", CmdSemLock, Reply{Status: StatusErrMaxWaiters, Word: "error_max_waiters"}},
		{"limit mismatch", "error_limit_mismatch", CmdSemEnqueue, Reply{Status: StatusErrLimitMismatch, Word: "error_limit_mismatch"}},
		{"lease expired", "error_lease_expired", CmdWait, Reply{Status: StatusErrLeaseExpired, Word: "error_lease_expired"}},
		{"draining", "error_draining", CmdRenew, Reply{Status: StatusErrDraining, Word: "error_draining"}},
		{"not leader", "error_not_leader", CmdLock, Reply{Status: StatusErrNotLeader, Word: "error_not_leader"}},
		{"not leader with addr", "error_not_leader 10.0.0.1:6388", CmdRelease,
			Reply{Status: StatusErrNotLeader, Word: "error_not_leader", Text: "10.0.0.1:6388"}},
		{"unknown error word", "error_quota", CmdLock, Reply{Status: StatusErrOther, Word: "error_quota"}},
		{"unknown error word with detail", "error_future some detail", CmdStats, Reply{Status: StatusErrOther, Word: "error_future"}},
		{"error with detail", "error oops", CmdSignal, Reply{Status: StatusError, Word: "error"}},
		{"unknown command is lenient", "ok a b c", CmdInvalid, Reply{Status: StatusOK, Word: "ok", Text: "a b c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseReply([]byte(tt.line), tt.cmd)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestParseReplyRejectsMalformedLines(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		line string
		cmd  Command
	}{
		{"empty", "", CmdPing},
		{"only CRs", "\r\r", CmdPing},
		{"unknown word", "OK", CmdPing},
		{"leading space", " ok", CmdPing},
		{"push", "sig a b", CmdPing},
		{"grant without fields", "ok", CmdLock},
		{"grant without lease", "ok " + tok, CmdLock},
		{"grant with empty token", "ok  33", CmdSemLock},
		{"grant double space", "ok " + tok + "  33", CmdWait},
		{"grant with bad lease", "ok " + tok + " 3x", CmdLock},
		{"grant with negative lease", "ok " + tok + " -3", CmdLock},
		{"grant with overflowing lease", "ok " + tok + " 9223372036854775808", CmdLock},
		{"grant with lease past 2^64", "ok " + tok + " 18446744073709551621", CmdLock},
		{"renew past 2^64", "ok 18446744073709551621", CmdRenew},
		{"grant with empty lease", "ok " + tok + " ", CmdLock},
		{"acquired for l", "acquired " + tok + " 33", CmdLock},
		{"acquired for w", "acquired " + tok + " 33", CmdWait},
		{"acquired without lease", "acquired " + tok, CmdEnqueue},
		{"queued for l", "queued", CmdLock},
		{"queued for w", "queued", CmdSemWait},
		{"timeout for e", "timeout", CmdEnqueue},
		{"timeout for r", "timeout", CmdRelease},
		{"renew without seconds", "ok", CmdRenew},
		{"renew with token", "ok " + tok + " 33", CmdRenew},
		{"renew with empty seconds", "ok ", CmdSemRenew},
		{"signal without count", "ok", CmdSignal},
		{"signal with bad count", "ok many", CmdSignal},
		{"stats without document", "ok", CmdStats},
		{"stats with empty document", "ok ", CmdStats},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseReply([]byte(tt.line), tt.cmd)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrProtocol)
			var pe *ProtocolError
			require.ErrorAs(t, err, &pe)
			assert.True(t, strings.HasPrefix(err.Error(), "dflock: protocol violation: "), err.Error())
		})
	}
}

// A grant whose token the client could not send back (renew and release
// would fail validation, so the lease would be "lost" at once while the
// server keeps the lock) is a protocol violation, for every grant-carrying
// reply.
func TestParseReplyRefusesGrantTokensTheClientCannotSendBack(t *testing.T) {
	t.Parallel()
	bad := map[string]string{
		"NUL":          "ab\x00cd",
		"SOH":          "ab\x01cd",
		"DEL":          "ab\x7fcd",
		"TAB":          "ab\tcd",
		"VT":           "ab\vcd",
		"NBSP":         "ab\u00a0cd",
		"ideographic":  "ab\u3000cd",
		"C1 control":   "ab\u0085cd",
		"line sep":     "ab\u2028cd",
		"over MaxLine": strings.Repeat("t", MaxLine+1),
	}
	grants := []struct {
		word string
		cmd  Command
	}{
		{"ok", CmdLock}, {"ok", CmdSemLock}, {"ok", CmdWait}, {"ok", CmdSemWait},
		{"ok", CmdEnqueue}, {"ok", CmdSemEnqueue}, {"acquired", CmdEnqueue}, {"acquired", CmdSemEnqueue},
	}
	for name, token := range bad {
		require.Error(t, ValidateToken(token), "precondition: requests refuse %s", name)
		for _, g := range grants {
			line := g.word + " " + token + " 33"
			_, err := ParseReply([]byte(line), g.cmd)
			require.ErrorIs(t, err, ErrProtocol, "%s in %s %q", name, g.cmd, line)
			assert.Contains(t, err.Error(), "grant token")
		}
	}
	// Tokens of every released server, and odd but sendable ones, pass.
	for _, token := range []string{tok, "0123456789abcdef0123456789abcdef", "tok-é-ü", strings.Repeat("t", MaxLine)} {
		rep, err := ParseReply([]byte("ok "+token+" 33"), CmdLock)
		require.NoError(t, err, token)
		assert.Equal(t, token, rep.Token)
		assert.NoError(t, ValidateToken(rep.Token))
	}
}

// A grant's lease above MaxSeconds is still parsed (the caller must release
// the grant it now holds, with its token) and reported as sent, never
// clamped or wrapped.
func TestParseReplyKeepsOutOfRangeGrantLeases(t *testing.T) {
	t.Parallel()
	for _, lease := range []int64{MaxSeconds + 1, 10000000000, 1<<63 - 1} {
		line := "ok " + tok + " " + itoa(lease)
		rep, err := ParseReply([]byte(line), CmdLock)
		require.NoError(t, err, line)
		assert.Equal(t, lease, rep.Lease)
		assert.Equal(t, tok, rep.Token)
	}
}

func TestProtocolErrorDoesNotRetainHugeLines(t *testing.T) {
	t.Parallel()
	_, err := ParseReply([]byte(strings.Repeat("z", 1<<20)), CmdPing)
	var pe *ProtocolError
	require.ErrorAs(t, err, &pe)
	assert.LessOrEqual(t, len(pe.Line), keepMax)
	assert.Less(t, len(err.Error()), 200)
}

func TestParseReplyAllocations(t *testing.T) {
	cases := []struct {
		line string
		cmd  Command
		max  float64
	}{
		{"ok", CmdRelease, 0},
		{"ok 33", CmdRenew, 0},
		{"ok 33 12", CmdRenew, 0},
		{"timeout", CmdLock, 0},
		{"queued", CmdEnqueue, 0},
		{"error", CmdRenew, 0},
		{"error_max_locks", CmdLock, 0},
		{"ok 4", CmdSignal, 0},
		{"ok " + tok + " 33", CmdLock, 1},
		{"acquired " + tok + " 33 99", CmdEnqueue, 1},
	}
	for _, c := range cases {
		line := []byte(c.line)
		allocs := testing.AllocsPerRun(100, func() {
			_, _ = ParseReply(line, c.cmd)
		})
		assert.LessOrEqual(t, allocs, c.max, c.line)
	}
}

func TestStatusString(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "ok", StatusOK.String())
	assert.Equal(t, "error_not_leader", StatusErrNotLeader.String())
	assert.Equal(t, "error_*", StatusErrOther.String())
	assert.Equal(t, "Status(0)", StatusInvalid.String())
	assert.True(t, StatusError.IsError())
	assert.True(t, StatusErrOther.IsError())
	assert.False(t, StatusTimeout.IsError())
	assert.False(t, StatusInvalid.IsError())
}

func TestPushes(t *testing.T) {
	t.Parallel()
	assert.True(t, IsPush([]byte("sig a b")))
	assert.False(t, IsPush([]byte("sig")))
	assert.False(t, IsPush([]byte("signal")))
	assert.False(t, IsPush([]byte("ok")))

	p, err := ParsePush([]byte("sig events.a hello  big world \r"))
	require.NoError(t, err)
	assert.Equal(t, Push{Channel: "events.a", Payload: "hello  big world "}, p)

	p, err = ParsePush([]byte("sig ch  leading"))
	require.NoError(t, err)
	assert.Equal(t, Push{Channel: "ch", Payload: " leading"}, p)

	p, err = ParsePush([]byte("sig ch  "))
	require.NoError(t, err, "a blank payload: v1.11.0 sends it")
	assert.Equal(t, Push{Channel: "ch", Payload: " "}, p)

	p, err = ParsePush([]byte("sig a\x00b x"))
	require.NoError(t, err, "servers accept NUL in a channel: another client may emit on one")
	assert.Equal(t, Push{Channel: "a\x00b", Payload: "x"}, p)

	for _, bad := range []string{"", "sig", "sig ", "sig ch", "sig ch ", "sig  payload", "ok 1 2",
		"sig a.* x", "sig a.> x", "sig a\tb x"} {
		_, err := ParsePush([]byte(bad))
		assert.ErrorIs(t, err, ErrProtocol, "%q", bad)
	}
}

func TestFenceFromToken(t *testing.T) {
	t.Parallel()
	f, ok := FenceFromToken("0000000000000001ffffffffffffffff")
	assert.True(t, ok)
	assert.Equal(t, uint64(1), f)
	f, ok = FenceFromToken("ffffffffffffffff0000000000000000")
	assert.True(t, ok)
	assert.Equal(t, uint64(1<<64-1), f)
	f, ok = FenceFromToken(tok)
	assert.True(t, ok)
	assert.Equal(t, uint64(0xc40f710173851c80), f)
	for _, bad := range []string{"", "abc", tok + "0", tok[:31], "C40F710173851C807DF83B39EA076AD2", "g40f710173851c807df83b39ea076ad2", "c40f710173851c807df83b39ea076adz"} {
		_, ok := FenceFromToken(bad)
		assert.False(t, ok, bad)
	}
	// Fences order tokens of consecutive grants.
	a, _ := FenceFromToken("00000000000000ff" + "1234567890abcdef")
	b, _ := FenceFromToken("0000000000000100" + "0000000000000000")
	assert.Less(t, a, b)
}
