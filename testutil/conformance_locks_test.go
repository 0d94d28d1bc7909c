package testutil

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConformanceLocks covers §6.2 for locks.
func TestConformanceLocks(t *testing.T) {
	t.Parallel()

	t.Run("grant, try-lock, wait, timeout", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		b := dialSrv(t, srv)
		tok := a.lock("k", "0", 33)

		b.send("l", "k", "0")
		b.expect("timeout")
		// the same connection cannot re-acquire either.
		a.send("l", "k", "0")
		a.expect("timeout")

		start := time.Now()
		b.send("l", "k", "1")
		b.expect("timeout")
		el := time.Since(start)
		assert.GreaterOrEqual(t, el, 900*time.Millisecond, "l with timeout 1 returned early")
		assert.Less(t, el, 3*time.Second)

		b.send("l", "k", "10 7")
		waitLockWaiters(t, srv, "k", 1)
		b.expectNothing()
		a.send("r", "k", tok)
		a.expect("ok")
		tokB := b.expectGrant("ok", 7)
		assert.NotEqual(t, tok, tokB)
		l, ok := findLock(srv.Stats(), "k")
		require.True(t, ok)
		assert.Zero(t, l.Waiters)
		assert.NotZero(t, l.OwnerConnID)
		assert.Greater(t, l.LeaseExpiresIn, 5*time.Second)
		assert.LessOrEqual(t, l.LeaseExpiresIn, 7*time.Second)
	})

	t.Run("FIFO across 20 waiters", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		h := dialSrv(t, srv)
		tok := h.lock("fifo", "0", 33)
		const n = 20
		ws := make([]*rawConn, n)
		for i := range ws {
			ws[i] = dialSrv(t, srv)
			ws[i].send("l", "fifo", "30 "+strconv.Itoa(i+10))
			waitLockWaiters(t, srv, "fifo", i+1)
		}
		releaser := h
		for i, w := range ws {
			releaser.send("r", "fifo", tok)
			releaser.expect("ok")
			// exactly waiter i is granted, with its own lease.
			tok = w.expectGrant("ok", int64(i+10))
			if i+1 < n {
				waitLockWaiters(t, srv, "fifo", n-i-1)
			}
			releaser = w
		}
		releaser.send("r", "fifo", tok)
		releaser.expect("ok")
	})

	t.Run("semaphore", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		toks := []string{}
		for range 3 {
			a.send("sl", "s", "0 3")
			toks = append(toks, a.expectGrant("ok", 33))
		}
		assert.Len(t, map[string]bool{toks[0]: true, toks[1]: true, toks[2]: true}, 3, "tokens must differ")
		b := dialSrv(t, srv)
		b.send("sl", "s", "0 3")
		b.expect("timeout")
		b.send("sl", "s", "0 2")
		b.expect("error_limit_mismatch")
		b.send("se", "s", "4")
		b.expect("error_limit_mismatch")
		s, ok := findSem(srv.Stats(), "s")
		require.True(t, ok)
		assert.Equal(t, SemaphoreInfo{Key: "s", Limit: 3, Holders: 3, Waiters: 0}, s)

		b.send("sl", "s", "10 3 5")
		waitSemWaiters(t, srv, "s", 1)
		b.expectNothing()
		a.send("sr", "s", toks[1])
		a.expect("ok")
		tb := b.expectGrant("ok", 5)
		a.send("sr", "s", toks[1])
		a.expect("error")
		// r does not release a semaphore token on v1.16 (separate namespaces).
		a.send("r", "s", tb)
		a.expect("error")
		a.send("sn", "s", tb+" 8")
		a.expect("ok 8")
		a.send("sr", "s", tb)
		a.expect("ok")
	})

	t.Run("max locks", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{MaxLocks: 2})
		c := dialSrv(t, srv)
		c.lock("a", "0", 33)
		c.send("sl", "b", "0 2")
		c.expectGrant("ok", 33)
		for _, r := range [][3]string{{"l", "c", "0"}, {"sl", "d", "0 1"}, {"e", "e", ""}, {"se", "f", "2"}, {"l", "g", "5"}} {
			c.send(r[0], r[1], r[2])
			c.expect("error_max_locks")
		}
		// existing keys still work.
		c.send("l", "a", "0")
		c.expect("timeout")
		c.send("sl", "b", "0 2")
		c.expectGrant("ok", 33)
	})

	t.Run("max locks unlimited", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{MaxLocks: -1})
		c := dialSrv(t, srv)
		var b []byte
		const n = 1100
		for i := range n {
			b = fmt.Appendf(b, "l\nk%d\n0\n", i)
		}
		c.write(string(b))
		for range n {
			c.expectGrant("ok", 33)
		}
	})

	t.Run("default max locks 1024", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		c := dialSrv(t, srv)
		var b []byte
		for i := range 1024 {
			b = fmt.Appendf(b, "l\nk%d\n0\n", i)
		}
		c.write(string(b))
		for range 1024 {
			c.expectGrant("ok", 33)
		}
		c.send("l", "one-more", "0")
		c.expect("error_max_locks")
	})

	t.Run("max waiters", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{MaxWaiters: 1})
		a := dialSrv(t, srv)
		a.lock("k", "0", 33)
		b := dialSrv(t, srv)
		b.send("l", "k", "30")
		waitLockWaiters(t, srv, "k", 1)
		c := dialSrv(t, srv)
		c.send("l", "k", "5")
		c.expect("error_max_waiters")
		c.send("e", "k", "")
		c.expect("error_max_waiters")
		c.ping()

		c.send("sl", "s", "0 1")
		c.expectGrant("ok", 33)
		d := dialSrv(t, srv)
		d.send("se", "s", "1")
		d.expect("queued")
		c.send("sl", "s", "5 1")
		c.expect("error_max_waiters")
	})
}

