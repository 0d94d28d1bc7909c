package dflock

import (
	"errors"
	"net"
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
// held (docs/protocol-notes.md, "deliberate differences": fixed in
// v1.10.1). Wait tracked the grant from the `w`'s send time, which is
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
	const stale = "0123456789abcdef0123456789abcdef"
	var renewals atomic.Int64
	addr := testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
		out := "error"
		switch f[0] {
		case "e":
			out = "queued"
		case "w":
			out = "ok " + stale + " 1"
		case "n":
			renewals.Add(1) // the token is unknown: v1.10.0 answers `error`
		}
		_, err := nc.Write([]byte(out + "\n"))
		return err == nil
	})
	c := newClient(t, []string{addr})
	ctx := testCtx(t)
	tk, err := c.Enqueue(ctx, "deploy", LeaseTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// The holder releases, the server grants the place, nobody waits on
	// it, its 1 s lease runs out and the sweep evicts it; then Wait.
	time.Sleep(2500 * time.Millisecond)
	l, err := tk.Wait(ctx)
	if err == nil {
		t.Fatalf("Wait returned a Lock (token %s, Err %v) the server no longer holds; renewals sent before returning: %d",
			l.Token(), l.Err(), renewals.Load())
	}
	if !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("Wait: %v, want an error matching ErrNotAcquired", err)
	}
}
