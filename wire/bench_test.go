package wire

import (
	"bufio"
	"net"
	"testing"
)

var (
	benchBuf   = make([]byte, 0, 256)
	benchReply Reply
	benchBool  bool
)

func BenchmarkAppendLock(b *testing.B) {
	r := Request{Cmd: CmdLock, Key: "orders:42", Timeout: 10, Lease: 30}
	b.ReportAllocs()
	for b.Loop() {
		benchBuf = r.AppendTo(benchBuf[:0])
	}
}

func BenchmarkAppendRenew(b *testing.B) {
	r := Request{Cmd: CmdRenew, Key: "orders:42", Token: tok, Lease: 30}
	b.ReportAllocs()
	for b.Loop() {
		benchBuf = r.AppendTo(benchBuf[:0])
	}
}

func benchParse(b *testing.B, line string, cmd Command) {
	l := []byte(line)
	b.ReportAllocs()
	for b.Loop() {
		rep, err := ParseReply(l, cmd)
		if err != nil {
			b.Fatal(err)
		}
		benchReply = rep
	}
}

func BenchmarkParseReplyGrant(b *testing.B) { benchParse(b, "ok "+tok+" 33", CmdLock) }
func BenchmarkParseReplyRenew(b *testing.B) { benchParse(b, "ok 33", CmdRenew) }
func BenchmarkParseReplyOK(b *testing.B)    { benchParse(b, "ok", CmdRelease) }

func BenchmarkMatchPattern(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		benchBool = MatchPattern("orders.*.created.>", "orders.eu.created.2026.05")
	}
}

// BenchmarkConnPipelined measures one renew round trip over loopback TCP,
// pipelined in batches of 16 the way the control lane sends them. The peer
// answers every request with `ok 33`.
func BenchmarkConnPipelined(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	peerDone := make(chan struct{})
	go func() {
		defer close(peerDone)
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		br := bufio.NewReaderSize(s, 64<<10)
		bw := bufio.NewWriterSize(s, 64<<10)
		lines := 0
		for {
			if _, err := br.ReadSlice('\n'); err != nil {
				return
			}
			if lines++; lines%3 == 0 {
				_, _ = bw.WriteString("ok 33\n")
			}
			if br.Buffered() == 0 {
				if bw.Flush() != nil {
					return
				}
			}
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	c := NewConn(nc, ConnOptions{})
	const batch = 16
	reqs := make([]Request, batch)
	for i := range reqs {
		reqs[i] = Request{Cmd: CmdRenew, Key: "orders:42", Token: tok, Lease: 33}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		n := min(batch, b.N-i)
		if err := c.WriteRequests(reqs[:n]...); err != nil {
			b.Fatal(err)
		}
		for range n {
			rep, err := c.ReadReply(CmdRenew)
			if err != nil {
				b.Fatal(err)
			}
			benchReply = rep
		}
	}
	b.StopTimer()
	_ = c.Close()
	<-peerDone
}
