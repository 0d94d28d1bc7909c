package testutil

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var versionNames = map[Version]string{V1_16: "v1.16", V1_10: "v1.10", V2_1: "v2.1"}

// TestConformanceTranscript replays docs/protocol.md §6.10 byte for byte on every version.
func TestConformanceTranscript(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_16, V1_10, V2_1} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			const readTimeout = time.Second
			srv := newServer(t, Config{Version: v, ReadTimeout: readTimeout})
			a := dialSrv(t, srv)
			b := dialSrv(t, srv)

			// C: l\nk1\n5\n  S: ok <32 hex> 33\n
			a.write("l\nk1\n5\n")
			tok1 := a.expectGrant("ok", 33)
			assert.Regexp(t, tokenRE, tok1)

			// C: l\nk2\n0 7\n  S: ok <tok2> 7\n
			a.write("l\nk2\n0 7\n")
			tok2 := a.expectGrant("ok", 7)
			assert.NotEqual(t, tok1, tok2)

			// other connection: renew with default lease, then with 9, release twice.
			b.write("n\nk2\n" + tok2 + "\n")
			b.expect("ok 33")
			b.write("n\nk2\n" + tok2 + " 9\n")
			b.expect("ok 9")
			b.write("r\nk2\n" + tok2 + "\n")
			b.expect("ok")
			b.write("r\nk2\n" + tok2 + "\n")
			b.expect("error")

			// two-phase fast path.
			a.write("e\nk5\n\n")
			tok5 := a.expectGrant("acquired", 33)
			a.write("e\nk5\n\n")
			a.expect("error_already_enqueued")
			a.write("w\nk5\n0\n")
			assert.Equal(t, tok5, a.expectGrant("ok", 33))
			a.write("w\nk5\n0\n")
			a.expect("error_not_enqueued")

			// unknown command: error, connection stays open.
			a.write("zz\nk\n\n")
			a.expect("error")

			a.write("stats\n_\n\n")
			line := a.readLine()
			tail := `\}$`
			if v == V1_16 {
				tail = `,"signal_channels":\[\]\}$`
			}
			entry := `\{"key":"k[15]","owner_conn_id":[1-9][0-9]*,"lease_expires_in_s":[0-9.eE+-]+,"waiters":0\}`
			re := regexp.MustCompile(`^ok \{"connections":2,"locks":\[` + entry + `,` + entry + `\],` +
				`"semaphores":\[\],"idle_locks":\[\{"key":"k2","idle_s":[0-9.eE+-]+\}\],"idle_semaphores":\[\]` + tail)
			assert.Regexp(t, re, line)
			var st wireStats
			require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(line, "ok ")), &st), line)
			keys := []string{}
			for _, l := range st.Locks {
				keys = append(keys, l.Key)
				assert.Greater(t, l.LeaseExpiresInS, 30.0, "lease_expires_in_s of %s", l.Key)
				assert.LessOrEqual(t, l.LeaseExpiresInS, 33.0, "lease_expires_in_s of %s", l.Key)
			}
			assert.ElementsMatch(t, []string{"k1", "k5"}, keys)

			// idle: `error` then FIN after the read timeout.
			idleStart := time.Now()
			a.expect("error")
			gotErr := time.Since(idleStart)
			a.expectEOF(ioWait)
			assert.GreaterOrEqual(t, gotErr, readTimeout*8/10, "idle error came too early")
			assert.Less(t, gotErr, readTimeout+3*time.Second, "idle error came too late")
		})
	}
}

