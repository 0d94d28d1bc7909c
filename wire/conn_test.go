package wire

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// transports runs a test over net.Pipe and over loopback TCP.
var transports = []struct {
	name string
	dial func(*testing.T, ConnOptions) (*Conn, net.Conn)
}{
	{"pipe", pipeConn},
	{"tcp", tcpConn},
}

// guard bounds how long a test waits for something that must happen
// promptly; it is a failure timeout, not synchronisation.
const guard = 10 * time.Second

func TestConnReassemblesRepliesSplitAcrossReads(t *testing.T) {
	t.Parallel()
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			c, srv := tr.dial(t, ConnOptions{})
			feed(t, srv, false,
				"o", "k "+tok[:10], tok[10:]+" 3", "3\n",
				// A multi-byte UTF-8 character split between two reads.
				`ok {"key":"caf`+"\xc3", "\xa9"+`"}`+"\n",
			)
			rep, err := c.ReadReply(CmdLock)
			require.NoError(t, err)
			assert.Equal(t, Reply{Status: StatusOK, Word: "ok", Token: tok, Lease: 33}, rep)
			rep, err = c.ReadReply(CmdStats)
			require.NoError(t, err)
			assert.Equal(t, `{"key":"café"}`, rep.Text)
		})
	}
}

func TestConnReadsSeveralRepliesFromOneRead(t *testing.T) {
	t.Parallel()
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			c, srv := tr.dial(t, ConnOptions{})
			feed(t, srv, false, "ok\nok 33\ntimeout\nqueued\nacquired "+tok+" 9\n")
			want := []struct {
				cmd Command
				st  Status
			}{{CmdRelease, StatusOK}, {CmdRenew, StatusOK}, {CmdLock, StatusTimeout}, {CmdEnqueue, StatusQueued}, {CmdEnqueue, StatusAcquired}}
			for _, w := range want {
				rep, err := c.ReadReply(w.cmd)
				require.NoError(t, err)
				assert.Equal(t, w.st, rep.Status)
			}
			assert.NoError(t, c.Err())
		})
	}
}

func TestConnAcceptsCRLF(t *testing.T) {
	t.Parallel()
	c, srv := pipeConn(t, ConnOptions{})
	feed(t, srv, false, "ok 33\r\n", "ok\r\r\n", "sig a b\r\n")
	rep, err := c.ReadReply(CmdRenew)
	require.NoError(t, err)
	assert.Equal(t, int64(33), rep.Lease)
	line, err := c.ReadLine()
	require.NoError(t, err)
	assert.Equal(t, "ok", string(line))
	line, err = c.ReadLine()
	require.NoError(t, err)
	assert.Equal(t, "sig a b", string(line), "ReadLine returns push lines too")
}

func TestConnReadReplySkipsPushes(t *testing.T) {
	t.Parallel()
	c, srv := pipeConn(t, ConnOptions{})
	feed(t, srv, false, "sig a b\nsig malformed\nok\n")
	rep, err := c.ReadReply(CmdPing)
	require.NoError(t, err)
	assert.Equal(t, StatusOK, rep.Status)
}

func requireBroken(t *testing.T, c *Conn, err error, cause error) {
	t.Helper()
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrConnBroken)
	if cause != nil {
		assert.ErrorIs(t, err, cause)
	}
	assert.Equal(t, err, c.Err())
	// Broken is forever, for every operation, with the same error.
	_, err2 := c.ReadReply(CmdPing)
	assert.Equal(t, err, err2)
	_, err2 = c.ReadLine()
	assert.Equal(t, err, err2)
	assert.Equal(t, err, c.WriteRequests(Request{Cmd: CmdPing}))
	n, err2 := c.WriteRaw([]byte("ping\n_\n\n"))
	assert.Equal(t, err, err2)
	assert.Zero(t, n)
}

