package dflock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dflock-sdk/go/testutil"
)

// Whole-Client chaos: many goroutines run a random mix of every public
// operation against two servers (one direct, one behind a proxy that resets,
// blackholes and delays at random) while Client.Close comes at a random
// moment. After Close and every call have returned: nothing hangs, the
// servers hold nothing of the Client's, the counters balance, every handle
// is ended, no goroutine or FD leaks. Seeded: DFLOCK_CHAOS_SEED=n replays
// one seed; DFLOCK_CHAOS_ITERS sets the number of rounds.
func TestClientChaosCloseUnderFaults(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("DFLOCK_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seed = v
	}
	iters := 3
	if s := os.Getenv("DFLOCK_CHAOS_ITERS"); s != "" {
		iters, _ = strconv.Atoi(s)
	}
	t.Logf("seed %d (replay with DFLOCK_CHAOS_SEED=%d)", seed, seed)
	fdBase := -1
	for i := 0; i < iters; i++ {
		s := seed + uint64(i)
		ign := goleak.IgnoreCurrent()
		ok := t.Run(fmt.Sprint("seed=", s), func(t *testing.T) { chaosRound(t, s) })
		if !ok {
			return
		}
		if err := goleak.Find(ign); err != nil {
			t.Fatalf("seed %d: goroutine leak: %v", s, err)
		}
		n := chaosFDs()
		if fdBase < 0 {
			fdBase = n
			continue
		}
		if n > fdBase+4 && !waitFor(context.Background(), 3*time.Second, func() bool { return chaosFDs() <= fdBase+4 }) {
			t.Fatalf("seed %d: FDs grew from %d to %d", s, fdBase, chaosFDs())
		}
	}
}

func chaosFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

type chaosHandles struct {
	mu sync.Mutex
	hs []handle
}

func (c *chaosHandles) add(h handle) {
	c.mu.Lock()
	c.hs = append(c.hs, h)
	c.mu.Unlock()
}

