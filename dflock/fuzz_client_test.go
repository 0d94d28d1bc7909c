package dflock

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// The whole client (dflock → pool/renew → wire) against a server whose every
// answer — to the handshake too — the fuzz input chooses: valid replies,
// replies of the wrong kind, error words, surplus and duplicated lines,
// pushes, long, partial and odd lines, closes and stalls. Up to six
// operations, each under a 300 ms context, then Close. Invariants: no panic;
// every call returns within its context (plus a margin for a loaded
// machine); every error matches a documented sentinel; a lease held (Err
// nil) has a token the server granted for its key in a well-formed grant —
// or is reported lost within the round trip that docs/leases.md allows a
// surplus line behind pipelined requests; Close returns; no connection
// takes a request written after a reply it could not make sense of; no
// goroutine is left. (Written by review "fuzz"; the native fuzzer manages
// some 20 inputs a second here, one Client each.)
//
//	go test -run '^$' -fuzz '^FuzzClientAgainstHostileServer$' -fuzztime 2m -parallel 1 ./dflock

// fuzzedServer answers every request with bytes chosen by the fuzz input.
type fuzzedServer struct {
	mu      sync.Mutex
	script  []byte
	tokN    int
	granted map[string]string // token -> key, for well-formed grants to an acquire of that key
	wrong   map[string]bool   // tokens sent in grant-shaped lines that were no grant
	// per connection: whether a malformed/extra reply was written on it,
	// and what requests arrived after it.
	tainted  map[net.Conn]string
	reuse    []string
	counts   map[string]int
	stalls   []chan struct{}
	closedCh chan struct{}
	verbose  bool
	log      []string
}

func (s *fuzzedServer) next() (byte, bool) {
	if len(s.script) == 0 {
		return 0, false
	}
	b := s.script[0]
	s.script = s.script[1:]
	return b, true
}

func isAcquireCmd(cmd string) bool {
	switch cmd {
	case "l", "sl", "w", "sw", "e", "se":
		return true
	}
	return false
}

func (s *fuzzedServer) tok() string {
	s.tokN++
	return fmt.Sprintf("%032x", s.tokN)
}

// valid is the well-formed reply to req.
func (s *fuzzedServer) valid(req [3]string) string {
	switch req[0] {
	case "l", "sl", "w", "sw":
		t := s.tok()
		s.granted[t] = req[1]
		return "ok " + t + " 2"
	case "e", "se":
		t := s.tok()
		s.granted[t] = req[1]
		return "acquired " + t + " 2"
	case "n", "sn":
		return "ok 2"
	case "stats":
		return `ok {"connections":1,"locks":[],"semaphores":[],"idle_locks":[],"idle_semaphores":[]}`
	case "signal":
		return "ok 1"
	}
	return "ok"
}

var fuzzErrWords = []string{"error", "error_max_locks", "error_max_waiters", "error_limit_mismatch",
	"error_already_enqueued", "error_not_enqueued", "error_lease_expired", "error_draining", "error_auth",
	"error_not_leader", "error_zzz"}