// TestConformanceFraming covers §2: CR stripping, the 256-byte line cap, the
// 64 KiB signal/auth arg cap of v1.16, and that all three lines are always read.
func TestConformanceFraming(t *testing.T) {
	t.Parallel()

	t.Run("crlf", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		c := dialSrv(t, srv)
		c.write("l\r\nk\r\n0\r\n")
		tok := c.expectGrant("ok", 33)
		// The key and the token must have had their CR stripped: release with plain LF.
		c.write("r\nk\n" + tok + "\r\n")
		c.expect("ok")
	})

	t.Run("many trailing CR stripped", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		c := dialSrv(t, srv)
		c.write("l\r\r\r\nk\r\r\n0 7\r\r\r\r\n")
		tok := c.expectGrant("ok", 7)
		c.send("r", "k", tok)
		c.expect("ok")
		_, ok := findLock(srv.Stats(), "k\r")
		assert.False(t, ok, "CR must not be part of the key")
	})

	t.Run("only trailing CR stripped", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		c := dialSrv(t, srv)
		c.write("l\nk\rx\n0\n") // a CR inside the key makes it invalid
		c.expect("error")
		c.ping()
	})

	for _, v := range []Version{V1_16, V1_10, V2_1} {
		t.Run("line cap "+versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v})

			c := dialSrv(t, srv)
			k256 := strings.Repeat("a", 256)
			tok := c.lock(k256, "0", 33)
			c.send("r", k256, tok)
			c.expect("ok")
			// 255 bytes + CR = 256 bytes before LF: fine, CR stripped.
			k255 := strings.Repeat("b", 255)
			c.write("l\n" + k255 + "\r\n0\n")
			tok = c.expectGrant("ok", 33)
			c.send("r", k255, tok)
			c.expect("ok")
			// an arg line of exactly 256 bytes (padded timeout) is fine too.
			c.send("l", "padded", strings.Repeat(" ", 255)+"0")
			c.expectGrant("ok", 33)

			cases := map[string]string{
				"key 257":       "l\n" + strings.Repeat("a", 257) + "\n",
				"key 256+CR":    "l\n" + strings.Repeat("a", 256) + "\r\n",
				"cmd 257":       strings.Repeat("l", 257) + "\n",
				"arg 257":       "l\nk\n" + strings.Repeat(" ", 256) + "0\n",
				"lock arg 1000": "l\nk\n0" + strings.Repeat(" ", 1000) + "\n",
			}
			for name, req := range cases {
				c := dialSrv(t, srv)
				c.write(req)
				line, err := c.readLineWithin(ioWait)
				require.NoError(t, err, "%s: expected error line before close", name)
				assert.Equal(t, "error", line, name)
				c.expectEOF(ioWait)
			}
		})
	}

	t.Run("v1.16 signal and auth arg past 256", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		c := dialSrv(t, srv)
		c.send("signal", "ch", strings.Repeat("p", 1000))
		c.expect("ok 0")
		// payload ≤ 65536 − 5 − len(channel)
		max := 65536 - 5 - len("ch")
		c.send("signal", "ch", strings.Repeat("p", max))
		c.expect("ok 0")
		c.send("signal", "ch", strings.Repeat("p", max+1))
		c.expect("error")
		c.ping()

		asrv := newServer(t, Config{AuthToken: "s3cret"})
		a := dialSrv(t, asrv)
		a.send("auth", "_", strings.Repeat(" ", 2000)+"s3cret"+strings.Repeat(" ", 2000))
		a.expect("ok")
		a.ping()
	})

	for _, v := range []Version{V1_10, V2_1} {
		t.Run("signal arg capped at 256 on "+versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v})
			c := dialSrv(t, srv)
			c.send("signal", "ch", strings.Repeat("p", 1000))
			c.expect("error")
			c.expectEOF(ioWait)
		})
	}

	t.Run("v2.1 auth arg past 256", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{Version: V2_1, AuthToken: "s3cret"})
		a := dialSrv(t, srv)
		a.send("auth", "_", strings.Repeat(" ", 2000)+"s3cret")
		a.expect("ok")
		a.ping()
	})

	t.Run("three lines always read", func(t *testing.T) {
		t.Parallel()
		for _, v := range []Version{V1_16, V1_10, V2_1} {
			srv := newServer(t, Config{Version: v})
			c := dialSrv(t, srv)
			// key/arg lines that would be commands themselves if misframed.
			c.send("stats", "ping", "stats")
			c.expectPrefix(`ok {"connections":1,`)
			c.send("ping", "stats", "zz")
			if v == V1_10 {
				c.expect("error")
			} else {
				c.expect("ok")
			}
			// a request is not answered until its third line arrives.
			c.write("stats\n_\n")
			c.expectNothing()
			c.write("\n")
			c.expectPrefix(`ok {"connections":1,`)
		}
	})

	t.Run("pipelined requests answered in order", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		c := dialSrv(t, srv)
		c.write("l\na\n0\nl\nb\n0 5\nstats\n_\n\nping\n_\n\n")
		c.expectGrant("ok", 33)
		c.expectGrant("ok", 5)
		c.expectPrefix(`ok {"connections":1,"locks":[`)
		c.expect("ok")
	})

	t.Run("blocking l blocks the connection", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		h := dialSrv(t, srv)
		h.lock("k", "0", 33)
		c := dialSrv(t, srv)
		start := time.Now()
		c.write("l\nk\n1\nping\n_\n\n")
		c.expect("timeout")
		c.expect("ok")
		assert.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond)
	})
}

