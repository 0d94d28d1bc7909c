package dflockotel

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dflock-sdk/go/dflock"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// doc.go: "The wait histogram has a measurement for every call that waited
// on a wait-pool connection." An Enqueue granted at once (`acquired`) and
// the Wait that collects that grant never waited in any queue, yet each
// records a wait of 0 s (path waitpool), so the histogram's count
// overstates the calls that waited and its low buckets fill with zeros.
func TestTicketGrantedAtOnceRecordsNoWait(t *testing.T) {
	h := newHarness(t, nil)
	ctx := testCtx(t)

	tk, err := h.c.Enqueue(ctx, "free")
	require.NoError(t, err)
	require.True(t, tk.Acquired(), "the key is free: granted at enqueue")
	l, err := tk.Wait(ctx)
	require.NoError(t, err)
	require.NoError(t, l.Release(ctx))

	rm := h.collect(t)
	var n uint64
	for _, p := range histogramPoints(rm, "dflock.client.acquire.wait.duration") {
		n += p.Count
		t.Logf("wait point %v: count %d sum %g", p.Attributes.ToSlice(), p.Count, p.Sum)
	}
	assert.Zero(t, n, "no call waited, yet the wait histogram counts some")
}

// WithKeyAttribute(false) promises that "a key that holds something private
// (a user id, an e-mail address) is kept off spans too". Only the
// dflock.key attribute is left off: a failed acquire's span records the
// error (RecordError: exception.message) and, for WithLock, the status
// description, and dflock's error messages quote the key.
func TestKeyAttributeOffKeepsTheKeyOutOfSpanErrors(t *testing.T) {
	h := newHarness(t, []Option{WithKeyAttribute(false)})
	ctx := testCtx(t)
	const key = "user:alice@example.com"

	held, err := h.c.Lock(ctx, key)
	require.NoError(t, err)
	_, err = h.c.Lock(ctx, key, dflock.AcquireTimeout(50*time.Millisecond))
	require.ErrorIs(t, err, dflock.ErrTimeout)
	err = h.c.WithLock(ctx, `user:"bob"@example.com`, func(context.Context) error { return errors.New("fn failed") })
	require.Error(t, err)
	require.NoError(t, held.Release(ctx))
	const quoted = `user:"carol"@example.com` // escaped in the error's text
	held, err = h.c.Lock(ctx, quoted)
	require.NoError(t, err)
	_, err = h.c.Lock(ctx, quoted, dflock.AcquireTimeout(50*time.Millisecond))
	require.ErrorIs(t, err, dflock.ErrTimeout)
	require.Contains(t, err.Error(), `\"carol\"`)
	require.NoError(t, held.Release(ctx))

	for _, s := range h.spans.Ended() {
		if strings.Contains(s.Status().Description, "@example.com") {
			t.Errorf("span %s: status description holds the key: %q", s.Name(), s.Status().Description)
		}
		for _, ev := range s.Events() {
			for _, kv := range ev.Attributes {
				if strings.Contains(kv.Value.Emit(), "@example.com") {
					t.Errorf("span %s: event %s attribute %s holds the key: %q", s.Name(), ev.Name, kv.Key, kv.Value.Emit())
				}
			}
		}
	}
}
