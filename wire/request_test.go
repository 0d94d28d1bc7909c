package wire

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const tok = "c40f710173851c807df83b39ea076ad2"

func TestAppendToMatchesProtocolTranscript(t *testing.T) {
	t.Parallel()
	// Client bytes of docs/protocol.md §6.10, byte for byte.
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{"lock with default lease", Request{Cmd: CmdLock, Key: "k1", Timeout: 5}, "l\nk1\n5\n"},
		{"try-lock with lease", Request{Cmd: CmdLock, Key: "k2", Timeout: 0, Lease: 7}, "l\nk2\n0 7\n"},
		{"renew with default lease", Request{Cmd: CmdRenew, Key: "k2", Token: tok}, "n\nk2\n" + tok + "\n"},
		{"renew with lease", Request{Cmd: CmdRenew, Key: "k2", Token: tok, Lease: 9}, "n\nk2\n" + tok + " 9\n"},
		{"release", Request{Cmd: CmdRelease, Key: "k2", Token: tok}, "r\nk2\n" + tok + "\n"},
		{"enqueue with default lease", Request{Cmd: CmdEnqueue, Key: "k5"}, "e\nk5\n\n"},
		{"wait try", Request{Cmd: CmdWait, Key: "k5", Timeout: 0}, "w\nk5\n0\n"},
		{"stats", Request{Cmd: CmdStats}, "stats\n_\n\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, string(tt.req.AppendTo(nil)))
		})
	}
}

func TestAppendToEncodesEveryCommand(t *testing.T) {
	t.Parallel()
	tests := []struct {
		req  Request
		want string
	}{
		{Request{Cmd: CmdAuth, Key: "ignored", Arg: "s3cret"}, "auth\n_\ns3cret\n"},
		{Request{Cmd: CmdLock, Key: "k", Timeout: 10, Lease: 30}, "l\nk\n10 30\n"},
		{Request{Cmd: CmdEnqueue, Key: "k", Lease: 30}, "e\nk\n30\n"},
		{Request{Cmd: CmdWait, Key: "k", Timeout: 12}, "w\nk\n12\n"},
		{Request{Cmd: CmdSemLock, Key: "s", Timeout: 0, Limit: 3}, "sl\ns\n0 3\n"},
		{Request{Cmd: CmdSemLock, Key: "s", Timeout: 4, Limit: 3, Lease: 60}, "sl\ns\n4 3 60\n"},
		{Request{Cmd: CmdSemEnqueue, Key: "s", Limit: 2}, "se\ns\n2\n"},
		{Request{Cmd: CmdSemEnqueue, Key: "s", Limit: 2, Lease: 5}, "se\ns\n2 5\n"},
		{Request{Cmd: CmdSemWait, Key: "s", Timeout: 1}, "sw\ns\n1\n"},
		{Request{Cmd: CmdSemRelease, Key: "s", Token: tok}, "sr\ns\n" + tok + "\n"},
		{Request{Cmd: CmdSemRenew, Key: "s", Token: tok, Lease: 40}, "sn\ns\n" + tok + " 40\n"},
		{Request{Cmd: CmdPing, Key: "x"}, "ping\n_\n\n"},
		{Request{Cmd: CmdListen, Key: "events.>"}, "listen\nevents.>\n\n"},
		{Request{Cmd: CmdListen, Key: "events.*", Arg: "workers"}, "listen\nevents.*\nworkers\n"},
		{Request{Cmd: CmdUnlisten, Key: "events.>", Arg: "workers"}, "unlisten\nevents.>\nworkers\n"},
		{Request{Cmd: CmdSignal, Key: "events.a", Arg: " hello  world"}, "signal\nevents.a\n hello  world\n"},
		// Fields a command does not use are not encoded.
		{Request{Cmd: CmdWait, Key: "k", Timeout: 1, Lease: 9, Token: "t", Limit: 4, Arg: "x"}, "w\nk\n1\n"},
		{Request{Cmd: CmdStats, Key: "k", Arg: "x", Timeout: 3}, "stats\n_\n\n"},
	}
	for _, tt := range tests {
		t.Run(tt.req.Cmd.String(), func(t *testing.T) {
			got := tt.req.AppendTo([]byte("prefix|"))
			assert.Equal(t, "prefix|"+tt.want, string(got), "AppendTo must append, not overwrite")
			lines := strings.Split(strings.TrimSuffix(tt.want, "\n"), "\n")
			require.Len(t, lines, 3)
			longest := max(len(lines[0]), len(lines[1]), len(lines[2]))
			assert.Equal(t, longest, tt.req.LineLen())
		})
	}
}