// TestConformanceTwoPhase covers §6.3 and §6.4.
func TestConformanceTwoPhase(t *testing.T) {
	t.Parallel()

	t.Run("queued, already enqueued, not enqueued, consumed", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		b := dialSrv(t, srv)
		c := dialSrv(t, srv)
		tok := a.lock("k", "0", 33)

		b.send("e", "k", "7")
		b.expect("queued")
		waitLockWaiters(t, srv, "k", 1)
		b.send("e", "k", "")
		b.expect("error_already_enqueued")
		c.send("w", "k", "0")
		c.expect("error_not_enqueued")
		// timeout consumes the state.
		b.send("w", "k", "0")
		b.expect("timeout")
		b.send("w", "k", "0")
		b.expect("error_not_enqueued")
		waitLockWaiters(t, srv, "k", 0)

		// re-enqueue, then a blocking w is granted on release with the e-time lease.
		b.send("e", "k", "7")
		b.expect("queued")
		b.send("w", "k", "10")
		b.expectNothing()
		a.send("r", "k", tok)
		a.expect("ok")
		tokB := b.expectGrant("ok", 7)
		b.send("w", "k", "0")
		b.expect("error_not_enqueued")
		b.send("r", "k", tokB)
		b.expect("ok")
	})

	t.Run("grant while not yet waiting", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		b := dialSrv(t, srv)
		tok := a.lock("k", "0", 33)
		b.send("e", "k", "")
		b.expect("queued")
		a.send("r", "k", tok)
		a.expect("ok")
		// the slot was granted to b's enqueue before it called w.
		a.send("l", "k", "0")
		a.expect("timeout")
		b.send("w", "k", "0")
		b.expectGrant("ok", 33)
	})

	t.Run("acquired then w returns same token", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		a.send("e", "k", "7")
		tok := a.expectGrant("acquired", 7)
		a.send("w", "k", "5")
		assert.Equal(t, tok, a.expectGrant("ok", 7))
		a.send("se", "s", "2 4")
		st := a.expectGrant("acquired", 4)
		a.send("sw", "s", "0")
		assert.Equal(t, st, a.expectGrant("ok", 4))
		a.send("sw", "s", "0")
		a.expect("error_not_enqueued")
		// enqueue state is per key.
		a.send("w", "other", "0")
		a.expect("error_not_enqueued")
	})

	t.Run("w on another connection", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		b := dialSrv(t, srv)
		a.send("e", "k", "")
		tok := a.expectGrant("acquired", 33)
		b.send("w", "k", "0")
		b.expect("error_not_enqueued")
		a.send("w", "k", "0")
		assert.Equal(t, tok, a.expectGrant("ok", 33))
	})

	t.Run("lease expired before w", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{SweepInterval: time.Hour}) // lapsed, not yet evicted
		a := dialSrv(t, srv)
		a.send("e", "k", "1")
		a.expectGrant("acquired", 1)
		time.Sleep(1500 * time.Millisecond) // the thing under test: the lease lapsing
		a.send("w", "k", "0")
		a.expect("error_lease_expired")
		a.lock("k", "0", 33)
	})

	t.Run("w resets the lease", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{SweepInterval: 100 * time.Millisecond})
		a := dialSrv(t, srv)
		a.send("e", "k", "2")
		tok := a.expectGrant("acquired", 2)
		time.Sleep(1200 * time.Millisecond) // let part of the lease pass
		a.send("w", "k", "0")
		assert.Equal(t, tok, a.expectGrant("ok", 2))
		l, ok := findLock(srv.Stats(), "k")
		require.True(t, ok)
		assert.Greater(t, l.LeaseExpiresIn, 1500*time.Millisecond, "w must restart the lease")
	})
}

