//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// The quiet watch costs nothing on an idle Client: once the last reader
// that stood aside has been resumed, its goroutine parks (in select, on its
// kick channel) instead of passing every watchDelay; the next reader that
// stands aside wakes it again.
func TestQuietWatchParksWhenNobodyStandsAside(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	_, c := laneOf(t, p)
	for range 2 {
		r, _, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
		require.NoError(t, err)
		require.Equal(t, wire.StatusOK, r.Status)
		awaitTurn(t, c, turnReader, "the reader watches once the connection is quiet")
		require.Eventually(t, func() bool { return watchParked(p) }, wait, time.Millisecond,
			"the watch goroutine parks once nobody stands aside")
	}
}

// watchParked reports whether p's watch goroutine is parked on its kick
// channel with nobody standing aside.
func watchParked(p *Pool) bool {
	p.quiet.mu.Lock()
	idle := len(p.quiet.conns) == 0 && p.quiet.wakeAt == 0
	p.quiet.mu.Unlock()
	if !idle {
		return false
	}
	// This pool's: the trace shows the receiver (other tests' pools have
	// watch goroutines too). Parked in select, not sleeping on the clock.
	g, ok := goroutineWith(fmt.Sprintf("(*Pool).watchQuiet(%p", p))
	return ok && strings.Contains(g, "[select")
}

// goroutineWith returns the trace of the first goroutine whose trace
// contains every one of match (its first line gives its state, e.g.
// "[IO wait]").
func goroutineWith(match ...string) (string, bool) {
	buf := make([]byte, 1<<20)
next:
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		for _, m := range match {
			if !strings.Contains(g, m) {
				continue next
			}
		}
		return g, true
	}
	return "", false
}

// On a busy connection whose callers read their own replies the watch
// looks about once per watchDelay, not once per request: a connection that
// left the watch while its caller read and re-joined it after every reply
// woke the watch goroutine on every request (one goroutine's Lock+Release
// ran at 0.67× the build before, interleaved).
func TestQuietWatchPassesPerDelayNotPerRequest(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p := newPool(t, Config{Addr: srv.Addr(), LaneConns: 1})
	_, c := laneOf(t, p)
	ping := func() {
		r, _, err := p.Do(ctxWait(t), wire.Request{Cmd: wire.CmdPing})
		require.NoError(t, err)
		require.Equal(t, wire.StatusOK, r.Status)
	}
	ping()
	awaitTurn(t, c, turnReader, "the reader watches once the connection is quiet")
	p.quiet.mu.Lock()
	before := p.quiet.passes
	p.quiet.mu.Unlock()
	const n = 400
	start := time.Now()
	for range n {
		ping()
	}
	took := time.Since(start)
	p.quiet.mu.Lock()
	passes := p.quiet.passes - before
	p.quiet.mu.Unlock()
	// Once per watchDelay (and at most once per minQuietSleep when one is
	// due sooner), with slack for the quiet spell before the first request.
	limit := int64(took/watchDelay) + 10
	t.Logf("%d passes for %d requests in %v", passes, n, took)
	require.LessOrEqual(t, passes, limit, "the watch passes per request")
}
