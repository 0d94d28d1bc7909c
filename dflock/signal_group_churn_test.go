package dflock

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A push read on a queue-group listener connection for a channel the
// group's pattern does not match (a broken or hostile server's) reaches no
// member, as on a plain listener connection (broadcastLocked). Listen's
// contract: the subscription receives signals whose channel matches
// pattern. (Found in review: takeTurnLocked handed it on.)
func TestSignalGroupPushForForeignChannelIsNotDelivered(t *testing.T) {
	t.Parallel()
	srv := newScriptedServer(t, func(cmd, key, arg string) string {
		if cmd == "listen" {
			return "ok\nsig other.x bogus\nsig a.b real"
		}
		return "error"
	})
	c := newClient(t, []string{srv.addr})
	sub, err := c.Listen(testCtx(t), "a.*", Group("g"))
	require.NoError(t, err)
	sig := recvC(t, sub)
	assert.Equal(t, "a.b", sig.Channel, "a group member got a signal whose channel %q does not match its pattern a.*", sig.Channel)
	assert.Equal(t, "real", sig.Payload)
}

// Queue-group members spread over WithGroupConns connections, churned
// (Listen with short deadlines, Close) while the listener connections are
// reset and dropped: once the faults stop, every surviving member is served
// (each Emit counts the group once and reaches exactly one member), the
// server holds one registration per client connection that still has
// members, and none once every member closed.
func TestSignalGroupChurnUnderFaultsSettles(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	px := newProxy(t, srv.Addr())
	// The faults are resets and closes, which need no keepalive to be seen;
	// a short one cut every connection once on a loaded machine.
	c := newClient(t, []string{px.Addr()}, WithGroupConns(3))
	pub := newClient(t, []string{srv.Addr()})
	ctx := testCtx(t)
	const pattern, group = "gq.*", "g"
	var keep []*Subscription
	for range 4 {
		s, err := c.Listen(ctx, pattern, Group(group), Buffer(MaxSignalBuffer))
		require.NoError(t, err)
		keep = append(keep, s)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				lctx, cancel := context.WithTimeout(ctx, time.Duration(1+(i+g)%5)*time.Millisecond)
				s, err := c.Listen(lctx, pattern, Group(group))
				cancel()
				if err == nil {
					if i%2 == 0 {
						time.Sleep(time.Duration(i%3) * time.Millisecond)
					}
					_ = s.Close()
				}
			}
		})
	}
	wg.Go(func() {
		for i := 0; i < 12; i++ {
			select {
			case <-stop:
				return
			case <-time.After(23 * time.Millisecond):
			}
			if i%2 == 0 {
				px.ResetAll()
			} else {
				srv.DropConnections()
			}
		}
	})
	time.Sleep(400 * time.Millisecond)
	close(stop)
	wg.Wait()

	// Settle: every group listener with members is connected with its
	// listen confirmed, and the server registers as many group connections.
	// (The server's count alone passed on registrations of reset
	// connections it had not torn down yet, while every listener was
	// reconnecting; an Emit then counted 0: review "grp".)
	conns := func() int {
		c.signals.mu.Lock()
		defer c.signals.mu.Unlock()
		n := 0
		for k, l := range c.signals.listeners {
			if k.group == group && l.members() > 0 {
				l.mu.RLock()
				p := l.pats[pattern]
				up := l.cur != nil && p != nil && p.on
				l.mu.RUnlock()
				if !up {
					return -1
				}
				n++
			}
		}
		return n
	}
	registered := func() int {
		for _, sc := range srv.Stats().SignalChannels {
			if sc.Pattern == pattern && sc.Group == group {
				return sc.Listeners
			}
		}
		return 0
	}
	if !assert.Eventually(t, func() bool { n := conns(); return n > 0 && registered() == n }, testTimeout, 5*time.Millisecond) {
		dumpListeners(t, c)
		t.Fatalf("client group conns %d, server registrations %d", conns(), registered())
	}
	// Every member drains into one collector; each emit reaches exactly one.
	got := make(chan Signal, 1024)
	var rwg sync.WaitGroup
	for _, s := range keep {
		rwg.Go(func() {
			for sig := range s.C() {
				if sig.Err == nil {
					got <- sig
				}
			}
		})
	}
	const n = 60
	for i := range n {
		cnt, err := pub.Emit(ctx, "gq.x", strconv.Itoa(i))
		require.NoError(t, err)
		require.Equal(t, 1, cnt, "emit %d: the group counts once", i)
	}
	seen := map[string]bool{}
	for range n {
		select {
		case sig := <-got:
			require.False(t, seen[sig.Payload], "duplicate %s", sig.Payload)
			seen[sig.Payload] = true
		case <-time.After(testTimeout):
			dumpListeners(t, c)
			t.Fatalf("only %d of %d signals reached a member", len(seen), n)
		}
	}
	for _, s := range keep {
		require.NoError(t, s.Close())
	}
	rwg.Wait()
	assert.Eventually(t, func() bool { return registered() == 0 }, testTimeout, 5*time.Millisecond, "registrations left after every member closed")
}