// TestConformanceRenewRelease covers §6.5.
func TestConformanceRenewRelease(t *testing.T) {
	t.Parallel()

	t.Run("from another connection", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		b := dialSrv(t, srv)
		tok := a.lock("k", "0 7", 7)
		b.send("n", "k", tok)
		b.expect("ok 33") // default lease, not the originally requested 7
		b.send("n", "k", tok+" 5")
		b.expect("ok 5")
		b.send("n", "k", "  "+tok+"   +12  ")
		b.expect("ok 12")
		b.send("n", "other", tok)
		b.expect("error")
		b.send("n", "k", "0123456789abcdef0123456789abcdef")
		b.expect("error")
		b.send("r", "k", tok+" x")
		b.expect("error")
		b.send("r", "k", tok)
		b.expect("ok")
		a.send("r", "k", tok)
		a.expect("error")
		a.send("n", "k", tok)
		a.expect("error")
	})

	for _, sweep := range []time.Duration{100 * time.Millisecond, time.Hour} {
		t.Run("after expiry sweep="+sweep.String(), func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{SweepInterval: sweep})
			a := dialSrv(t, srv)
			tok := a.lock("k", "0 1", 1)
			tok2 := a.lock("k2", "0 1", 1)
			time.Sleep(1500 * time.Millisecond) // the thing under test: the lease lapsing
			a.send("n", "k", tok)
			a.expect("error")
			a.send("r", "k", tok)
			a.expect("error")
			a.send("r", "k2", tok2)
			a.expect("error")
			a.send("n", "k2", tok2)
			a.expect("error")
			b := dialSrv(t, srv)
			b.lock("k", "0", 33)
			b.lock("k2", "0", 33)
		})
	}

	t.Run("expired lease handed to waiter on renew", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{SweepInterval: time.Hour})
		a := dialSrv(t, srv)
		tok := a.lock("k", "0 1", 1)
		b := dialSrv(t, srv)
		b.send("l", "k", "30")
		waitLockWaiters(t, srv, "k", 1)
		time.Sleep(1200 * time.Millisecond) // the thing under test: the lease lapsing
		a.send("n", "k", tok)
		a.expect("error")
		b.expectGrant("ok", 33)
	})
}

