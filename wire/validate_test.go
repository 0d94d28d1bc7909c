package wire

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestValidateAcceptsGoodRequests(t *testing.T) {
	t.Parallel()
	good := []Request{
		{Cmd: CmdAuth, Arg: "s3cret"},
		{Cmd: CmdAuth, Arg: "  padded is fine, the server trims  "},
		{Cmd: CmdAuth, Arg: strings.Repeat("s", MaxLongArg)},
		{Cmd: CmdStats},
		{Cmd: CmdPing},
		{Cmd: CmdLock, Key: "k", Timeout: 0},
		{Cmd: CmdLock, Key: "k", Timeout: MaxSeconds, Lease: MaxSeconds},
		{Cmd: CmdLock, Key: strings.Repeat("k", MaxLine), Timeout: 1, Lease: 1},
		{Cmd: CmdLock, Key: "non\u00a0breaking", Timeout: 1}, // the server accepts other Unicode whitespace (§3)
		{Cmd: CmdLock, Key: "é/orders:42", Timeout: 1},
		{Cmd: CmdSemLock, Key: "s", Timeout: 2, Limit: 1},
		{Cmd: CmdSemLock, Key: "s", Timeout: 2, Limit: 1 << 40, Lease: 3},
		{Cmd: CmdEnqueue, Key: "k"},
		{Cmd: CmdEnqueue, Key: "k", Lease: 30},
		{Cmd: CmdSemEnqueue, Key: "k", Limit: 2},
		{Cmd: CmdWait, Key: "k"},
		{Cmd: CmdSemWait, Key: "k", Timeout: 5},
		{Cmd: CmdRelease, Key: "k", Token: tok},
		{Cmd: CmdSemRelease, Key: "k", Token: tok},
		{Cmd: CmdRenew, Key: "k", Token: tok, Lease: 9},
		{Cmd: CmdSemRenew, Key: "k", Token: strings.Repeat("t", MaxLine-11), Lease: MaxSeconds},
		{Cmd: CmdListen, Key: ">"},
		{Cmd: CmdListen, Key: "a.*.c.>", Arg: "workers"},
		{Cmd: CmdListen, Key: "*", Arg: "group with inner spaces"},
		{Cmd: CmdUnlisten, Key: "events.a"},
		{Cmd: CmdSignal, Key: "events.a", Arg: "  leading spaces are kept"},
		{Cmd: CmdSignal, Key: "ch", Arg: strings.Repeat("p", MaxLongArg-5-2)},
	}
	for _, r := range good {
		assert.NoError(t, r.Validate(), "%+v", r)
	}
}