func (s *fuzzedServer) answer(nc net.Conn, req [3]string, late bool) (keep, tainted bool) {
	s.mu.Lock()
	s.counts[req[0]]++
	if why, ok := s.tainted[nc]; ok && late {
		s.reuse = append(s.reuse, fmt.Sprintf("%q after %s", req[0]+" "+req[1]+" "+req[2], why))
	}
	b, ok := s.next()
	var out string
	closeAfter := false
	taint := ""
	var stall chan struct{}
	var pause time.Duration
	if !ok {
		out = s.valid(req) + "\n"
	} else {
		switch b % 17 {
		case 0, 1, 2:
			out = s.valid(req) + "\n"
		case 3:
			out = "timeout\n"
		case 4:
			out = "queued\n"
		case 5:
			x, _ := s.next()
			out = fuzzErrWords[int(x)%len(fuzzErrWords)] + "\n"
		case 6: // a reply for another kind of request
			x, _ := s.next()
			var kinds []string
			if isAcquireCmd(req[0]) {
				kinds = []string{"ok", "ok 2", `ok {"connections":1}`}
			} else {
				kinds = []string{"acquired " + s.tok() + " 2", "queued", "timeout"}
			}
			out = kinds[int(x)%len(kinds)] + "\n"
			if strings.Count(out, " ") == 2 {
				s.wrong[strings.Fields(out)[1]] = true
			}
			taint = "wrong-kind reply " + strconv.Quote(out)
		case 7: // valid plus a surplus line
			out = s.valid(req) + "\n" + "ok " + s.tok() + " 2\n"
			s.wrong[strings.Fields(out)[len(strings.Fields(out))-2]] = true
			taint = "surplus line"
		case 8: // push, then valid
			out = "sig ch.x hello\n" + s.valid(req) + "\n"
		case 9: // long line (within the client's 16 MiB lane cap)
			t := strings.Repeat("x", 70000)
			out = "ok " + t + " 2\n"
			s.wrong[t] = true
		case 10: // partial line then close
			out = "ok 12"
			closeAfter = true
		case 11: // close with no reply
			closeAfter = true
		case 12: // short stall then valid
			x, _ := s.next()
			pause = time.Duration(x%40) * 10 * time.Millisecond
			out = s.valid(req) + "\n"
		case 13: // stall until the connection closes
			stall = make(chan struct{})
			s.stalls = append(s.stalls, stall)
		case 14: // duplicated reply
			v := s.valid(req)
			out = v + "\n" + v + "\n"
			taint = "duplicated reply"
		case 15: // raw bytes from the input
			n, _ := s.next()
			n %= 24
			var raw []byte
			for range n {
				c, ok := s.next()
				if !ok {
					break
				}
				raw = append(raw, c)
			}
			out = string(raw) + "\n"
			_ = raw
		case 16: // odd grant fields
			x, _ := s.next()
			odd := []string{"ok %s -5", "ok %s abc", "ok %s 99999999999999", "ok %s 0", "ok %s", "ok %s 2 77", "ok  %s 2", "ok %s 2 ", "acquired %s 2 9 9"}
			t := s.tok()
			out = fmt.Sprintf(odd[int(x)%len(odd)], t) + "\n"
			s.wrong[t] = true
			if (int(x)%len(odd) == 5 || int(x)%len(odd) == 7) && isAcquireCmd(req[0]) { // tolerated 4th field: a grant
				delete(s.wrong, t)
				s.granted[t] = req[1]
			}
			// Framed but untrackable grants are given back on the
			// connection they came on (docs/leases.md): no taint.
		}
	}
	if taint != "" {
		s.tainted[nc] = taint + " to " + req[0]
	}
	closed := s.closedCh
	if s.verbose {
		o := out
		if len(o) > 80 {
			o = o[:80] + "..."
		}
		s.log = append(s.log, time.Now().Format("05.000")+fmt.Sprintf(" conn %p: %q -> %q close=%v stall=%v pause=%v", nc, req, o, closeAfter, stall != nil, pause))
	}
	s.mu.Unlock()
	if pause > 0 {
		select {
		case <-time.After(pause):
		case <-closed:
		}
	}
	if stall != nil {
		// Wait for the peer to close: a read returns then.
		buf := make([]byte, 1)
		for {
			if _, err := nc.Read(buf); err != nil {
				return false, false
			}
		}
	}
	if out != "" {
		if _, err := nc.Write([]byte(out)); err != nil {
			return false, false
		}
	}
	return !closeAfter, taint != ""
}