// TestConformanceAutoRelease covers §8a/§8b.
func TestConformanceAutoRelease(t *testing.T) {
	t.Parallel()

	t.Run("bound to the acquiring connection", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		b := dialSrv(t, srv)
		c := dialSrv(t, srv)
		tok := a.lock("k", "0", 33)
		b.send("n", "k", tok)
		b.expect("ok 33")
		c.send("l", "k", "10")
		waitLockWaiters(t, srv, "k", 1)
		start := time.Now()
		a.close()
		c.expectGrant("ok", 33)
		assert.Less(t, time.Since(start), 2*time.Second, "waiter must be granted promptly")
		b.send("n", "k", tok)
		b.expect("error")
	})

	t.Run("semaphore and two-phase", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		a.send("sl", "s", "0 2")
		a.expectGrant("ok", 33)
		a.send("sl", "s", "0 2")
		a.expectGrant("ok", 33)
		a.send("e", "k", "")
		a.expectGrant("acquired", 33)
		b := dialSrv(t, srv)
		b.send("sl", "s", "10 2")
		waitSemWaiters(t, srv, "s", 1)
		a.close()
		b.expectGrant("ok", 33)
		b.lock("k", "0", 33)
	})

	t.Run("dead waiter dropped from queue", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		tok := a.lock("k", "0", 33)
		b := dialSrv(t, srv)
		b.send("l", "k", "30")
		waitLockWaiters(t, srv, "k", 1)
		c := dialSrv(t, srv)
		c.send("e", "k", "")
		c.expect("queued")
		waitLockWaiters(t, srv, "k", 2)
		b.close()
		c.close()
		waitLockWaiters(t, srv, "k", 0)
		d := dialSrv(t, srv)
		d.send("l", "k", "10")
		waitLockWaiters(t, srv, "k", 1)
		a.send("r", "k", tok)
		a.expect("ok")
		d.expectGrant("ok", 33)
	})

	t.Run("disabled", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{DisableAutoRelease: true, SweepInterval: 100 * time.Millisecond})
		a := dialSrv(t, srv)
		b := dialSrv(t, srv)
		a.send("l", "k", "0 2")
		granted := time.Now()
		tok := a.expectGrant("ok", 2)
		a.close()
		waitConns(t, srv, 1)
		b.send("l", "k", "0")
		b.expect("timeout")
		b.send("n", "k", tok+" 1")
		b.expect("ok 1") // the lease is still alive and renewable
		b.send("l", "k", "10")
		b.expectGrant("ok", 33)
		el := time.Since(granted)
		assert.GreaterOrEqual(t, el, 900*time.Millisecond, "lock must survive the disconnect until its lease lapses")
		assert.Less(t, el, 4*time.Second)
	})
}

// TestConformanceLeaseExpiry covers §7: a lapsed lease goes to the next waiter within ~1 s.
func TestConformanceLeaseExpiry(t *testing.T) {
	t.Parallel()
	srv := newServer(t, Config{}) // default 1 s sweep
	a := dialSrv(t, srv)
	b := dialSrv(t, srv)
	a.send("l", "k", "0 1")
	granted := time.Now()
	tok := a.expectGrant("ok", 1)
	b.send("l", "k", "10")
	tokB := b.expectGrant("ok", 33)
	el := time.Since(granted)
	assert.NotEqual(t, tok, tokB)
	assert.GreaterOrEqual(t, el, 900*time.Millisecond, "handed over before the lease lapsed")
	assert.Less(t, el, 3*time.Second, "handed over later than ~1 s after expiry")
	a.send("n", "k", tok)
	a.expect("error")
	a.ping() // the old holder's connection is unaffected
}

