//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pool

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
	"github.com/dflock-sdk/go/wire"
)

// stressConnCfg is what the scripted server does on one connection.
type stressConnCfg struct {
	stallAt int // lock requests answered before the stall
	resume  chan struct{}
	pushes  bool
	split   bool
	grants  *atomic.Int64 // grants written without error
	done    chan struct{} // closed when the server's side ends
}

// A seeded stress of the linger accounting (written by the review of the
// orphans fix; DFLOCK_LINGER_SEED replays a seed). A scripted server
// answers every lock request with a grant of its own token, stalls after a
// random number of them until told to resume, then answers everything it
// reads until the client closes. The client sends one batch of random size
// (a write that blocks when large), gives up at a random moment (Abandon,
// or the keepalive's cut), and the server resumes. Invariants: the linger
// ends promptly once what reached the server is answered, and every grant
// the server wrote was read and given either to the batch's callback or to
// OnReleaseLost.
func TestLingerAccountingUnderRandomCuts(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("DFLOCK_LINGER_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	iters := 8
	if s := os.Getenv("DFLOCK_LINGER_ITERS"); s != "" {
		iters, _ = strconv.Atoi(s)
	}
	t.Logf("seed %d (replay with DFLOCK_LINGER_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 1))

	var mu sync.Mutex
	var cur *stressConnCfg
	addr := testutil.ServeRaw(t, func(nc net.Conn) {
		mu.Lock()
		cfg := cur
		mu.Unlock()
		if cfg == nil {
			return
		}
		defer close(cfg.done)
		answered := 0
		tok := 0
		testutil.AnswerRequests(nc, func(nc net.Conn, req [3]string) bool {
			if req[0] == "ping" {
				_, err := nc.Write([]byte("ok\n"))
				return err == nil
			}
			if answered == cfg.stallAt {
				<-cfg.resume
			}
			answered++
			tok++
			line := fmt.Sprintf("ok t%d 30\n", tok)
			if cfg.pushes && tok%3 == 0 {
				line = "sig ch some payload\n" + line
			}
			var err error
			if cfg.split && len(line) > 2 {
				if _, err = nc.Write([]byte(line[:2])); err == nil {
					_, err = nc.Write([]byte(line[2:]))
				}
			} else {
				_, err = nc.Write([]byte(line))
			}
			if err != nil {
				return false
			}
			cfg.grants.Add(1)
			return true
		})
	})

	for it := range iters {
		sizes := []int{1, 3, 100, 5000, 40000, 100000}
		n := sizes[rng.IntN(len(sizes))]
		keyLen := 1 + rng.IntN(250)
		stallAt := rng.IntN(n + 2)
		if rng.IntN(4) == 0 {
			stallAt = 0
		}
		mode := rng.IntN(2) // 0: Abandon; 1: the keepalive's cut
		if stallAt >= n {
			mode = 0
		}
		cfg := &stressConnCfg{stallAt: stallAt, resume: make(chan struct{}), pushes: rng.IntN(2) == 0,
			split: n <= 5000 && rng.IntN(3) == 0, grants: new(atomic.Int64), done: make(chan struct{})}
		mu.Lock()
		cur = cfg
		mu.Unlock()
		desc := fmt.Sprintf("iter %d: n=%d keyLen=%d stallAt=%d mode=%d pushes=%v split=%v", it, n, keyLen, stallAt, mode, cfg.pushes, cfg.split)

		var lost, delivered, failed atomic.Int64
		pc := Config{Addr: addr, LaneConns: 1, writeTimeout: 20 * time.Second,
			OnReleaseLost: func(wire.Request) { lost.Add(1) }}
		if mode == 1 {
			pc.KeepAlive = 100 * time.Millisecond
		}
		p, err := New(withDialTimeout(pc))
		require.NoError(t, err)
		h, err := p.Acquire(ctxWait(t))
		require.NoError(t, err, desc)
		key := strings.Repeat("k", keyLen)
		reqs := make([]wire.Request, n)
		for i := range reqs {
			reqs[i] = wire.Request{Cmd: wire.CmdLock, Key: key, Lease: 30}
		}
		all := make(chan struct{})
		var cbs atomic.Int64
		h.SendBatch(reqs, func(i int, r wire.Reply, err error) {
			if err == nil && r.Status == wire.StatusOK {
				delivered.Add(1)
			} else {
				failed.Add(1)
			}
			if cbs.Add(1) == int64(n) {
				close(all)
			}
		})
		// Wait until the server stalled (its answers up to stallAt are
		// delivered), plus a random moment.
		deadline := time.Now().Add(wait)
		for delivered.Load() < int64(min(stallAt, n)) && time.Now().Before(deadline) && h.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
		if mode == 0 {
			h.Abandon()
		} else if stallAt < n {
			deadline := time.Now().Add(wait)
			for h.Err() == nil && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
		lingering := p.Stats().LingeringConns
		time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
		close(cfg.resume)
		select {
		case <-h.ReaderDone():
		case <-time.After(4 * wait): // 100,000 replies under -race on a loaded machine: >5 s once
			if mode == 1 && stallAt >= n {
				// Nothing stalled: no cut comes; end it.
				h.Abandon()
				<-h.ReaderDone()
				break
			}
			h.c.mu.Lock()
			left := len(h.c.orphans)
			h.c.mu.Unlock()
			t.Errorf("%s: reader still running %v after resume (lingering=%d): %d orphans left; server granted %d, client read %d+%d lost",
				desc, wait, lingering, left, cfg.grants.Load(), delivered.Load(), lost.Load())
			h.Destroy()
			<-h.ReaderDone()
		}
		select {
		case <-all:
		case <-time.After(wait):
			t.Errorf("%s: %d of %d callbacks", desc, cbs.Load(), n)
		}
		select {
		case <-cfg.done:
		case <-time.After(wait):
			t.Errorf("%s: the server's side never ended", desc)
		}
		h.Destroy()
		p.Close()
		if g, got := cfg.grants.Load(), delivered.Load()+lost.Load(); g != got {
			t.Errorf("%s: server wrote %d grants, client read %d (%d delivered, %d to OnReleaseLost; %d failed)",
				desc, g, got, delivered.Load(), lost.Load(), failed.Load())
		}
		if s := p.Stats().LingeringConns; s != 0 {
			t.Errorf("%s: LingeringConns %d after Close", desc, s)
		}
	}
}

func withDialTimeout(cfg Config) Config {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	return cfg
}
