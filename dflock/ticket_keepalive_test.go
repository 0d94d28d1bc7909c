package dflock

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A queued ticket's connection is not closed by the keepalive when the
// server stops answering its pings: a closed connection cannot give the
// place up (w key 0), and a server with auto-release off keeps the place
// of a closed connection (v1.10–v1.14), or a grant made to it before it
// saw the close (any version), for nobody until its lease ends. It was
// closed after 2×KeepAlive, and Cancel then returned nil with the key left
// held (found by review). Here the keepalive gives up on nothing: the
// ticket's place is given up by Cancel once the server resumes, and
// nothing stays held.
func TestQueuedTicketsConnectionOutlivesAServerStall(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		ver  testutil.Version
		// grantDuringStall: the holder's lease runs out during the stall,
		// so the place is granted while the server is stalled; else the
		// holder releases after it.
		grantDuringStall bool
	}{
		{"v1.10 place queued", testutil.V1_10, false},
		{"v1.16 granted during the stall", testutil.V1_16, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const ka = 20 * time.Millisecond
			srv := newServer(t, testutil.Config{Version: tc.ver, DisableAutoRelease: true})
			holder := newClient(t, addrsOf(srv))
			c := newClient(t, addrsOf(srv), WithKeepAlive(ka))
			ctx := testCtx(t)
			lease := time.Minute
			if tc.grantDuringStall {
				lease = time.Second
			}
			hl, err := holder.Lock(ctx, "k", LeaseTTL(lease))
			require.NoError(t, err)
			holderConn := srv.Stats().Locks[0].OwnerConnID
			tk, err := c.Enqueue(ctx, "k")
			require.NoError(t, err)
			require.False(t, tk.Acquired())

			resume := srv.Stall(0)
			t.Cleanup(resume)
			if tc.grantDuringStall {
				require.Eventually(t, func() bool {
					l := srv.Stats().Locks
					return len(l) == 1 && l[0].OwnerConnID != holderConn
				}, testTimeout, time.Millisecond, "the holder's lease ran out and the place was granted")
			}
			// Many keepalives: unanswered pings for far longer than
			// 2×KeepAlive.
			time.Sleep(15 * ka)
			resume()
			if !tc.grantDuringStall {
				require.NoError(t, hl.Release(ctx)) // grants the place
			}
			require.NoError(t, tk.Cancel())
			require.Eventually(t, func() bool { return heldTotal(srv) == 0 }, testTimeout, time.Millisecond,
				"the cancelled place (or its grant) is held by nobody: %+v", srv.Stats().Locks)
			assert.Zero(t, c.Snapshot().Servers[0].Conns.Lingering)
		})
	}
}

// The keepalive spares a queued ticket's connection only while nothing but
// its pings is unanswered: a request of Wait's is waited for, and a server
// that stops answering it is cut at 2×KeepAlive as on any connection.
// (HoldPlace spared it too, and Wait hung until its context ended; found by
// the review of that change.) Here: a Wait whose place was granted long
// ago confirms the grant with a renewal (confirmLateGrant), unanswered.
func TestWaitConfirmingALateGrantOnAStalledServerFailsAtTheKeepalive(t *testing.T) {
	t.Parallel()
	var renewals atomic.Int64
	addr := lateGrantServer(t, 2, true, &renewals)
	const ka = 20 * time.Millisecond
	c := newClient(t, []string{addr}, WithKeepAlive(ka))
	tk, err := c.Enqueue(testCtx(t), "k", LeaseTTL(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond) // > a quarter of the lease: Wait confirms
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err = tk.Wait(ctx)
	t.Logf("Wait after %v: %v (renewals sent %d)", time.Since(start).Round(time.Millisecond), err, renewals.Load())
	if !errors.Is(err, ErrServerUnavailable) {
		t.Fatalf("Wait: %v, want ErrServerUnavailable after ~2×KeepAlive (%v)", err, 2*ka)
	}
}

// As above, for the re-enqueue after a server-side `w` timeout: its `e`,
// unanswered, is cut at 2×KeepAlive.
func TestWaitReenqueueOnAStalledServerFailsAtTheKeepalive(t *testing.T) {
	t.Parallel()
	var enqueues atomic.Int64
	addr := testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
		out := "error"
		switch f[0] {
		case "e":
			if enqueues.Add(1) > 1 {
				return true // stalled from the re-enqueue on
			}
			out = "queued"
		case "w":
			out = "timeout"
		}
		_, err := nc.Write([]byte(out + "\n"))
		return err == nil
	})
	const ka = 20 * time.Millisecond
	c := newClient(t, []string{addr}, WithKeepAlive(ka))
	tk, err := c.Enqueue(testCtx(t), "k")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err = tk.Wait(ctx)
	t.Logf("Wait after %v: %v (enqueues %d)", time.Since(start).Round(time.Millisecond), err, enqueues.Load())
	if !errors.Is(err, ErrServerUnavailable) {
		t.Fatalf("Wait: %v, want ErrServerUnavailable after ~2×KeepAlive (%v)", err, 2*ka)
	}
}