// TestConformanceReadTimeout covers §8c.
func TestConformanceReadTimeout(t *testing.T) {
	t.Parallel()
	// Generous enough that a loaded 2-core machine does not miss a deadline.
	const rt = time.Second

	t.Run("idle connection closed and its locks released", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{ReadTimeout: rt})
		a := dialSrv(t, srv)
		b := dialSrv(t, srv)
		a.lock("k", "0", 33)
		start := time.Now()
		b.send("l", "k", "10") // b blocks longer than the read timeout: not cut off
		a.expect("error")
		el := time.Since(start)
		a.expectEOF(ioWait)
		assert.GreaterOrEqual(t, el, rt*3/4)
		assert.Less(t, el, rt+2*time.Second)
		b.expectGrant("ok", 33)
	})

	t.Run("half-sent request", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{ReadTimeout: rt})
		a := dialSrv(t, srv)
		a.write("l\nk\n")
		a.expect("error")
		a.expectEOF(ioWait)
		assert.Empty(t, srv.Stats().Locks)
	})

	t.Run("deadline is per line", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{ReadTimeout: rt})
		a := dialSrv(t, srv)
		// each line arrives within the read timeout, the whole request does not.
		for _, l := range []string{"l\n", "k\n", "0\n"} {
			time.Sleep(rt / 2) // the thing under test: time passing between lines
			a.write(l)
		}
		a.expectGrant("ok", 33)
	})

	t.Run("blocking l longer than read timeout", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{ReadTimeout: rt})
		a := dialSrv(t, srv)
		a.lock("k", "0", 33)
		// keep the holder alive with pings while b blocks for 2 s (> rt).
		stop := make(chan struct{})
		pingErr := make(chan error, 1)
		go func() {
			pingErr <- func() error {
				for {
					select {
					case <-stop:
						return nil
					case <-time.After(rt / 4):
					}
					if _, err := a.c.Write([]byte("ping\n_\n\n")); err != nil {
						return err
					}
					line, err := a.readLineWithin(ioWait)
					if err != nil {
						return err
					}
					if line != "ok" {
						return fmt.Errorf("ping answered %q", line)
					}
				}
			}()
		}()
		b := dialSrv(t, srv)
		start := time.Now()
		b.send("l", "k", "2")
		b.expect("timeout")
		assert.GreaterOrEqual(t, time.Since(start), 1900*time.Millisecond)
		b.ping()
		close(stop)
		require.NoError(t, <-pingErr)
	})

	for _, v := range []Version{V1_16, V2_1, V1_10} {
		t.Run("ping keeps alive "+versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v, ReadTimeout: rt})
			a := dialSrv(t, srv)
			want := "ok"
			if v == V1_10 {
				want = "error"
			}
			end := time.Now().Add(3 * rt)
			for time.Now().Before(end) {
				time.Sleep(rt / 3) // the thing under test: time passing
				a.send("ping", "_", "")
				a.expect(want)
			}
			a.send("stats", "_", "")
			a.expectPrefix("ok {")
			// and then the idle timeout still applies.
			a.expect("error")
			a.expectEOF(ioWait)
		})
	}
}

// TestConformanceNamespaces covers §8g.
func TestConformanceNamespaces(t *testing.T) {
	t.Parallel()

	t.Run("v1.10 shared", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{Version: V1_10})
		c := dialSrv(t, srv)
		c.send("sl", "k", "0 2")
		c.expectGrant("ok", 33)
		c.send("l", "k", "0")
		c.expect("error_limit_mismatch")
		c.send("e", "k", "")
		c.expect("error_limit_mismatch")

		c.lock("m", "0", 33)
		c.send("sl", "m", "0 2")
		c.expect("error_limit_mismatch")

		c.send("sl", "j", "0 1")
		tok := c.expectGrant("ok", 33)
		c.send("l", "j", "0")
		c.expect("timeout")
		c.send("n", "j", tok+" 5")
		c.expect("ok 5")
		c.send("r", "j", tok) // same key space
		c.expect("ok")
		lt := c.lock("j", "0", 33)
		c.send("sr", "j", lt)
		c.expect("ok")
	})

	for _, v := range []Version{V1_16, V2_1} {
		t.Run("separate "+versionNames[v], func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, Config{Version: v})
			c := dialSrv(t, srv)
			c.send("sl", "k", "0 2")
			c.expectGrant("ok", 33)
			c.lock("k", "0", 33)

			c.send("sl", "j", "0 1")
			st := c.expectGrant("ok", 33)
			lt := c.lock("j", "0", 33)
			c.send("r", "j", st)
			c.expect("error")
			c.send("sr", "j", lt)
			c.expect("error")
			c.send("n", "j", st)
			c.expect("error")
			c.send("sn", "j", lt)
			c.expect("error")
			c.send("sr", "j", st)
			c.expect("ok")
			c.send("r", "j", lt)
			c.expect("ok")
		})
	}
}

