package dflock

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A queue-group connection takes the pushes that come before its listen's
// answer (TestGroupJobPushedBeforeTheListensAnswerIsDelivered). On a
// re-listen after a break, such a job reaches an established member after
// its GapError.Resumed marker, which docs/signals.md promises comes
// "before anything that server delivers afterwards" (it came after: the
// marker was queued only when the ok was read; review "rv5").
func TestGroupJobBeforeAReListensAnswerComesAfterTheResumedMarker(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	listens := 0
	first := make(chan net.Conn, 1)
	goAhead := make(chan struct{})
	addr := testutil.ServeRaw(t, func(nc net.Conn) {
		br := bufio.NewReader(nc)
		for {
			var f [3]string
			for i := range f {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				f[i] = strings.TrimRight(line, "\r\n")
			}
			reply := "ok\n"
			if f[0] == "listen" {
				mu.Lock()
				listens++
				n := listens
				mu.Unlock()
				if n == 1 {
					first <- nc
				} else {
					<-goAhead
					reply = "sig jobs early\nok\n"
				}
			}
			if _, err := nc.Write([]byte(reply)); err != nil {
				return
			}
		}
	})
	c := newClient(t, []string{addr})
	ctx := testCtx(t)
	s, err := c.Listen(ctx, "jobs", Group("g"))
	require.NoError(t, err)
	defer s.Close()
	(<-first).Close() // the listener connection breaks
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = s.Next(sctx) // the consumer takes the first marker during the outage
	require.ErrorIs(t, err, ErrSignalGap)
	close(goAhead)
	var got []string
	for len(got) < 2 {
		sig, err := s.Next(sctx)
		switch {
		case err != nil:
			require.ErrorIs(t, err, ErrSignalGap)
			got = append(got, "resumed-marker")
		default:
			got = append(got, sig.Payload)
		}
	}
	require.Equal(t, []string{"resumed-marker", "early"}, got)
}