func TestLineLenReportsLongArg(t *testing.T) {
	t.Parallel()
	r := Request{Cmd: CmdSignal, Key: "ch", Arg: strings.Repeat("x", 1000)}
	assert.Equal(t, 1000, r.LineLen())
	r = Request{Cmd: CmdLock, Key: strings.Repeat("k", 300), Timeout: -12, Lease: 1}
	assert.Equal(t, 300, r.LineLen())
	r = Request{Cmd: CmdSemLock, Key: "k", Timeout: MaxSeconds, Limit: 1 << 62, Lease: MaxSeconds}
	assert.Equal(t, len(r.AppendTo(nil))-len("sl\nk\n\n"), r.LineLen())
}

func TestAppendToDoesNotAllocate(t *testing.T) {
	reqs := []Request{
		{Cmd: CmdLock, Key: "orders:42", Timeout: 10, Lease: 30},
		{Cmd: CmdSemLock, Key: "orders:42", Timeout: 10, Limit: 5, Lease: 30},
		{Cmd: CmdRenew, Key: "orders:42", Token: tok, Lease: 30},
		{Cmd: CmdSignal, Key: "events.a", Arg: "payload"},
	}
	buf := make([]byte, 0, 512)
	for _, r := range reqs {
		allocs := testing.AllocsPerRun(100, func() {
			buf = r.AppendTo(buf[:0])
		})
		assert.Zero(t, allocs, "%s", r.Cmd)
	}
}

func TestCommandString(t *testing.T) {
	t.Parallel()
	want := map[Command]string{
		CmdAuth: "auth", CmdLock: "l", CmdEnqueue: "e", CmdWait: "w", CmdRelease: "r", CmdRenew: "n",
		CmdSemLock: "sl", CmdSemEnqueue: "se", CmdSemWait: "sw", CmdSemRelease: "sr", CmdSemRenew: "sn",
		CmdStats: "stats", CmdPing: "ping", CmdListen: "listen", CmdUnlisten: "unlisten", CmdSignal: "signal",
	}
	for c := CmdInvalid + 1; c < numCommands; c++ {
		assert.Equal(t, want[c], c.String())
	}
	assert.Equal(t, "Command(0)", CmdInvalid.String())
	assert.Equal(t, "Command(200)", Command(200).String())
}

func TestBlocking(t *testing.T) {
	t.Parallel()
	assert.True(t, (&Request{Cmd: CmdLock, Timeout: 1}).Blocking())
	assert.False(t, (&Request{Cmd: CmdLock, Timeout: 0}).Blocking())
	assert.True(t, (&Request{Cmd: CmdSemLock, Timeout: 5}).Blocking())
	assert.False(t, (&Request{Cmd: CmdSemLock}).Blocking())
	assert.True(t, (&Request{Cmd: CmdWait}).Blocking())
	assert.True(t, (&Request{Cmd: CmdSemWait, Timeout: 3}).Blocking())
	for _, c := range []Command{CmdAuth, CmdEnqueue, CmdSemEnqueue, CmdRelease, CmdRenew, CmdSemRelease,
		CmdSemRenew, CmdStats, CmdPing, CmdListen, CmdUnlisten, CmdSignal} {
		assert.False(t, (&Request{Cmd: c, Timeout: 5}).Blocking(), "%s", c)
	}
}

func TestLeaseRequestHelpersPickTheNamespace(t *testing.T) {
	enc := func(r Request) string { return string(r.AppendTo(nil)) }
	assert.Equal(t, "r\nk\ntok\n", enc(ReleaseRequest("k", "tok", false)))
	assert.Equal(t, "sr\nk\ntok\n", enc(ReleaseRequest("k", "tok", true)))
	assert.Equal(t, "n\nk\ntok 30\n", enc(RenewRequest("k", "tok", false, 30)))
	assert.Equal(t, "sn\nk\ntok 30\n", enc(RenewRequest("k", "tok", true, 30)))
}

// CountRequests counts the requests a partial write delivered whole.
func TestCountRequestsCountsOnlyWholeRequests(t *testing.T) {
	reqs := []Request{
		{Cmd: CmdLock, Key: "a", Lease: 30},
		{Cmd: CmdRelease, Key: "a", Token: "tok"},
		{Cmd: CmdSignal, Key: "ch", Arg: "x y"},
	}
	var b []byte
	var ends []int
	for i := range reqs {
		b = reqs[i].AppendTo(b)
		ends = append(ends, len(b))
	}
	whole := 0
	for n := 0; n <= len(b); n++ {
		if whole < len(ends) && n == ends[whole] {
			whole++
		}
		assert.Equal(t, whole, CountRequests(b[:n]), "first %d bytes", n)
	}
}
