package testutil

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// listener opens a connection subscribed to the given (pattern, group) pairs.
func listener(t *testing.T, srv *Server, subs ...[2]string) *rawConn {
	t.Helper()
	c := dialSrv(t, srv)
	for _, s := range subs {
		c.send("listen", s[0], s[1])
		c.expect("ok")
	}
	return c
}

func sub(pattern string) [2]string         { return [2]string{pattern, ""} }
func gsub(pattern, group string) [2]string { return [2]string{pattern, group} }

// TestConformanceSignals covers §6.6 (v1.16).
func TestConformanceSignals(t *testing.T) {
	t.Parallel()

	t.Run("listen, signal, push", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := listener(t, srv, sub("a.b"))
		p := dialSrv(t, srv)
		p.send("signal", "a.b", "hello world")
		p.expect("ok 1")
		a.expect("sig a.b hello world")
		p.send("signal", "a.c", "nobody")
		p.expect("ok 0")
		// inner and leading spaces preserved, trailing CR stripped.
		p.write("signal\na.b\n  lead  inner   x\r\n")
		p.expect("ok 1")
		a.expect("sig a.b   lead  inner   x")
		// raw arg: trailing spaces are part of the payload.
		p.send("signal", "a.b", "x  ")
		p.expect("ok 1")
		a.expect("sig a.b x  ")
		// a listening connection may issue other commands.
		a.ping()
		a.lock("k", "0", 33)
	})

	t.Run("wildcards", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		star := listener(t, srv, sub("a.*"))
		tail := listener(t, srv, sub("a.>"))
		all := listener(t, srv, sub(">"))
		one := listener(t, srv, sub("*"))
		mid := listener(t, srv, sub("a.*.c"))
		p := dialSrv(t, srv)

		type exp struct {
			ch    string
			conns []*rawConn
		}
		names := map[*rawConn]string{star: "a.*", tail: "a.>", all: ">", one: "*", mid: "a.*.c"}
		for i, e := range []exp{
			{"a.b", []*rawConn{star, tail, all}},
			{"a.b.c", []*rawConn{tail, all, mid}},
			{"a", []*rawConn{all, one}},
			{"b", []*rawConn{all, one}},
			{"a.x.c", []*rawConn{tail, all, mid}},
			{"b.b", []*rawConn{all}},
			{"a.b.c.d", []*rawConn{tail, all}},
		} {
			payload := "m" + strconv.Itoa(i)
			p.send("signal", e.ch, payload)
			p.expect(fmt.Sprintf("ok %d", len(e.conns)))
			for _, c := range e.conns {
				assert.Equal(t, "sig "+e.ch+" "+payload, c.readLine(), "listener %s on %s", names[c], e.ch)
			}
		}
		// sentinels: every listener's next lines are the sentinels, so nothing extra arrived.
		for _, e := range []exp{
			{"a.s", []*rawConn{star, tail, all}},
			{"a.s.c", []*rawConn{tail, all, mid}},
			{"s", []*rawConn{all, one}},
		} {
			p.send("signal", e.ch, "end")
			p.expect(fmt.Sprintf("ok %d", len(e.conns)))
			for _, c := range e.conns {
				assert.Equal(t, "sig "+e.ch+" end", c.readLine(), "listener %s on sentinel %s", names[c], e.ch)
			}
		}
	})

	t.Run("push during a blocking l", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		h := dialSrv(t, srv)
		tok := h.lock("k", "0", 33)
		a := listener(t, srv, sub("x"))
		a.send("l", "k", "10")
		waitLockWaiters(t, srv, "k", 1)
		p := dialSrv(t, srv)
		p.send("signal", "x", "while waiting")
		p.expect("ok 1")
		a.expect("sig x while waiting") // before the pending l's reply
		h.send("r", "k", tok)
		h.expect("ok")
		a.expectGrant("ok", 33)
	})

	t.Run("pure listener closed by the read timeout", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{ReadTimeout: time.Second})
		a := listener(t, srv, sub("x"))
		start := time.Now()
		a.expect("error")
		assert.GreaterOrEqual(t, time.Since(start), 750*time.Millisecond)
		a.expectEOF(ioWait)
		waitConns(t, srv, 0)
		assert.Empty(t, srv.Stats().SignalChannels)
	})

	t.Run("invalid patterns and channels", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		c := dialSrv(t, srv)
		for _, pat := range []string{"a.b*", "*a", "a.*b", ">a", "a>", "a.>.b", ">.a", "a.b>", "", "a b", "a\tb"} {
			c.send("listen", pat, "")
			assert.Equal(t, "error", c.readLine(), "listen %q", pat)
			c.send("unlisten", pat, "")
			assert.Equal(t, "error", c.readLine(), "unlisten %q", pat)
		}
		for _, ch := range []string{"a.*", "a.>", "*", ">", "a*b", "a>b", "", "a b"} {
			c.send("signal", ch, "x")
			assert.Equal(t, "error", c.readLine(), "signal on %q", ch)
		}
		for _, payload := range []string{"", " ", "   \t "} {
			c.send("signal", "a", payload)
			assert.Equal(t, "error", c.readLine(), "payload %q", payload)
		}
		c.ping()
		assert.Empty(t, srv.Stats().SignalChannels)
	})

	t.Run("one non-grouped copy per connection", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := listener(t, srv, sub("a.b"), sub("a.*"), sub("a.>"), sub(">"))
		p := dialSrv(t, srv)
		p.send("signal", "a.b", "once")
		p.expect("ok 1")
		p.send("signal", "q", "sentinel")
		p.expect("ok 1")
		a.expect("sig a.b once")
		a.expect("sig q sentinel")
	})

	t.Run("group plus plain subscription counts twice", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := listener(t, srv, gsub("x", "g"), sub("x"))
		p := dialSrv(t, srv)
		p.send("signal", "x", "m")
		p.expect("ok 2")
		a.expect("sig x m")
		a.expect("sig x m")
		// groups are keyed by (pattern, group): same name on another pattern is another group.
		b := listener(t, srv, gsub(">", "g"))
		p.send("signal", "x", "n")
		p.expect("ok 3")
		a.expect("sig x n")
		a.expect("sig x n")
		b.expect("sig x n")
	})

	t.Run("publisher listening to itself", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := listener(t, srv, sub("self"))
		a.send("signal", "self", "hi")
		got := []string{a.readLine(), a.readLine()}
		assert.ElementsMatch(t, []string{"ok 1", "sig self hi"}, got)
	})

	t.Run("queue group round robin", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		members := []*rawConn{
			listener(t, srv, gsub("jobs", "workers")),
			listener(t, srv, gsub("jobs", "workers")),
			listener(t, srv, gsub("jobs", "workers")),
		}
		other := listener(t, srv, gsub("jobs", "audit"))
		p := dialSrv(t, srv)
		const n = 30
		for i := range n {
			p.send("signal", "jobs", strconv.Itoa(i))
			p.expect("ok 2")
		}
		p.send("signal", "done", "x") // nobody
		p.expect("ok 0")
		got := make([][]int, len(members))
		// each member reads exactly its 10 pushes.
		for m, c := range members {
			for range n / len(members) {
				line := c.readLine()
				require.True(t, strings.HasPrefix(line, "sig jobs "), line)
				i, err := strconv.Atoi(strings.TrimPrefix(line, "sig jobs "))
				require.NoError(t, err)
				got[m] = append(got[m], i)
			}
			c.expectNothing()
		}
		// round robin in join order: member m gets i where (i+off) % 3 == m.
		off := (3 - got[0][0]%3) % 3
		for m := range members {
			for j, i := range got[m] {
				assert.Equal(t, m, (i+off)%3, "member %d push %d got signal %d (all: %v)", m, j, i, got)
			}
		}
		for i := range n {
			other.expect("sig jobs " + strconv.Itoa(i))
		}
		var g []SignalChannelInfo
		for _, sc := range srv.Stats().SignalChannels {
			if sc.Pattern == "jobs" {
				g = append(g, sc)
			}
		}
		assert.ElementsMatch(t, []SignalChannelInfo{
			{Pattern: "jobs", Group: "workers", Listeners: 3},
			{Pattern: "jobs", Group: "audit", Listeners: 1},
		}, g)
	})

	t.Run("group member leaving", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := listener(t, srv, gsub("q", "g"))
		b := listener(t, srv, gsub("q", "g"))
		b.send("unlisten", "q", "g")
		b.expect("ok")
		p := dialSrv(t, srv)
		for i := range 4 {
			p.send("signal", "q", strconv.Itoa(i))
			p.expect("ok 1")
			a.expect("sig q " + strconv.Itoa(i))
		}
		b.expectNothing()
	})

	t.Run("unlisten and duplicates", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := listener(t, srv, sub("x"), sub("x"), gsub("x", " g "), gsub("x", "g"))
		p := dialSrv(t, srv)
		p.send("signal", "x", "1")
		p.expect("ok 2") // one plain, one group "g" (group name trimmed)
		a.expect("sig x 1")
		a.expect("sig x 1")
		a.send("unlisten", "x", "")
		a.expect("ok")
		p.send("signal", "x", "2")
		p.expect("ok 1")
		a.expect("sig x 2")
		a.send("unlisten", "x", "g")
		a.expect("ok")
		p.send("signal", "x", "3")
		p.expect("ok 0")
		a.send("unlisten", "never", "")
		a.expect("ok")
		a.send("unlisten", "x", "")
		a.expect("ok")
		a.expectNothing()
	})

	t.Run("subscriptions vanish on disconnect", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := listener(t, srv, sub("x"), gsub("x", "g"))
		a.close()
		waitConns(t, srv, 0)
		p := dialSrv(t, srv)
		p.send("signal", "x", "m")
		p.expect("ok 0")
		assert.Empty(t, srv.Stats().SignalChannels)
	})

	t.Run("max subscriptions", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{MaxSubscriptions: 2})
		a := listener(t, srv, sub("a"), gsub("b", "g"))
		a.send("listen", "c", "")
		a.expect("error")
		a.send("listen", "a", "") // duplicate at the cap: ok on v1.16
		a.expect("ok")
		a.send("unlisten", "a", "")
		a.expect("ok")
		a.send("listen", "c", "")
		a.expect("ok")
	})

	t.Run("stats signal_channels", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		listener(t, srv, sub("x.*"), gsub("jobs", "w"), sub("y.>"))
		listener(t, srv, sub("x.*"))
		c := dialSrv(t, srv)
		line := statsLine(c)
		assert.Contains(t, line, `{"pattern":"x.*","listeners":2}`, "group omitted when empty")
		assert.Contains(t, line, `{"pattern":"jobs","group":"w","listeners":1}`)
		// Go encoding/json (json.Marshal) escapes '>' as \u003e, as dflockd does.
		assert.Contains(t, line, `{"pattern":"y.\u003e","listeners":1}`)
		st := decodeStats(t, line)
		assert.Len(t, st.SignalChannels, 3)
		assert.Contains(t, st.SignalChannels, struct {
			Pattern   string `json:"pattern"`
			Group     string `json:"group,omitempty"`
			Listeners int    `json:"listeners"`
		}{"y.>", "", 1})
		assert.Equal(t, 3, st.Connections)
	})

	t.Run("slow listener disconnected", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{PushBuffer: 4})
		// A slow listener that never reads, with a small receive window.
		slow := dialSmallWindow(t, srv.Addr())
		slow.send("listen", "ch", "")
		slow.expect("ok")

		// A fast listener reading everything in the background; it reports
		// each push so that the publisher never runs ahead of it.
		fast := listener(t, srv, sub("ch"))
		p := dialSrv(t, srv)
		got := make(chan struct{}, 8)
		fastErr := make(chan error, 1)
		go func() {
			for {
				line, err := fast.readLineWithin(30 * time.Second)
				if err != nil {
					fastErr <- err
					return
				}
				if !strings.HasPrefix(line, "sig ch ") {
					fastErr <- fmt.Errorf("fast listener got %.40q", line)
					return
				}
				if line == "sig ch end" {
					fastErr <- nil
					return
				}
				got <- struct{}{}
			}
		}()
		publish := func(payload string) string {
			t.Helper()
			p.send("signal", "ch", payload)
			line := p.readLine()
			select {
			case <-got:
			case err := <-fastErr:
				require.FailNow(t, "fast listener stopped", "%v (reply %q)", err, line)
			case <-time.After(ioWait):
				require.FailNow(t, "fast listener never got the push")
			}
			return line
		}

		payload := strings.Repeat("z", 32<<10)
		sent, dropped := 0, false
		for ; sent < 3000 && !dropped; sent++ {
			switch line := publish(payload); line {
			case "ok 2":
			case "ok 1":
				dropped = true
			default:
				require.Fail(t, "unexpected signal reply", line)
			}
		}
		require.True(t, dropped, "slow listener never dropped after %d signals", sent)
		t.Logf("slow listener dropped after %d signals of %d bytes", sent, len(payload))
		for range 5 {
			assert.Equal(t, "ok 1", publish("after"))
		}
		p.send("signal", "ch", "end")
		p.expect("ok 1")
		select {
		case err := <-fastErr:
			require.NoError(t, err)
		case <-time.After(ioWait):
			require.FailNow(t, "fast listener never got the end marker")
		}

		expectClosedAfterDrain(t, slow)
		waitConns(t, srv, 2)
	})

	t.Run("write timeout disconnects a listener that does not read", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{PushBuffer: 1000, WriteTimeout: 300 * time.Millisecond})
		slow := dialSmallWindow(t, srv.Addr())
		slow.send("listen", "ch", "")
		slow.expect("ok")
		p := dialSrv(t, srv)
		// ~10 MB: more than the socket buffers, far less than the push buffer.
		payload := strings.Repeat("z", 32<<10)
		for range 300 {
			p.send("signal", "ch", payload)
			assert.Regexp(t, `^ok [01]$`, p.readLine())
		}
		// well before the 5 s default write timeout.
		require.Eventually(t, func() bool { return srv.Stats().Connections == 1 },
			2*time.Second, 5*time.Millisecond, "listener not disconnected by the write timeout")
		p.send("signal", "ch", "x")
		p.expect("ok 0")
		expectClosedAfterDrain(t, slow)
	})
}

