package dflock

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dflock-sdk/go/testutil"
	"github.com/stretchr/testify/require"
)

// At the server's --max-subscriptions, an established subscription must
// not lose its place to a Listen that happens to race the reconnect of its
// listener connection: before the break that Listen would have been
// refused, and the established subscription would otherwise be left
// retrying (receiving nothing) for as long as the newcomer lives.
// The re-listens of established patterns go before new listens.
func TestSignalRelistenAtCapKeepsEstablishedSubscription(t *testing.T) {
	t.Parallel()
	lost := 0
	const rounds = 8
	for round := range rounds {
		func() {
			srv := newServer(t, testutil.Config{MaxSubscriptions: 1})
			c := newClient(t, addrsOf(srv), WithKeepAlive(time.Second))
			pub := newClient(t, addrsOf(srv))
			ctx := testCtx(t)
			a, err := c.Listen(ctx, "p")
			require.NoError(t, err)
			defer a.Close()
			require.Equal(t, 1, emit(t, pub, "p", "before"))
			require.Equal(t, "before", next(t, a).Payload)

			// Stall, then cut the connections: the re-dial's handshake
			// waits for the stall to end, and a Listen made meanwhile joins
			// the re-listen batch.
			resume := srv.Stall(0)
			srv.DropConnections()
			_, err = a.Next(ctx)
			require.ErrorIs(t, err, ErrSignalGap)
			type res struct {
				s   *Subscription
				err error
			}
			done := make(chan res, 1)
			go func() {
				lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				s, err := c.Listen(lctx, "q")
				done <- res{s, err}
			}()
			time.Sleep(200 * time.Millisecond) // the Listen is waiting on the listener
			resume()
			r := <-done
			if r.err == nil {
				defer r.s.Close()
			} else {
				require.True(t, errors.Is(r.err, ErrNotSupported), "%v", r.err)
			}
			// The established subscription must be served again.
			ok := waitFor(ctx, 2*time.Second, func() bool {
				n, err := pub.Emit(ctx, "p", "after")
				return err == nil && n == 1
			})
			if !ok {
				lost++
				t.Logf("round %d: Listen(q) err=%v; established Listen(p) is no longer served; server has %+v", round, r.err, srv.Stats().SignalChannels)
			}
		}()
	}
	require.Zero(t, lost, "rounds of %d where a racing new Listen took the established subscription's place", rounds)
}