// TestConformanceFenceTokens covers §7 (v2.1): strictly increasing fence prefix.
func TestConformanceFenceTokens(t *testing.T) {
	t.Parallel()
	before := uint64(time.Now().UnixNano())
	srv := newServer(t, Config{Version: V2_1})
	after := uint64(time.Now().UnixNano())
	c := dialSrv(t, srv)
	d := dialSrv(t, srv)
	fence := func(tok string) uint64 {
		t.Helper()
		require.Regexp(t, tokenRE, tok)
		b, err := hex.DecodeString(tok[:16])
		require.NoError(t, err)
		return binary.BigEndian.Uint64(b)
	}
	var last uint64
	var grants uint64
	check := func(tok string) {
		t.Helper()
		f := fence(tok)
		grants++
		assert.Greater(t, f, last, "fence must strictly increase (token %s)", tok)
		if last != 0 {
			assert.Equal(t, last+1, f, "fence is +1 per grant (token %s)", tok)
		}
		last = f
	}
	for i := range 10 {
		check(c.lock("k"+strconv.Itoa(i), "0", 33))
		d.send("sl", "s"+strconv.Itoa(i), "0 3")
		check(d.expectGrant("ok", 33))
		c.send("e", "e"+strconv.Itoa(i), "")
		check(c.expectGrant("acquired", 33))
	}
	// same key, successive grants.
	tok := c.lock("same", "0", 33)
	check(tok)
	for range 5 {
		c.send("r", "same", tok)
		c.expect("ok")
		tok = c.lock("same", "0", 33)
		check(tok)
	}
	first := last - grants + 1
	assert.Greater(t, first, before, "fence seeded with wall-clock ns at start")
	assert.LessOrEqual(t, first, after+grants+1)
}

// TestConformanceTokensRandom checks v1.x tokens are distinct 32-hex strings.
func TestConformanceTokensRandom(t *testing.T) {
	t.Parallel()
	for _, v := range []Version{V1_16, V1_10} {
		srv := newServer(t, Config{Version: v})
		c := dialSrv(t, srv)
		seen := map[string]bool{}
		prefixes := map[string]bool{}
		for i := range 50 {
			tok := c.lock("k"+strconv.Itoa(i), "0", 33)
			assert.False(t, seen[tok], "duplicate token %s", tok)
			seen[tok] = true
			prefixes[tok[:8]] = true
		}
		assert.Greater(t, len(prefixes), 40, "v1 tokens are random, not counters")
	}
}

// TestConformanceGC covers §8g: idle keys count against MaxLocks and keep
// their semaphore limit until pruned after GCMaxIdle.
func TestConformanceGC(t *testing.T) {
	t.Parallel()
	srv := newServer(t, Config{MaxLocks: 2, GCInterval: 50 * time.Millisecond, GCMaxIdle: 300 * time.Millisecond})
	c := dialSrv(t, srv)
	tok := c.lock("a", "0", 33)
	c.send("r", "a", tok)
	c.expect("ok")
	c.send("sl", "s", "0 2")
	st := c.expectGrant("ok", 33)
	c.send("sr", "s", st)
	c.expect("ok")
	released := time.Now()
	// both keys are idle but still count, and the limit sticks.
	c.send("l", "b", "0")
	c.expect("error_max_locks")
	c.send("sl", "s", "0 3")
	c.expect("error_limit_mismatch")
	idle := decodeStats(t, statsLine(c))
	assert.Len(t, idle.IdleLocks, 1)
	assert.Len(t, idle.IdleSemaphores, 1)

	require.Eventually(t, func() bool {
		ws := decodeStats(t, statsLine(c))
		return len(ws.IdleLocks) == 0 && len(ws.IdleSemaphores) == 0
	}, ioWait, 20*time.Millisecond, "idle keys never pruned")
	assert.GreaterOrEqual(t, time.Since(released), 250*time.Millisecond, "pruned before GCMaxIdle")
	c.send("sl", "s", "0 3")
	c.expectGrant("ok", 33)
	c.lock("b", "0", 33)
}

