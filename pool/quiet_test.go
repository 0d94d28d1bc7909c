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