// TestConformanceValidation covers §3/§4: every parse error answers a bare
// `error` and keeps the connection open and in frame.
func TestConformanceValidation(t *testing.T) {
	t.Parallel()
	bad := []struct{ name, cmd, key, arg string }{
		{"upper-case command", "L", "k", "0"},
		{"leading space in command", " l", "k", "0"},
		{"trailing space in command", "l ", "k", "0"},
		{"empty command", "", "k", "0"},
		{"unknown command", "zz", "k", ""},
		{"empty key", "l", "", "0"},
		{"key with space", "l", "a b", "0"},
		{"key with tab", "l", "a\tb", "0"},
		{"key with leading space", "l", " k", "0"},
		{"non-integer timeout", "l", "k", "x"},
		{"float timeout", "l", "k", "1.5"},
		{"non-integer lease", "l", "k", "0 x"},
		{"negative timeout", "l", "k", "-1"},
		{"lease 0", "l", "k", "0 0"},
		{"negative lease", "l", "k", "0 -5"},
		{"l no args", "l", "k", ""},
		{"l blank args", "l", "k", "   "},
		{"l three args", "l", "k", "0 5 5"},
		{"sl one arg", "sl", "k", "0"},
		{"sl four args", "sl", "k", "0 2 5 5"},
		{"limit 0", "sl", "k", "0 0"},
		{"negative limit", "sl", "k", "0 -1"},
		{"non-integer limit", "sl", "k", "0 x"},
		{"sl lease 0", "sl", "k", "0 2 0"},
		{"n no args", "n", "k", ""},
		{"n three args", "n", "held", "TOK 5 5"},
		{"n lease 0", "n", "held", "TOK 0"},
		{"n non-integer lease", "n", "held", "TOK x"},
		{"e two args", "e", "k", "1 2"},
		{"e 30 junk", "e", "k", "30 junk"},
		{"e lease 0", "e", "k", "0"},
		{"e non-integer", "e", "k", "x"},
		{"se no args", "se", "k", ""},
		{"se limit 0", "se", "k", "0"},
		{"w empty", "w", "k", ""},
		{"w non-integer", "w", "k", "x"},
		{"w negative", "w", "k", "-1"},
		{"w two args", "w", "k", "1 2"},
		{"sw empty", "sw", "k", ""},
		{"r empty token", "r", "k", ""},
		{"r blank token", "r", "k", "   "},
		{"sr empty token", "sr", "k", ""},
		{"n empty key", "n", "", "tok"},
		{"r empty key", "r", "", "tok"},
		{"timeout too large", "l", "k", "9223372037"},
		{"lease too large", "l", "k", "0 9223372037"},
		{"sl timeout too large", "sl", "k", "9223372037 1"},
		{"w timeout too large", "w", "k", "9223372037"},
		{"n lease too large", "n", "held", "TOK 9223372037"},
		{"timeout overflows int64", "l", "k", "99999999999999999999"},
	}
	srv := newServer(t, Config{})
	// A real lock, so that renew cases fail for their syntax, not their token.
	h := dialSrv(t, srv)
	htok := h.lock("held", "0", 33)
	c := dialSrv(t, srv)
	for _, tc := range bad {
		c.send(tc.cmd, tc.key, strings.ReplaceAll(tc.arg, "TOK", htok))
		line, err := c.readLineWithin(ioWait)
		if !assert.NoError(t, err, tc.name) {
			return
		}
		assert.Equal(t, "error", line, "%s: %q %q %q", tc.name, tc.cmd, tc.key, tc.arg)
		c.send("ping", "_", "")
		line, err = c.readLineWithin(ioWait)
		if !assert.NoError(t, err, "%s: connection must stay open", tc.name) {
			return
		}
		assert.Equal(t, "ok", line, "%s: connection must stay in frame", tc.name)
	}
	assert.Len(t, srv.Stats().Locks, 1, "no bad request may create a lock")
	h.send("n", "held", htok+" 5")
	h.expect("ok 5")

	// Accepted edge cases.
	tok := c.lock("plus", "+1 +5", 5)
	assert.Regexp(t, tokenRE, tok)
	c.lock("zeros", "007 0009", 9)
	c.lock("spaces", " 1   5 ", 5)
	c.lock("tabs", "0\t6", 6)
	c.lock("a\u00a0b", "0", 33)
	c.lock("\xff\xfe", "0", 33)
	c.lock("maxtimeout", "9223372036", 33)
	c.lock("maxlease", "0 9223372036", 9223372036)
	c.send("sl", "sem", "+0 +2 +4")
	c.expectGrant("ok", 4)
	c.send("e", "ez", "  0012  ")
	c.expectGrant("acquired", 12)
	c.send("w", "ez", " 00 ")
	c.expectGrant("ok", 12)
	// keys are byte-exact: "K" is not "k".
	k := c.lock("case", "0", 33)
	c.send("r", "CASE", k)
	c.expect("error")
	c.send("r", "case", k)
	c.expect("ok")
	// r/sr use the trimmed line as the token.
	k = c.lock("trim", "0", 33)
	c.send("r", "trim", "  "+k+"\t ")
	c.expect("ok")

	l, ok := findLock(srv.Stats(), "a\u00a0b")
	assert.True(t, ok, "U+00A0 key must be stored verbatim")
	assert.Zero(t, l.Waiters)
}