func TestConnOverlongLineBreaksConnection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		max     int
		chunks  []string
		okLines int
	}{
		{"short cap", 16, []string{strings.Repeat("a", 16) + "\n" + strings.Repeat("b", 17) + "\n"}, 1},
		{"CR counts", 16, []string{"ok " + strings.Repeat("a", 13) + "\r\n"}, 0},
		// Detected once the read buffer is full, not before: a line under
		// the buffer size without '\n' simply waits for more bytes.
		{"no newline at all", 16, []string{strings.Repeat("c", readBufSize+1)}, 0},
		{"beyond the read buffer", 10000, []string{strings.Repeat("d", 10000) + "\n", strings.Repeat("e", 6000), strings.Repeat("e", 4001) + "\n"}, 1},
		{"default cap", 0, []string{strings.Repeat("f", DefaultMaxLine+1) + "\n"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, srv := pipeConn(t, ConnOptions{MaxLine: tt.max})
			feed(t, srv, false, tt.chunks...)
			for range tt.okLines {
				line, err := c.ReadLine()
				require.NoError(t, err)
				assert.Equal(t, tt.max, len(line))
			}
			_, err := c.ReadLine()
			requireBroken(t, c, err, ErrProtocol)
			require.ErrorIs(t, err, ErrLineTooLong)
			limit := tt.max
			if limit == 0 {
				limit = DefaultMaxLine
			}
			assert.LessOrEqual(t, cap(c.long), limit, "never hold more than the cap")
		})
	}
}

func TestConnLineAtCapAcrossManyReads(t *testing.T) {
	t.Parallel()
	const capacity = 3*readBufSize + 100
	c, srv := pipeConn(t, ConnOptions{MaxLine: capacity})
	// "é" split at every chunk boundary on purpose: odd chunk sizes.
	body := "ok " + strings.Repeat("é", (capacity-3)/2)
	var chunks []string
	for rest := body + "\n"; len(rest) > 0; {
		n := min(777, len(rest))
		chunks = append(chunks, rest[:n])
		rest = rest[n:]
	}
	feed(t, srv, false, append(chunks, "ok\n")...)
	rep, err := c.ReadReply(CmdStats)
	require.NoError(t, err)
	assert.Equal(t, body[3:], rep.Text)
	assert.LessOrEqual(t, cap(c.long), capacity)
	rep, err = c.ReadReply(CmdPing)
	require.NoError(t, err)
	assert.Equal(t, StatusOK, rep.Status)
}

// A huge cap (Pool.Query allows up to 64 MiB for stats) costs memory only
// for the lines actually read: the line buffer grows with the line, never to
// the cap up front.
func TestConnHugeCapGrowsWithTheLine(t *testing.T) {
	t.Parallel()
	const capacity = 64 << 20
	c, srv := pipeConn(t, ConnOptions{MaxLine: capacity})
	const n = 100 << 10
	feed(t, srv, false, "ok "+strings.Repeat("x", n)+"\n")
	rep, err := c.ReadReply(CmdStats)
	require.NoError(t, err)
	assert.Len(t, rep.Text, n)
	assert.LessOrEqual(t, cap(c.long), 2*(n+3), "the buffer is sized by the line, not by the cap")
}

// Only ErrLineTooLong marks the over-long line; other protocol violations
// do not match it.
func TestOnlyOverlongLinesMatchErrLineTooLong(t *testing.T) {
	t.Parallel()
	_, err := ParseReply([]byte("bogus"), CmdPing)
	require.ErrorIs(t, err, ErrProtocol)
	assert.NotErrorIs(t, err, ErrLineTooLong)
}

func TestConnReleasesHugeLineBuffer(t *testing.T) {
	t.Parallel()
	c, srv := pipeConn(t, ConnOptions{})
	feed(t, srv, false, "ok "+strings.Repeat("x", 200<<10)+"\n", "ok\n")
	_, err := c.ReadReply(CmdStats)
	require.NoError(t, err)
	_, err = c.ReadReply(CmdPing)
	require.NoError(t, err)
	assert.LessOrEqual(t, cap(c.long), keepBufSize)
}

func TestConnEOF(t *testing.T) {
	t.Parallel()
	for _, tr := range transports {
		t.Run(tr.name+" mid-line", func(t *testing.T) {
			t.Parallel()
			c, srv := tr.dial(t, ConnOptions{})
			feed(t, srv, true, "ok 3")
			_, err := c.ReadReply(CmdRenew)
			requireBroken(t, c, err, io.ErrUnexpectedEOF)
		})
		t.Run(tr.name+" between lines", func(t *testing.T) {
			t.Parallel()
			c, srv := tr.dial(t, ConnOptions{})
			feed(t, srv, true, "ok\n")
			_, err := c.ReadReply(CmdPing)
			require.NoError(t, err)
			_, err = c.ReadReply(CmdPing)
			requireBroken(t, c, err, io.EOF)
		})
	}
}