func TestValidateRejectsBadRequestsNamingTheArgument(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", MaxLine+1)
	tests := []struct {
		name string
		req  Request
		arg  string
	}{
		{"invalid command", Request{Cmd: CmdInvalid, Key: "k"}, "command"},
		{"out of range command", Request{Cmd: Command(99), Key: "k"}, "command"},
		{"empty key", Request{Cmd: CmdLock}, "key"},
		{"key with space", Request{Cmd: CmdLock, Key: "a b"}, "key"},
		{"key with tab", Request{Cmd: CmdEnqueue, Key: "a\tb"}, "key"},
		{"key with CR", Request{Cmd: CmdWait, Key: "a\r"}, "key"},
		{"key with LF", Request{Cmd: CmdRelease, Key: "a\nb", Token: tok}, "key"},
		{"key with NUL", Request{Cmd: CmdRenew, Key: "a\x00", Token: tok}, "key"},
		{"key too long", Request{Cmd: CmdSemLock, Key: long, Limit: 1}, "key"},
		{"negative timeout", Request{Cmd: CmdLock, Key: "k", Timeout: -1}, "timeout"},
		{"huge timeout", Request{Cmd: CmdWait, Key: "k", Timeout: MaxSeconds + 1}, "timeout"},
		{"negative sem timeout", Request{Cmd: CmdSemLock, Key: "k", Timeout: -5, Limit: 1}, "timeout"},
		{"negative sw timeout", Request{Cmd: CmdSemWait, Key: "k", Timeout: -5}, "timeout"},
		{"negative lease", Request{Cmd: CmdLock, Key: "k", Lease: -1}, "lease"},
		{"huge lease", Request{Cmd: CmdEnqueue, Key: "k", Lease: math.MaxInt64}, "lease"},
		{"negative renew lease", Request{Cmd: CmdRenew, Key: "k", Token: tok, Lease: -3}, "lease"},
		{"zero limit", Request{Cmd: CmdSemLock, Key: "k", Timeout: 1}, "limit"},
		{"negative limit", Request{Cmd: CmdSemEnqueue, Key: "k", Limit: -2}, "limit"},
		{"empty token", Request{Cmd: CmdRelease, Key: "k"}, "token"},
		{"token with space", Request{Cmd: CmdRenew, Key: "k", Token: "a b"}, "token"},
		{"token with NBSP", Request{Cmd: CmdSemRenew, Key: "k", Token: "a\u00a0b"}, "token"},
		{"token with LF", Request{Cmd: CmdSemRelease, Key: "k", Token: "a\n"}, "token"},
		{"token with NUL", Request{Cmd: CmdRelease, Key: "k", Token: "\x00"}, "token"},
		{"token with a control byte", Request{Cmd: CmdRelease, Key: "k", Token: "a\x1bb"}, "token"},
		{"token with DEL", Request{Cmd: CmdSemRenew, Key: "k", Token: "a\x7f", Lease: 5}, "token"},
		{"token too long", Request{Cmd: CmdRelease, Key: "k", Token: long}, "token"},
		{"renew line too long", Request{Cmd: CmdRenew, Key: "k", Token: strings.Repeat("t", MaxLine-2), Lease: 33}, "token"},
		{"empty secret", Request{Cmd: CmdAuth}, "secret"},
		{"blank secret", Request{Cmd: CmdAuth, Arg: " \t "}, "secret"},
		{"secret with LF", Request{Cmd: CmdAuth, Arg: "a\nb"}, "secret"},
		{"secret with CR", Request{Cmd: CmdAuth, Arg: "ab\r"}, "secret"},
		{"secret too long", Request{Cmd: CmdAuth, Arg: strings.Repeat("s", MaxLongArg+1)}, "secret"},
		{"empty pattern", Request{Cmd: CmdListen}, "pattern"},
		{"pattern with space", Request{Cmd: CmdListen, Key: "a. b"}, "pattern"},
		{"partial wildcard", Request{Cmd: CmdListen, Key: "a.b*"}, "pattern"},
		{"partial tail wildcard", Request{Cmd: CmdListen, Key: "a.>b"}, "pattern"},
		{"tail wildcard not last", Request{Cmd: CmdUnlisten, Key: "a.>.b"}, "pattern"},
		{"empty inner token", Request{Cmd: CmdListen, Key: "a..b"}, "pattern"},
		{"empty first token", Request{Cmd: CmdListen, Key: ".a"}, "pattern"},
		{"empty last token", Request{Cmd: CmdListen, Key: "a."}, "pattern"},
		{"lone dot", Request{Cmd: CmdListen, Key: "."}, "pattern"},
		{"group with LF", Request{Cmd: CmdListen, Key: "a", Arg: "g\n"}, "group"},
		{"group with NUL", Request{Cmd: CmdListen, Key: "a", Arg: "g\x00"}, "group"},
		{"group with leading space", Request{Cmd: CmdUnlisten, Key: "a", Arg: " g"}, "group"},
		{"group with trailing tab", Request{Cmd: CmdListen, Key: "a", Arg: "g\t"}, "group"},
		{"blank group", Request{Cmd: CmdListen, Key: "a", Arg: "   "}, "group"},
		{"group too long", Request{Cmd: CmdListen, Key: "a", Arg: long}, "group"},
		{"empty channel", Request{Cmd: CmdSignal, Arg: "p"}, "channel"},
		{"channel with star", Request{Cmd: CmdSignal, Key: "a.*", Arg: "p"}, "channel"},
		{"channel with gt", Request{Cmd: CmdSignal, Key: "a>", Arg: "p"}, "channel"},
		{"channel with space", Request{Cmd: CmdSignal, Key: "a b", Arg: "p"}, "channel"},
		{"empty payload", Request{Cmd: CmdSignal, Key: "a"}, "payload"},
		{"blank payload", Request{Cmd: CmdSignal, Key: "a", Arg: " \t\u00a0"}, "payload"},
		{"payload with LF", Request{Cmd: CmdSignal, Key: "a", Arg: "x\ny"}, "payload"},
		{"payload with CR", Request{Cmd: CmdSignal, Key: "a", Arg: "x\r"}, "payload"},
		{"payload with NUL", Request{Cmd: CmdSignal, Key: "a", Arg: "x\x00"}, "payload"},
		{"payload too long", Request{Cmd: CmdSignal, Key: "ch", Arg: strings.Repeat("p", MaxLongArg-5-2+1)}, "payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.Validate()
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidArgument)
			var ae *ArgError
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, tt.arg, ae.Arg)
			assert.True(t, strings.HasPrefix(err.Error(), "dflock: invalid "+tt.arg), err.Error())
			assert.LessOrEqual(t, len(ae.Value), keepMax, "errors must not retain huge values")
		})
	}
}