// TestConformancePeerClose covers §8e (v1.15+): a blocking waiter whose peer
// half-closes, or which pipelines more than the read buffer, is dropped.
func TestConformancePeerClose(t *testing.T) {
	t.Parallel()

	t.Run("half-close during a blocking wait", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		tok := a.lock("k", "0", 33)
		b := dialSrv(t, srv)
		b.send("l", "k", "30")
		waitLockWaiters(t, srv, "k", 1)
		require.NoError(t, b.c.(*net.TCPConn).CloseWrite())
		waitLockWaiters(t, srv, "k", 0)
		c := dialSrv(t, srv)
		c.send("l", "k", "10")
		waitLockWaiters(t, srv, "k", 1)
		a.send("r", "k", tok)
		a.expect("ok")
		c.expectGrant("ok", 33)
	})

	// A grant made as the waiter's peer went, not yet written, is undone
	// and passed on (dflockd's releaseGrantOnCancel), even with
	// auto-release off: it was never anyone's. The release and the
	// half-close race; the waiter either reads its grant or it is undone.
	t.Run("grant racing the half-close, auto-release off", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{DisableAutoRelease: true})
		for i := range 100 {
			key := "k" + strconv.Itoa(i)
			a := dialSrv(t, srv)
			tok := a.lock(key, "0", 33)
			b := dialSrv(t, srv)
			b.send("l", key, "30")
			waitLockWaiters(t, srv, key, 1)
			done := make(chan struct{})
			go func() {
				defer close(done)
				a.send("r", key, tok) // (a's reply is read below, on this goroutine's return)
			}()
			require.NoError(t, b.c.(*net.TCPConn).CloseWrite())
			<-done
			a.expect("ok")
			line, err := b.readLineWithin(ioWait)
			if err == nil { // b read its grant: the lock is b's to release
				_, ok := findLock(srv.Stats(), key)
				require.True(t, ok, "%s: granted %q, then gone", key, line)
				continue
			}
			require.Eventually(t, func() bool {
				l, ok := findLock(srv.Stats(), key)
				return !ok || l.OwnerConnID == 0
			}, ioWait, time.Millisecond, "%s: a grant its half-closed waiter never read is held", key)
			a.close()
			b.close()
		}
	})

	t.Run("v1.10 has no peer-close detection", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{Version: V1_10})
		a := dialSrv(t, srv)
		tok := a.lock("k", "0", 33)
		b := dialSrv(t, srv)
		b.send("l", "k", "30")
		waitLockWaiters(t, srv, "k", 1)
		c := dialSrv(t, srv)
		c.send("l", "k", "30")
		waitLockWaiters(t, srv, "k", 2)
		b.close()
		time.Sleep(quiet) // the thing under test: nothing happens for a while
		l, ok := findLock(srv.Stats(), "k")
		require.True(t, ok)
		assert.Equal(t, 2, l.Waiters, "a dead waiter stays queued on v1.10")
		// once granted to the dead waiter, its connection fails and auto-release hands the lock on.
		a.send("r", "k", tok)
		a.expect("ok")
		c.expectGrant("ok", 33)
	})

	t.Run("pipelined data filling the buffer", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		a.lock("k", "0", 33)
		b := dialSrv(t, srv)
		b.write("l\nk\n30\n" + strings.Repeat("ping\n_\n\n", 600)) // > 4096 bytes behind a blocking l
		b.expectEOF(ioWait)
		waitLockWaiters(t, srv, "k", 0)
	})

	t.Run("pipelined data below the buffer is kept", func(t *testing.T) {
		t.Parallel()
		srv := newServer(t, Config{})
		a := dialSrv(t, srv)
		tok := a.lock("k", "0", 33)
		b := dialSrv(t, srv)
		b.write("l\nk\n30\n" + strings.Repeat("ping\n_\n\n", 10))
		waitLockWaiters(t, srv, "k", 1)
		b.expectNothing()
		a.send("r", "k", tok)
		a.expect("ok")
		b.expectGrant("ok", 33)
		for range 10 {
			b.expect("ok")
		}
	})
}
