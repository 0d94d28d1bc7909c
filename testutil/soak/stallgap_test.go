package soak

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// TestCheckerCoversSignalsLostInAStall runs the interleaving behind the
// soak10 (e) reports: a server stalled for longer than two keepalives
// while three Clients listen and emit on it. Each listener connection
// breaks (its pings go unanswered) and reconnects during the stall; the
// re-listen and the emits sent meanwhile are processed in any order when
// the stall ends, so some of those signals reach no listener. Every one of
// them must be covered by a gap as the checker defines it.
func TestCheckerCoversSignalsLostInAStall(t *testing.T) {
	if testing.Short() {
		t.Skip("a 7 s stall over real TCP")
	}
	srv, err := testutil.Start(testutil.Config{Version: testutil.V1_16, ReadTimeout: serverReadTimeout, DefaultLease: serverLease, SweepInterval: serverSweep})
	require.NoError(t, err)
	defer srv.Close()
	p, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	defer p.Close()
	cl := &cluster{byAddr: map[string]int{p.Addr(): 0}, nodes: []*node{{idx: 0}}}

	rec := newRecorder()
	var cs []*dflock.Client
	var subs []*subRecord
	var dones []chan struct{}
	for i := range 3 {
		c, err := dflock.New([]string{p.Addr()}, dflock.WithKeepAlive(clientKeepAlive))
		require.NoError(t, err)
		defer c.Close()
		cs = append(cs, c)
		s, err := listen(context.Background(), c, cl, i, "ev.>", "", rec)
		require.NoError(t, err)
		done := make(chan struct{})
		go func() { defer close(done); s.consume(cl) }()
		subs = append(subs, s)
		dones = append(dones, done)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 60 {
		ec := cs[w%3]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(1+w%7) * 30 * time.Millisecond):
				}
				ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
				rec.emit(ec, cl, channel(w%12), fmt.Sprintf("w%d.%d", w, i), &callCtx{ctx: ctx, cancel: cancel})
			}
		}()
	}
	// The sleeps are the phases of the scenario (traffic, stall, traffic),
	// not synchronisation.
	time.Sleep(time.Second)
	stallAt := time.Now()
	resume := srv.Stall(0)
	time.Sleep(3500 * time.Millisecond) // > 2 keepalives: listener and emitter connections break
	resume()
	resumed := time.Now()
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	rec.emit(cs[0], cl, "ev.end", "end", &callCtx{ctx: ctx, cancel: cancel})
	for i, s := range subs {
		<-s.await("end")
		_ = s.sub.Close()
		<-dones[i]
	}
	v := newVerdict()
	f := checkSignals(v, subs, rec.emits)
	assert.Zero(t, v.total(), "stall [%s, %s]: %v", stamp(stallAt), stamp(resumed), v.examples)
	assert.Positive(t, f.gaps, "the stall broke the listener connections")
}