func TestValidateSecretNeverEchoesTheValue(t *testing.T) {
	t.Parallel()
	err := (&Request{Cmd: CmdAuth, Arg: "hunter2\n"}).Validate()
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "hunter2")
}

func TestStandaloneValidators(t *testing.T) {
	t.Parallel()
	assert.NoError(t, ValidateKey("key", "k"))
	var ae *ArgError
	require.ErrorAs(t, ValidateKey("channel", ""), &ae)
	assert.Equal(t, "channel", ae.Arg)

	assert.NoError(t, ValidatePattern("a.*.>"))
	assert.NoError(t, ValidateChannel("a.b.c"))
	assert.NoError(t, ValidateChannel("a..b"), "the server accepts empty channel tokens")
	assert.NoError(t, ValidateToken(tok))
	assert.NoError(t, ValidatePayload("a", "x"))
	assert.NoError(t, ValidateGroup(""))
	assert.NoError(t, ValidateGroup("g"))
	assert.Error(t, ValidateToken(""))
}

func TestArgErrorMessage(t *testing.T) {
	t.Parallel()
	err := ValidateKey("key", "a b")
	assert.Equal(t, `dflock: invalid key "a b": contains space, TAB, CR, LF or NUL`, err.Error())
	err = (&Request{Cmd: CmdLock, Key: "k", Timeout: -3}).Validate()
	assert.Equal(t, `dflock: invalid timeout "-3": must be between 0 and 9223372036 seconds`, err.Error())
	err = ValidateKey("key", "")
	assert.Equal(t, "dflock: invalid key: must not be empty", err.Error())
}

func TestQuoteTrunc(t *testing.T) {
	t.Parallel()
	assert.Equal(t, `"a\nb"`, quoteTrunc("a\nb"))
	s := quoteTrunc(strings.Repeat("x", 1000))
	assert.Equal(t, `"`+strings.Repeat("x", displayMax)+`"...`, s)
	// Truncation never splits a UTF-8 sequence into garbage.
	s = quoteTrunc(strings.Repeat("é", 100))
	assert.Equal(t, `"`+strings.Repeat("é", displayMax/2)+`"...`, s)
	s = quoteTrunc("x" + strings.Repeat("é", 100))
	assert.Equal(t, `"x`+strings.Repeat("é", (displayMax-1)/2)+`"...`, s)
}

func TestSecondsRoundsUp(t *testing.T) {
	t.Parallel()
	tests := []struct {
		d    time.Duration
		want int64
	}{
		{0, 0},
		{time.Nanosecond, 1},
		{999 * time.Millisecond, 1},
		{time.Second, 1},
		{time.Second + time.Nanosecond, 2},
		{90 * time.Second, 90},
		{-time.Nanosecond, -1},
		{-1500 * time.Millisecond, -2},
		{math.MaxInt64, MaxSeconds},
		{math.MinInt64, -MaxSeconds - 1},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, Seconds(tt.d), "%v", tt.d)
	}
	// The rounding exists so that a negative duration stays invalid.
	assert.Error(t, (&Request{Cmd: CmdLock, Key: "k", Timeout: Seconds(-time.Nanosecond)}).Validate())
}

func TestArgErrorIsOnlyInvalidArgument(t *testing.T) {
	t.Parallel()
	err := ValidateKey("key", "")
	assert.False(t, errors.Is(err, ErrProtocol))
	assert.False(t, errors.Is(err, ErrConnBroken))
}