// dialSmallWindow connects with a 4 KiB receive buffer, so that a client that
// does not read soon stalls the server's writes.
func dialSmallWindow(t *testing.T, addr string) *rawConn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			setRecvBuffer(fd, 4096)
		})
	}}
	ctx, cancel := context.WithTimeout(context.Background(), ioWait)
	defer cancel()
	nc, err := d.DialContext(ctx, "tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = nc.Close() })
	return wrapConn(t, nc)
}

// expectClosedAfterDrain reads whatever the server managed to send and
// requires the connection to end in EOF or a reset.
func expectClosedAfterDrain(t *testing.T, c *rawConn) {
	t.Helper()
	for {
		_, err := c.readLineWithin(ioWait)
		if err != nil {
			assert.True(t, isClosed(err), "connection must be closed by the server, got %v", err)
			return
		}
	}
}

// TestConformanceNoSignals: v1.10 and v2.1 have no signal commands.
func TestConformanceNoSignals(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_10, V2_1} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v})
			c := dialSrv(t, srv)
			for _, r := range [][3]string{{"listen", "a", ""}, {"unlisten", "a", ""}, {"signal", "a", "x"}, {"listen", "a", "g"}} {
				c.send(r[0], r[1], r[2])
				assert.Equal(t, "error", c.readLine(), "%v", r)
			}
			line := statsLine(c)
			assert.NotContains(t, line, "signal_channels")
			assert.True(t, strings.HasSuffix(line, `"idle_semaphores":[]}`), line)
		})
	}
}