// serve is testutil.AnswerRequests with a barrier: after a tainted reply
// it waits a second (a loaded one-CPU machine may write a request queued
// before the reply that late), then takes every line that has arrived by
// then as sent before the client could have seen the reply; a request made
// of lines read later is "late" (the connection was reused).
func (s *fuzzedServer) serve(nc net.Conn) {
	br := bufio.NewReader(nc)
	var pending []string
	partial := ""
	late := false
	readLine := func() (string, bool, error) {
		if len(pending) > 0 {
			l := pending[0]
			pending = pending[1:]
			return l, false, nil
		}
		l, err := br.ReadString('\n')
		if err != nil {
			return "", false, err
		}
		l = partial + l
		partial = ""
		return strings.TrimRight(l, "\r\n"), true, nil
	}
	for {
		var req [3]string
		isLate := false
		for i := range req {
			l, fresh, err := readLine()
			if err != nil {
				return
			}
			req[i] = l
			isLate = isLate || (fresh && late)
		}
		keep, tainted := s.answer(nc, req, isLate)
		if !keep {
			return
		}
		if tainted && !late {
			select {
			case <-time.After(time.Second):
			case <-s.closedCh:
			}
			_ = nc.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					partial += l
					break
				}
				pending = append(pending, strings.TrimRight(partial+l, "\r\n"))
				partial = ""
			}
			_ = nc.SetReadDeadline(time.Time{})
			late = true
		}
	}
}

var fuzzSentinels = []error{ErrNotAcquired, ErrTimeout, ErrLockLost, ErrReleased, ErrClosed, ErrAuth,
	ErrServerUnavailable, ErrMaxLocks, ErrMaxWaiters, ErrLimitMismatch, ErrLeaseExpired, ErrDraining,
	ErrNotSupported, ErrRefused, ErrTicketDone, wire.ErrProtocol, wire.ErrConnBroken,
	context.DeadlineExceeded, context.Canceled}