func chaosRound(t *testing.T, seed uint64) {
	master := rand.New(rand.NewPCG(seed, 0xc4a05))
	srvA := testutil.NewServer(t, testutil.Config{})
	srvB := testutil.NewServer(t, testutil.Config{})
	px := newProxy(t, srvB.Addr())
	var lostMu sync.Mutex
	lostTok := map[string]int{}
	lostCalls := 0
	opts := []Option{WithKeepAlive(200 * time.Millisecond), WithHooks(Hooks{
		OnLeaseLost: func(info LeaseInfo, err error) {
			lostMu.Lock()
			lostTok[info.Token]++
			lostCalls++
			lostMu.Unlock()
		},
	})}
	if master.IntN(2) == 0 {
		opts = append(opts, WithMaxConnsPerServer(2+master.IntN(6)))
	}
	if master.IntN(2) == 0 {
		opts = append(opts, WithLaneConns(1+master.IntN(3)))
	}
	if master.IntN(3) == 0 {
		opts = append(opts, WithLeaseTTL(time.Second))
	}
	c, err := New([]string{srvA.Addr(), px.Addr()}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	// Another process holding keys now and then: contention.
	other, err := New([]string{srvA.Addr(), srvB.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	otherDone := make(chan struct{})
	stopOther := make(chan struct{})
	oseed := master.Uint64()
	go func() {
		defer close(otherDone)
		r := rand.New(rand.NewPCG(oseed, 2))
		for {
			select {
			case <-stopOther:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			l, err := other.Lock(ctx, fmt.Sprintf("k%d", r.IntN(6)))
			cancel()
			if err == nil {
				time.Sleep(time.Duration(r.IntN(20)) * time.Millisecond)
				_ = l.Release(context.Background())
			}
		}
	}()
	base := context.Background()

	// Faults on the proxied server.
	faultsDone := make(chan struct{})
	stopFaults := make(chan struct{})
	fseed := master.Uint64()
	go func() {
		defer close(faultsDone)
		r := rand.New(rand.NewPCG(fseed, 1))
		for {
			select {
			case <-stopFaults:
				return
			case <-time.After(time.Duration(r.IntN(60)) * time.Millisecond):
			}
			switch r.IntN(5) {
			case 4:
				srvA.DropConnections()
			case 0:
				px.ResetAll()
			case 1:
				px.Blackhole(true)
				time.Sleep(time.Duration(r.IntN(80)) * time.Millisecond)
				px.Blackhole(false)
			case 2:
				px.SetLatency(time.Duration(r.IntN(3000)) * time.Microsecond)
			case 3:
				px.SetLatency(0)
			}
		}
	}()

	var handles chaosHandles
	const workers = 16
	var cur [workers]atomic.Value
	var wg sync.WaitGroup
	closed := make(chan struct{})
	var closeOnce sync.Once
	endWorkers := func() { closeOnce.Do(func() { close(closed) }) }
	defer endWorkers()
	for g := 0; g < workers; g++ {
		gseed := master.Uint64()
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(gseed, uint64(g)))
			var kept []handle
			for {
				select {
				case <-closed:
					if r.IntN(2) == 0 { // a few calls after Close too
						chaosAfterClose(t, r, c, base)
					}
					cur[g].Store("done")
					return
				default:
				}
				chaosOp(r, c, base, &handles, &kept, &cur[g])
				if c.closing.Load() {
					// Calls during Close fail at once: do not flood
					// the scheduler (starves Close on one CPU).
					time.Sleep(time.Millisecond)
				}
			}
		}(g)
	}

	wait := time.Duration(master.IntN(500)) * time.Millisecond
	if master.IntN(4) == 0 {
		wait = time.Duration(master.IntN(5000)) * time.Microsecond // during the first dials
	}
	time.Sleep(wait)
	closeDone := make(chan error, 2)
	go func() { closeDone <- c.Close() }()
	if master.IntN(2) == 0 {
		go func() { closeDone <- c.Close() }()
	} else {
		closeDone <- nil
	}
	select {
	case err := <-closeDone:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-closeDone; err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(15 * time.Second):
		dumpHang(t, "Client.Close", &cur)
	}
	endWorkers()
	close(stopFaults)
	<-faultsDone
	close(stopOther)
	<-otherDone
	_ = other.Close()
	px.Blackhole(false)
	px.SetLatency(0)

	wgDone := make(chan struct{})
	go func() { wg.Wait(); close(wgDone) }()
	select {
	case <-wgDone:
	case <-time.After(15 * time.Second):
		dumpHang(t, "worker ops", &cur)
	}

	// Every handle ended.
	handles.mu.Lock()
	for _, h := range handles.hs {
		select {
		case <-h.Done():
			if h.Err() == nil {
				t.Errorf("%s %q: Done closed but Err nil", fmt.Sprintf("%T", h), h.Key())
			}
		default:
			t.Errorf("%T %q on %s not ended after Close (Err %v)", h, h.Key(), h.Server(), h.Err())
		}
	}
	nh := len(handles.hs)
	handles.mu.Unlock()

	// OnLeaseLost: once per lost lease, never for a released one.
	if c.Snapshot().CallbacksDropped == 0 {
		lostMu.Lock()
		handles.mu.Lock()
		for _, h := range handles.hs {
			n := lostTok[h.Token()]
			if errors.Is(h.Err(), ErrLockLost) && n != 1 {
				t.Errorf("%T %q lost (%v) with %d OnLeaseLost calls", h, h.Key(), h.Err(), n)
			}
			if n > 1 {
				t.Errorf("%T %q: %d OnLeaseLost calls", h, h.Key(), n)
			}
		}
		if int64(lostCalls) != c.Snapshot().Lost {
			t.Errorf("OnLeaseLost called %d times, Lost %d", lostCalls, c.Snapshot().Lost)
		}
		handles.mu.Unlock()
		lostMu.Unlock()
	}

	// Counters.
	snap := c.Snapshot()
	if snap.Acquired != snap.Released+snap.Lost {
		t.Errorf("Acquired %d != Released %d + Lost %d", snap.Acquired, snap.Released, snap.Lost)
	}
	if snap.Held != 0 {
		t.Errorf("Held %d after Close", snap.Held)
	}
	for i, srv := range c.servers {
		o := &srv.obs
		if w := o.waits.Load(); w != 0 {
			t.Errorf("server %d: waits in flight %d after Close", i, w)
		}
		if h, l := o.held.Load(), o.renew.Lost.Load(); h-l != 0 {
			t.Errorf("server %d: held %d - lost %d != 0 after Close", i, h, l)
		}
		ss := snap.Servers[i]
		if ss.Conns != (ConnCounts{}) {
			t.Errorf("server %d: connections open after Close: %+v", i, ss.Conns)
		}
	}

	// The servers hold nothing of the Client's once its connections are gone.
	ctx, cancel := context.WithTimeout(base, 10*time.Second)
	defer cancel()
	for name, s := range map[string]*testutil.Server{"A": srvA, "B": srvB} {
		if !waitFor(ctx, 8*time.Second, func() bool {
			st := s.Stats()
			return st.Connections == 0 && len(st.Locks) == 0 && len(st.Semaphores) == 0 && len(st.SignalChannels) == 0
		}) {
			st := s.Stats()
			t.Errorf("server %s after Close: conns %d locks %+v sems %+v chans %+v", name, st.Connections, st.Locks, st.Semaphores, st.SignalChannels)
		}
	}
	t.Logf("handles %d, snapshot acq=%d rel=%d lost=%d", nh, snap.Acquired, snap.Released, snap.Lost)
}

func dumpHang(t *testing.T, what string, cur *[16]atomic.Value) {
	var b bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	var ops []string
	for i := range cur {
		ops = append(ops, fmt.Sprintf("g%d:%v", i, cur[i].Load()))
	}
	t.Fatalf("%s hung; current ops: %s\n%s", what, strings.Join(ops, " "), b.String())
}

func chaosOp(r *rand.Rand, c *Client, base context.Context, hs *chaosHandles, kept *[]handle, cur *atomic.Value) {
	lockKey := fmt.Sprintf("k%d", r.IntN(6))
	semKey := fmt.Sprintf("s%d", r.IntN(3))
	d := time.Duration(1+r.IntN(80)) * time.Millisecond
	ctx, cancel := context.WithTimeout(base, d)
	if r.IntN(3) == 0 {
		cancel()
		ctx, cancel = context.WithCancel(base)
		tm := time.AfterFunc(d, cancel)
		defer tm.Stop()
	}
	defer cancel()
	got := func(h handle, err error) {
		if err != nil || h == nil {
			return
		}
		hs.add(h)
		if r.IntN(3) == 0 {
			*kept = append(*kept, h)
			return
		}
		time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond)
		rctx, rc := context.WithTimeout(base, time.Duration(r.IntN(50))*time.Millisecond)
		_ = h.Release(rctx)
		rc()
	}
	op := r.IntN(16)
	cur.Store(fmt.Sprint("op", op))
	switch op {
	case 0:
		l, err := c.Lock(ctx, lockKey)
		got(nilIfErr(l, err), err)
	case 1:
		l, err := c.TryLock(ctx, lockKey)
		got(nilIfErr(l, err), err)
	case 2:
		s, err := c.Semaphore(ctx, semKey, 3)
		got(nilIfErrS(s, err), err)
	case 3:
		s, err := c.TrySemaphore(ctx, semKey, 3)
		got(nilIfErrS(s, err), err)
	case 4:
		_ = c.WithLock(ctx, lockKey, func(context.Context) error {
			time.Sleep(time.Duration(r.IntN(2000)) * time.Microsecond)
			return nil
		})
	case 5:
		_ = c.WithSemaphore(ctx, semKey, 3, func(context.Context) error {
			time.Sleep(time.Duration(r.IntN(2000)) * time.Microsecond)
			return nil
		})
	case 6:
		tk, err := c.Enqueue(ctx, lockKey)
		if err != nil {
			return
		}
		switch r.IntN(3) {
		case 0:
			_ = tk.Cancel()
		case 1:
			l, err := tk.Wait(ctx)
			got(nilIfErr(l, err), err)
			_ = tk.Cancel()
		case 2:
			time.AfterFunc(time.Duration(r.IntN(20))*time.Millisecond, func() { _ = tk.Cancel() })
			l, err := tk.Wait(base)
			got(nilIfErr(l, err), err)
		}
	case 7:
		tk, err := c.EnqueueSemaphore(ctx, semKey, 3)
		if err != nil {
			return
		}
		switch r.IntN(3) {
		case 0:
			_ = tk.Cancel()
		case 1:
			s, err := tk.Wait(ctx)
			got(nilIfErrS(s, err), err)
			_ = tk.Cancel()
		case 2:
			time.AfterFunc(time.Duration(r.IntN(20))*time.Millisecond, func() { _ = tk.Cancel() })
			s, err := tk.Wait(base)
			got(nilIfErrS(s, err), err)
		}
	case 8, 9:
		pat := []string{"ch.>", "ch.a", "ch.*"}[r.IntN(3)]
		var opts []ListenOption
		if r.IntN(2) == 0 {
			opts = append(opts, Group("g"))
		}
		sub, err := c.Listen(ctx, pat, opts...)
		if err != nil {
			return
		}
		nctx, nc := context.WithTimeout(base, time.Duration(r.IntN(30))*time.Millisecond)
		for {
			if _, err := sub.Next(nctx); err != nil && !errors.Is(err, ErrSignalGap) {
				break
			}
		}
		nc()
		_ = sub.Close()
	case 10, 11:
		_, _ = c.Emit(ctx, []string{"ch.a", "ch.b", "ch.a.b"}[r.IntN(3)], "p")
	case 12:
		_, _ = c.Stats(ctx)
	case 13:
		_ = c.Snapshot()
	case 14, 15:
		if len(*kept) > 0 {
			i := r.IntN(len(*kept))
			h := (*kept)[i]
			*kept = append((*kept)[:i], (*kept)[i+1:]...)
			if r.IntN(2) == 0 {
				_ = h.Renew(ctx)
			}
			_ = h.Release(ctx)
		}
	}
	cur.Store(fmt.Sprint("idle after op", op))
}

// chaosAfterClose makes a call after Close has returned: it must fail with
// ErrClosed.
func chaosAfterClose(t *testing.T, r *rand.Rand, c *Client, ctx context.Context) {
	var err error
	op := r.IntN(8)
	switch op {
	case 0:
		_, err = c.Lock(ctx, "k0")
	case 1:
		_, err = c.TryLock(ctx, "k0")
	case 2:
		_, err = c.Semaphore(ctx, "s0", 3)
	case 3:
		_, err = c.Enqueue(ctx, "k0")
	case 4:
		_, err = c.EnqueueSemaphore(ctx, "s0", 3)
	case 5:
		_, err = c.Listen(ctx, "ch.>")
	case 6:
		_, err = c.Emit(ctx, "ch.a", "p")
	case 7:
		_, err = c.Stats(ctx)
	}
	if !errors.Is(err, ErrClosed) {
		t.Errorf("op %d after Close: %v, want ErrClosed", op, err)
	}
}

func nilIfErr(l *Lock, err error) handle {
	if err != nil || l == nil {
		return nil
	}
	return l
}

func nilIfErrS(s *Semaphore, err error) handle {
	if err != nil || s == nil {
		return nil
	}
	return s
}