func TestConnMalformedReplyBreaksConnection(t *testing.T) {
	t.Parallel()
	c, srv := pipeConn(t, ConnOptions{})
	feed(t, srv, false, "acquired "+tok+" 33\nok\n")
	_, err := c.ReadReply(CmdLock) // acquired is never an answer to l
	requireBroken(t, c, err, ErrProtocol)
	assert.Contains(t, err.Error(), "dflock: connection broken: protocol violation")
}

// answerer is a fake server that reads requests and answers each with reply
// (or not at all when reply is empty), reporting each request it read.
func answerer(t *testing.T, srv net.Conn, reply string) <-chan [3]string {
	t.Helper()
	got := make(chan [3]string, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(got)
		br := bufio.NewReader(srv)
		for {
			req, err := readRequest(br)
			if err != nil {
				return
			}
			got <- req
			if reply != "" {
				if _, err := srv.Write([]byte(reply)); err != nil {
					return
				}
			}
		}
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return got
}

func TestConnWriteRequestsUsesOneWrite(t *testing.T) {
	t.Parallel()
	sc := &scriptConn{record: true}
	c := NewConn(sc, ConnOptions{})
	require.NoError(t, c.WriteRequests(
		Request{Cmd: CmdAuth, Arg: "s3cret"},
		Request{Cmd: CmdLock, Key: "k1", Timeout: 5},
		Request{Cmd: CmdStats},
	))
	require.Len(t, sc.writes, 1)
	assert.Equal(t, "auth\n_\ns3cret\nl\nk1\n5\nstats\n_\n\n", string(sc.writes[0]))
	n, err := c.WriteRaw([]byte("ping\n_\n\n"))
	require.NoError(t, err)
	assert.Equal(t, len("ping\n_\n\n"), n)
	require.Len(t, sc.writes, 2)
	assert.Equal(t, "ping\n_\n\n", string(sc.writes[1]))

	// A huge write does not leave a huge buffer behind.
	require.NoError(t, c.WriteRequests(Request{Cmd: CmdSignal, Key: "c", Arg: strings.Repeat("p", 100<<10)}))
	assert.LessOrEqual(t, cap(c.wbuf), keepBufSize)
}

func TestConnSteadyStateAllocations(t *testing.T) {
	sc := &scriptConn{loop: true, chunks: [][]byte{[]byte("ok 33\nok " + tok + " 33\nsig a b\n")}}
	c := NewConn(sc, ConnOptions{})
	reqs := []Request{{Cmd: CmdRenew, Key: "k", Token: tok, Lease: 33}, {Cmd: CmdLock, Key: "k", Timeout: 0, Lease: 33}}
	allocs := testing.AllocsPerRun(200, func() {
		_ = c.WriteRequests(reqs...)
	})
	assert.Zero(t, allocs, "WriteRequests")
	allocs = testing.AllocsPerRun(200, func() {
		_ = c.WriteRequests(reqs[0])
	})
	assert.Zero(t, allocs, "WriteRequests with one request")
	allocs = testing.AllocsPerRun(200, func() {
		if _, err := c.ReadReply(CmdRenew); err != nil {
			panic(err)
		}
		if _, err := c.ReadReply(CmdLock); err != nil {
			panic(err)
		}
	})
	assert.LessOrEqual(t, allocs, 1.0, "ReadReply: only the grant's token")
	require.NoError(t, c.Err())
}

func TestConnWriteFailureBreaks(t *testing.T) {
	t.Parallel()
	c, srv := pipeConn(t, ConnOptions{})
	require.NoError(t, srv.Close())
	err := c.WriteRequests(Request{Cmd: CmdPing})
	requireBroken(t, c, err, io.ErrClosedPipe)
}

func TestConnBreakUnblocksTheOtherSide(t *testing.T) {
	t.Parallel()
	c, _ := pipeConn(t, ConnOptions{})
	res := make(chan error, 1)
	go func() {
		_, err := c.ReadReply(CmdPing)
		res <- err
	}()
	why := errors.New("writer saw a failure")
	c.fail(why)
	select {
	case err := <-res:
		requireBroken(t, c, err, why)
	case <-time.After(guard):
		t.Fatal("reader still blocked after the Conn broke")
	}
}

func TestConnClose(t *testing.T) {
	t.Parallel()
	c, _ := pipeConn(t, ConnOptions{})
	require.NoError(t, c.Close())
	assert.NoError(t, c.Close(), "Close is idempotent")
	requireBroken(t, c, c.Err(), net.ErrClosed)
}

func TestConnConcurrentReaderAndWriter(t *testing.T) {
	t.Parallel()
	c, srv := tcpConn(t, ConnOptions{})
	reqs := answerer(t, srv, "ok 33\n")
	go func() {
		for range reqs { //nolint:revive // drain
		}
	}()
	const n = 500
	var wg sync.WaitGroup
	wg.Add(3)
	errs := make(chan error, 3)
	go func() {
		defer wg.Done()
		for i := 0; i < n; i += 10 {
			batch := make([]Request, 10)
			for j := range batch {
				batch[j] = Request{Cmd: CmdRenew, Key: "k", Token: tok, Lease: 33}
			}
			if err := c.WriteRequests(batch...); err != nil {
				errs <- err
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for range n {
			rep, err := c.ReadReply(CmdRenew)
			if err != nil {
				errs <- err
				return
			}
			if rep.Lease != 33 {
				errs <- errors.New("wrong reply")
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for range n {
			if err := c.Err(); err != nil {
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// BytesRead counts every byte read from the network, BytesConsumed those of
// whole lines read (pushes skipped by ReadReply and lines longer than the
// read buffer included): their difference is a line still arriving.
func TestConnCountsBytesReadAndConsumed(t *testing.T) {
	t.Parallel()
	c, srv := tcpConn(t, ConnOptions{MaxLine: 1 << 20})
	long := "ok " + strings.Repeat("x", 3*readBufSize) + "\n"
	feed(t, srv, false, "sig a.b 1\nok\n", long)
	r, err := c.ReadReply(CmdPing)
	require.NoError(t, err)
	require.Equal(t, StatusOK, r.Status)
	_, err = c.ReadReply(CmdStats)
	require.NoError(t, err)
	whole := int64(len("sig a.b 1\nok\n") + len(long))
	assert.Equal(t, whole, c.BytesConsumed())
	assert.Equal(t, whole, c.BytesRead())

	// A line still arriving: read, not consumed.
	done := make(chan error, 1)
	go func() { _, err := c.ReadReply(CmdRenew); done <- err }()
	feed(t, srv, false, "ok 3")
	require.Eventually(t, func() bool { return c.BytesRead() == whole+4 }, guard, time.Millisecond)
	assert.Equal(t, whole, c.BytesConsumed())
	feed(t, srv, false, "3\r\n")
	require.NoError(t, <-done)
	assert.Equal(t, whole+7, c.BytesConsumed())
	assert.Equal(t, c.BytesRead(), c.BytesConsumed())
}

// After EndWrites every write fails (matching ErrConnBroken) without
// breaking the Conn, and so does a write that was under way: the replies
// already due are still read.
func TestConnEndWritesKeepsReading(t *testing.T) {
	t.Parallel()
	c, peer := pipeConn(t, ConnOptions{})
	// A write under way: nobody reads the pipe's other end.
	wrote := make(chan error, 1)
	go func() {
		_, err := c.WriteRaw([]byte("ping\n_\n\n"))
		wrote <- err
	}()
	time.Sleep(10 * time.Millisecond) // (let it block; if it has not begun, it fails below all the same)
	c.EndWrites()
	require.NoError(t, c.SetWriteDeadline(aLongTimeAgo))
	select {
	case err := <-wrote:
		require.ErrorIs(t, err, ErrConnBroken)
	case <-time.After(guard):
		t.Fatal("the write under way did not fail at its deadline")
	}
	n, err := c.WriteRaw([]byte("ping\n_\n\n"))
	require.ErrorIs(t, err, ErrConnBroken, "a write after EndWrites")
	require.Zero(t, n)
	require.NoError(t, c.Err(), "writes ended, the Conn is not broken")

	go func() { _, _ = io.WriteString(peer, "ok\n") }()
	line, err := c.ReadLine()
	require.NoError(t, err, "reading goes on")
	require.Equal(t, "ok", string(line))
}
