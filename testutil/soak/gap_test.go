package soak

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/dflock"
	"github.com/dflock-sdk/go/testutil"
)

// TestSignalGapAfterSignalsQueuedBehindAnEarlierGap is the regression test
// of a client bug the soak's investigation found: a subscription's gap of a
// server was merged into that server's previous gap while the previous one
// still waited in the overflow queue, even when signals from the new
// connection had been queued after it. The consumer then read gap, a, b and
// could not tell that signals were lost between a and b. (Subscription.gap
// now merges only into a marker with no signal behind it.)
//
// The subscriber's Client reaches the server through a proxy, so that its
// listener connection alone can be broken and kept from reconnecting; the
// emitter dials the server directly.
func TestSignalGapAfterSignalsQueuedBehindAnEarlierGap(t *testing.T) {
	srv, err := testutil.Start(testutil.Config{Version: testutil.V1_16})
	require.NoError(t, err)
	defer srv.Close()
	p, err := testutil.NewProxy(srv.Addr())
	require.NoError(t, err)
	defer p.Close()
	lc, err := dflock.New([]string{p.Addr()})
	require.NoError(t, err)
	defer lc.Close()
	ec, err := dflock.New([]string{srv.Addr()})
	require.NoError(t, err)
	defer ec.Close()
	ctx := context.Background()
	// sub is not read until the end, so that its overflow queue is in use;
	// watch, a second subscription of the same pattern on the same
	// listener connection, is read at once to see what has arrived.
	sub, err := lc.Listen(ctx, "ev.>", dflock.Buffer(1024))
	require.NoError(t, err)
	defer sub.Close()
	watch, err := lc.Listen(ctx, "ev.>")
	require.NoError(t, err)
	defer watch.Close()

	seq, watchGaps := 0, 0
	// arrive emits payload.N until one of them reaches watch.
	arrive := func(payload string) {
		for {
			seq++
			want := fmt.Sprintf("%s.%d", payload, seq)
			if _, err := ec.Emit(ctx, "ev.1", want); err != nil {
				continue
			}
			wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			for {
				sig, err := watch.Next(wctx)
				if errors.Is(err, dflock.ErrSignalGap) {
					// A break's marker; watch, read at once, may also
					// get its resumed marker after the re-listen.
					if ge := (*dflock.GapError)(nil); errors.As(err, &ge) && !ge.Resumed {
						watchGaps++
					}
					continue
				}
				if err != nil || sig.Payload == want {
					cancel()
					if err == nil {
						return
					}
					break
				}
			}
		}
	}
	for i := range 40 { // fill sub's C() (32) and start its overflow queue
		arrive(fmt.Sprintf("pre%d", i))
	}
	p.ResetAll() // gap 1, queued in sub's overflow
	arrive("a")  // on the new listener connection, queued after gap 1
	p.RefuseNew(true)
	p.ResetAll() // gap 2: the connection that delivered "a" broke
	for {        // emitted while nobody listens: lost
		if n, err := ec.Emit(ctx, "ev.1", "lost"); err == nil && n == 0 {
			break
		}
	}
	p.RefuseNew(false)
	arrive("b")

	// watch, whose buffer never filled, saw both breaks. (sub, read only
	// now, took no marker before a re-listen: it gets no resumed one.)
	require.Equal(t, 2, watchGaps)

	var got []string
	for len(got) == 0 || got[len(got)-1] != "b" {
		sig, err := sub.Next(ctx)
		switch {
		case errors.Is(err, dflock.ErrSignalGap):
			got = append(got, "gap")
		case err != nil:
			t.Fatal(err)
		case strings.HasPrefix(sig.Payload, "a.") || strings.HasPrefix(sig.Payload, "b."):
			got = append(got, sig.Payload[:1])
		}
	}
	// Between the a that arrived and the b that arrived, the connection
	// that carried a broke and "lost" was emitted: sub must see a gap.
	require.Equal(t, []string{"gap", "a", "gap", "b"}, got, "every a.N and b.N that sub received, and its gaps")
}