// TestConformanceAuth covers §6.1.
func TestConformanceAuth(t *testing.T) {
	t.Parallel()
	const secret = "s3cret"

	rejects := []struct{ name, req string }{
		{"wrong secret", "auth\n_\nwrong\n"},
		{"empty secret", "auth\n_\n\n"},
		{"secret prefix", "auth\n_\ns3cre\n"},
		{"lock first", "l\nk\n0\n"},
		{"ping first", "ping\n_\n\n"},
		{"stats first", "stats\n_\n\n"},
		{"unknown first", "zz\nk\n\n"},
		{"parse error first", "l\n\n0\n"},
	}
	for _, v := range []Version{V1_16, V1_10, V2_1} {
		t.Run(versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v, AuthToken: secret})
			for _, tc := range rejects {
				c := dialSrv(t, srv)
				start := time.Now()
				c.write(tc.req)
				line, err := c.readLineWithin(ioWait)
				require.NoError(t, err, tc.name)
				assert.Equal(t, "error_auth", line, tc.name)
				c.expectEOF(ioWait)
				el := time.Since(start)
				assert.GreaterOrEqual(t, el, 80*time.Millisecond, "%s: close must follow a ~100ms delay", tc.name)
				assert.Less(t, el, 2*time.Second, tc.name)
			}
			assert.Empty(t, srv.Stats().Locks, "unauthenticated lock request must not run")

			// padded secret accepted, then normal service.
			c := dialSrv(t, srv)
			c.send("auth", "_", "  "+secret+"  ")
			c.expect("ok")
			c.lock("k", "0", 33)
			// second auth → error, connection kept.
			c.send("auth", "_", secret)
			c.expect("error")
			c.send("stats", "_", "")
			c.expectPrefix("ok {")

			// pipelined auth + command in one write.
			p := dialSrv(t, srv)
			p.write("auth\n_\n" + secret + "\nl\nk2\n0 7\nstats\n_\n\n")
			p.expect("ok")
			p.expectGrant("ok", 7)
			p.expectPrefix("ok {")

			// auth is per connection.
			q := dialSrv(t, srv)
			q.send("stats", "_", "")
			q.expect("error_auth")
			q.expectEOF(ioWait)
		})
	}

	t.Run("no server token", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		c := dialSrv(t, srv)
		c.send("auth", "_", secret)
		c.expect("error")
		c.ping()
		c.send("auth", "_", "")
		c.expect("error")
		c.ping()
	})

	t.Run("read timeout before auth", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{AuthToken: secret, ReadTimeout: 300 * time.Millisecond})
		c := dialSrv(t, srv)
		c.expect("error_auth")
		c.expectEOF(ioWait)
	})
}
