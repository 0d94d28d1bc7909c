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
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
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
				if strings.Contains(kv.Value.String(), "@example.com") {
					t.Errorf("span %s: event %s attribute %s holds the key: %q", s.Name(), ev.Name, kv.Key, kv.Value.String())
				}
			}
		}
	}
}

func spanTexts(spans []sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Status().Description)
		for _, ev := range s.Events() {
			for _, kv := range ev.Attributes {
				out = append(out, string(kv.Key)+"="+kv.Value.String())
			}
		}
	}
	return out
}

// WithKeyAttribute(false): "a key that holds something private ... is kept
// off spans". keyless scrubs the whole key, quoted or raw, but an invalid
// key's *ArgError shows only its first 64 bytes ("..."-cut): neither
// spelling matches, so the key's private prefix goes onto the span.
// An invalid key's ArgError shows the key quoted and cut to 64 bytes:
// that form is replaced too.
func TestKeyAttributeOffKeepsALongInvalidKeysCutFormOffSpans(t *testing.T) {
	h := newHarness(t, []Option{WithKeyAttribute(false)})
	ctx := testCtx(t)
	// A private key (a user's e-mail) with a stray space, as user input has.
	key := "tenants/acme-corporation/users/alice.private.person@example.com/profile "
	require.Greater(t, len(key), 64)
	_, err := h.c.Lock(ctx, key)
	require.ErrorIs(t, err, dflock.ErrInvalidArgument)
	t.Logf("error: %v", err)
	for _, s := range spanTexts(h.spans.Ended()) {
		if strings.Contains(s, "alice.private.person@example") {
			t.Errorf("span holds (part of) the key: %q", s)
		}
	}
}

// keyless replaces every occurrence of the key's bytes, not the key where
// the error names it: a short key that is also a word of the message
// ("lock", "1", "on") garbles the recorded error — "dflock" becomes
// "df<key>", the server address loses digits — and RecordError's
// exception.type names the wrapper, *dflockotel.keylessError, instead of
// dflock's *dflock.Error.
// Only where dflock's errors show the key is it replaced: a short key's
// bytes elsewhere in the text stay (they are not the key), and the
// exception's type is the error's, not a wrapper's.
func TestKeyAttributeOffLeavesTheRestOfTheErrorAndItsType(t *testing.T) {
	h := newHarness(t, []Option{WithKeyAttribute(false)})
	ctx := testCtx(t)
	const key = "lock"
	l, err := h.c.Lock(ctx, key)
	require.NoError(t, err)
	_, err = h.c.Lock(ctx, key, dflock.AcquireTimeout(50*time.Millisecond))
	require.ErrorIs(t, err, dflock.ErrTimeout)
	require.NoError(t, l.Release(ctx))
	t.Logf("error: %v", err)
	for _, s := range spanTexts(h.spans.Ended()) {
		if strings.Contains(s, "df<key>") || strings.Contains(s, "keyless") {
			t.Errorf("span text garbled: %q", s)
		}
	}
	texts := strings.Join(spanTexts(h.spans.Ended()), "\n")
	require.Contains(t, texts, "exception.type=*dflock.Error")
	require.Contains(t, texts, `exception.message=dflock: lock "<key>" on `)
}
