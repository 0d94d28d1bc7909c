package dflock

import (
	"errors"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dflock-sdk/go/testutil"
)

// A ticket whose place the server granted while nobody waited, and whose
// lease then ran out, must not come back from Wait as a held Lock
// (Client.Enqueue: "a Wait after that fails with an error matching both
// ErrNotAcquired and ErrLeaseExpired"). dflockd v1.10.0 — the oldest
// version the SDK supports, docs/protocol.md §12 — answers the `w` of such
// a place with `ok <stale token> <lease>` although the lock is no longer
// held (docs/protocol-notes.md, "two-phase state after `queued`"; said to
// be fixed in v1.10.1). Wait tracked the grant from the `w`'s send time, which is
// recent, so it neither confirmed the grant (confirmLateGrant renews only
// when the reply itself was slow) nor noticed: it returned a Lock with
// Err() == nil while another client holds the key, and reported the loss
// only at the first renewal, half a TTL later (found by review; checked
// against a v1.10.0 binary too: two holders).
//
// The scripted server answers as v1.10.0 does on that path (ping and the
// renewal of an unknown token: `error`).
func TestTicketWaitAfterALapsedGrantOnV1100IsNotAcquired(t *testing.T) {
	t.Parallel()
	var renewals atomic.Int64
	addr := lateGrantServer(t, 1, false, &renewals)
	c := newClient(t, []string{addr})
	ctx := testCtx(t)
	tk, err := c.Enqueue(ctx, "deploy", LeaseTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// The holder releases, the server grants the place, nobody waits on
	// it, its 1 s lease runs out and the sweep evicts it; then Wait. (The
	// script keeps no time: what matters is that more than a quarter of the
	// lease passed since the Enqueue, so that the Wait has to confirm.)
	time.Sleep(600 * time.Millisecond)
	l, err := tk.Wait(ctx)
	if err == nil {
		t.Fatalf("Wait returned a Lock (token %s, Err %v) the server no longer holds; renewals sent before returning: %d",
			l.Token(), l.Err(), renewals.Load())
	}
	if !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("Wait: %v, want an error matching ErrNotAcquired", err)
	}
}

// The same on testutil's V1_10, which imitates v1.10.0 there: the place
// granted at the holder's release lapses unwatched, the sweep evicts it,
// another client takes the key, and the `w` still answers ok with the
// stale token. Wait must not return it as held.
func TestTicketWaitAfterALapsedGrantOnV110Testutil(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{Version: testutil.V1_10})
	ctx := testCtx(t)
	holder := newClient(t, []string{srv.Addr()})
	held, err := holder.Lock(ctx, "deploy")
	if err != nil {
		t.Fatal(err)
	}
	waiter := newClient(t, []string{srv.Addr()})
	tk, err := waiter.Enqueue(ctx, "deploy", LeaseTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// The release granted the place to the ticket, which nobody waits on:
	// its 1 s lease runs out and the sweep evicts it.
	deadline := time.Now().Add(10 * time.Second)
	for lockHeld(srv, "deploy") {
		if time.Now().After(deadline) {
			t.Fatal("the lapsed grant was never swept")
		}
		time.Sleep(50 * time.Millisecond)
	}
	other := newClient(t, []string{srv.Addr()})
	taken, err := other.Lock(ctx, "deploy")
	if err != nil {
		t.Fatal(err)
	}
	l, err := tk.Wait(ctx)
	if err == nil {
		t.Fatalf("Wait returned a Lock (token %s, Err %v) while another client holds the key (token %s)",
			l.Token(), l.Err(), taken.Token())
	}
	if !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("Wait: %v, want an error matching ErrNotAcquired", err)
	}
	if err := taken.Err(); err != nil {
		t.Fatalf("the other client's lock: %v", err)
	}
	if err := taken.Release(ctx); err != nil {
		t.Fatalf("the other client's release: %v", err)
	}
}

// lateGrantServer is a scripted server for a ticket whose place was granted
// while nobody waited: `e` is answered queued and `w` with a grant (a fixed
// token) of lease seconds; every renewal is counted in renewals and
// answered `error`, as dflockd v1.10.0 answers the renewal of a token it no
// longer knows, or, if stall, never. Anything else is answered `error`.
func lateGrantServer(t *testing.T, lease int, stall bool, renewals *atomic.Int64) string {
	t.Helper()
	const tok = "0123456789abcdef0123456789abcdef"
	return testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
		out := "error"
		switch f[0] {
		case "e":
			out = "queued"
		case "w":
			out = "ok " + tok + " " + strconv.Itoa(lease)
		case "n":
			renewals.Add(1)
			if stall {
				return true
			}
		}
		_, err := nc.Write([]byte(out + "\n"))
		return err == nil
	})
}