func documentedErr(err error) bool {
	for _, s := range fuzzSentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

type fuzzLease interface {
	Token() string
	Key() string
	Err() error
	Release(context.Context) error
	Renew(context.Context) error
}

func FuzzClientAgainstHostileServer(f *testing.F) {
	f.Add([]byte{3, 0, 2, 7, 0, 0, 0, 0})
	f.Add([]byte{4, 0, 3, 2, 7, 7, 7, 7, 7, 7, 7})
	f.Add([]byte{4, 1, 4, 5, 6, 0, 8, 0, 8, 0, 9})
	f.Add([]byte{2, 0, 8, 0, 14, 14, 0})
	f.Add([]byte{3, 6, 5, 7, 0, 0, 8, 8, 0, 0})
	f.Add([]byte{3, 0, 2, 3, 0, 6, 2, 16, 1, 16, 5})
	f.Add([]byte{2, 0, 0, 0, 13, 0})
	f.Add([]byte{2, 9, 0, 0, 4, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		runHostileScript(t, data, false)
	})
}

func runHostileScript(t *testing.T, data []byte, verbose bool) {
	if len(data) == 0 {
		return
	}
	nops := int(data[0])%6 + 1
	data = data[1:]
	if len(data) < nops {
		return
	}
	ops := data[:nops]
	srv := &fuzzedServer{
		script:   append([]byte(nil), data[nops:]...),
		granted:  map[string]string{},
		wrong:    map[string]bool{},
		tainted:  map[net.Conn]string{},
		counts:   map[string]int{},
		closedCh: make(chan struct{}),
		verbose:  verbose,
	}
	var problems []string
	fail := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	base := goleak.IgnoreCurrent()
	in := fmt.Sprintf("%x", data)
	// Registered before ServeRequests, so it runs after the raw server's
	// cleanup has closed every connection and waited for its goroutines.
	t.Cleanup(func() {
		if err := goleak.Find(base); err != nil {
			t.Errorf("input %s: goroutine leak: %v", in, err)
		}
	})
	func() {
		addr := testutil.ServeRaw(t, srv.serve)
		defer close(srv.closedCh) // before ServeRaw's cleanup

		c, err := New([]string{addr}, WithDialTimeout(300*time.Millisecond), WithLeaseTTL(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var leases []fuzzLease
		const bound = 300 * time.Millisecond
		const margin = 3 * time.Second // a loaded one-CPU machine under -race
		call := func(name string, fn func(ctx context.Context) error) {
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			start := time.Now()
			err := fn(ctx)
			if d := time.Since(start); d > bound+margin {
				fail("%s took %v (bound %v)", name, d, bound)
			}
			if err != nil && !documentedErr(err) {
				fail("%s: undocumented error %T %v", name, err, err)
			}
			if verbose {
				t.Logf("%s %s -> %v", time.Now().Format("05.000"), name, err)
			}
		}
		keys := []string{"a", "b", "c"}
		for i, op := range ops {
			key := keys[i%len(keys)]
			switch op % 10 {
			case 0:
				call("Lock "+key, func(ctx context.Context) error {
					l, err := c.Lock(ctx, key)
					if err == nil {
						leases = append(leases, l)
					}
					return err
				})
			case 1:
				call("TryLock "+key, func(ctx context.Context) error {
					l, err := c.TryLock(ctx, key)
					if err == nil {
						leases = append(leases, l)
					}
					return err
				})
			case 2:
				if len(leases) > 0 {
					l := leases[len(leases)-1]
					call("Release "+l.Key(), l.Release)
				}
			case 3:
				if len(leases) > 0 {
					l := leases[len(leases)-1]
					call("Renew "+l.Key(), l.Renew)
				}
			case 4:
				call("Semaphore s", func(ctx context.Context) error {
					s, err := c.Semaphore(ctx, "s", 2)
					if err == nil {
						leases = append(leases, s)
					}
					return err
				})
			case 5:
				call("Emit", func(ctx context.Context) error {
					_, err := c.Emit(ctx, "ch.x", "p")
					return err
				})
			case 6:
				call("Listen+Next", func(ctx context.Context) error {
					sub, err := c.Listen(ctx, "ch.>")
					if err != nil {
						return err
					}
					defer sub.Close()
					_, err = sub.Next(ctx)
					return err
				})
			case 7:
				call("Stats", func(ctx context.Context) error {
					_, err := c.Stats(ctx)
					return err
				})
			case 8:
				call("Enqueue+Wait "+key, func(ctx context.Context) error {
					tk, err := c.Enqueue(ctx, key)
					if err != nil {
						return err
					}
					l, err := tk.Wait(ctx)
					if err == nil {
						leases = append(leases, l)
					} else {
						_ = tk.Cancel()
					}
					return err
				})
			case 9:
				call("TrySemaphore s", func(ctx context.Context) error {
					s, err := c.TrySemaphore(ctx, "s", 2)
					if err == nil {
						leases = append(leases, s)
					}
					return err
				})
			}
		}
		if verbose {
			for _, l := range leases {
				t.Logf("lease %s %s err=%v", l.Key(), l.Token(), l.Err())
			}
		}
		// docs/leases.md: a grant taken from a surplus line is lost within
		// the round trip; give ungranted leases 2 s to be reported lost.
		ungranted := func(l fuzzLease) bool {
			srv.mu.Lock()
			defer srv.mu.Unlock()
			k, ok := srv.granted[l.Token()]
			return l.Err() == nil && (!ok || k != l.Key())
		}
		for _, l := range leases {
			if ungranted(l) {
				select {
				case <-l.(interface{ Done() <-chan struct{} }).Done():
				case <-time.After(2 * time.Second):
				}
			}
		}
		srv.mu.Lock()
		for _, l := range leases {
			if l.Err() != nil {
				continue
			}
			if k, ok := srv.granted[l.Token()]; !ok || k != l.Key() {
				fail("lease %q token %q held (Err nil) but never granted for it (granted to %q, wrong=%v)", l.Key(), l.Token(), k, srv.wrong[l.Token()])
			}
		}
		srv.mu.Unlock()
		done := make(chan error, 1)
		go func() { done <- c.Close() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			fail("Client.Close did not return in 15s")
		}
		srv.mu.Lock()
		for _, r := range srv.reuse {
			fail("connection reused: %s", r)
		}
		srv.mu.Unlock()
	}()
	if verbose {
		t.Logf("requests seen: %v\n%s", srv.counts, strings.Join(srv.log, "\n"))
	}
	if len(problems) > 0 {
		t.Fatalf("input %x:\n%s", append([]byte{byte(nops - 1)}, data...), strings.Join(problems, "\n"))
	}
}
