package dflockotel

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"

	"github.com/dflock-sdk/go/dflock"
)

// doc.go: "A span's status is Error when the call failed: timed out,
// cancelled, refused by a server error ... or failed. A try that finds the
// key held ... is an answer, not a failure: its status stays Unset."
//
// A Ticket.Wait whose place was granted while nobody waited and whose lease
// then lapsed fails (Reply error_lease_expired or error_not_enqueued, error
// matching ErrNotAcquired and ErrLeaseExpired): not a try's answer, so its
// span's status is Error.
func TestLapsedTicketWaitSpanIsAnError(t *testing.T) {
	h := newHarness(t, nil)
	ctx := testCtx(t)

	holder, err := dflock.New([]string{h.srv.Addr()})
	require.NoError(t, err)
	defer holder.Close()
	l, err := holder.Lock(ctx, "lapse")
	require.NoError(t, err)

	tk, err := h.c.Enqueue(ctx, "lapse", dflock.LeaseTTL(time.Second))
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))  // the place is granted; nobody waits on it
	time.Sleep(1500 * time.Millisecond) // its 1 s lease lapses

	_, err = tk.Wait(ctx)
	require.Error(t, err)
	require.ErrorIs(t, err, dflock.ErrNotAcquired)
	require.ErrorIs(t, err, dflock.ErrLeaseExpired)

	waits := h.spansNamed("dflock.Ticket.Wait")
	require.Len(t, waits, 1)
	t.Logf("outcome attrs: %v; status %v", waits[0].Attributes(), waits[0].Status())
	assert.Equal(t, codes.Error, waits[0].Status().Code,
		"a Wait that failed (its lease lapsed) is a failure, not a try's answer")
}
