package dflock

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// A grant stating a longer lease than the one asked for (a broken server:
// dflockd applies the lease asked for) is tracked, and renewed, for the
// lease asked for. Believed, every renewal asked for the server's figure —
// here ~292 years for 10 s — and so made the bogus lease real.
func TestGrantLongerThanAskedIsTrackedAndRenewedAsAsked(t *testing.T) {
	for _, tc := range []struct {
		name       string
		grantAfter time.Duration // the grant comes from a wait, confirmed by a renewal
		opts       []Option
	}{
		{name: "lane"},
		{name: "wait", grantAfter: 300 * time.Millisecond, opts: []Option{WithServerReadTimeout(400 * time.Millisecond), WithKeepAlive(100 * time.Millisecond)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, seen := renewalAnswerServer(t, "9223372036", tc.grantAfter, "ok 10")
			c := newClient(t, []string{addr}, tc.opts...)
			ctx := testCtx(t)
			l, err := c.Lock(ctx, "k", LeaseTTL(10*time.Second))
			require.NoError(t, err)
			defer l.Release(ctx)
			require.NoError(t, l.Renew(ctx))
			assert.Equal(t, 10*time.Second, l.TTL())
			var renewals []string
			for _, s := range seen() {
				if strings.HasPrefix(s, "n ") {
					renewals = append(renewals, s)
					assert.Equal(t, "n k tok 10", s)
				}
			}
			assert.NotEmpty(t, renewals)
		})
	}
}

// The same for a ticket's grant: the w grants the lease the e asked for.
func TestTicketGrantLongerThanAskedIsRenewedAsAsked(t *testing.T) {
	var mu sync.Mutex
	var renewals []string
	addr := testutil.ServeRequests(t, func(nc net.Conn, f [3]string) bool {
		out := "ok"
		switch f[0] {
		case "e":
			out = "queued"
		case "w":
			out = "ok tok 9223372036"
		case "n":
			mu.Lock()
			renewals = append(renewals, strings.Join(f[:], " "))
			mu.Unlock()
			out = "ok 10"
		}
		_, err := nc.Write([]byte(out + "\n"))
		return err == nil
	})
	c := newClient(t, []string{addr})
	ctx := testCtx(t)
	tk, err := c.Enqueue(ctx, "k", LeaseTTL(10*time.Second))
	require.NoError(t, err)
	l, err := tk.Wait(ctx)
	require.NoError(t, err)
	defer l.Release(ctx)
	require.NoError(t, l.Renew(ctx))
	assert.Equal(t, 10*time.Second, l.TTL())
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, renewals)
	for _, s := range renewals {
		assert.Equal(t, "n k tok 10", s)
	}
}
