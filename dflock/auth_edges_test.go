package dflock

// Authentication edge cases found by review: what a token may leak through,
// and what a refusal says.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// "The token is never logged": a Client handed to a logger or printed
// with fmt (a common debugging move: slog.Any("client", c)) showed its
// options, the auth token among them, in clear; so did a *pool.Pool.
func TestClientFormatHidesAuthToken(t *testing.T) {
	const token = "s3cret-Token-42"
	c := newClient(t, []string{"127.0.0.1:1"}, WithAuthToken(token))
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		assert.NotContains(t, fmt.Sprintf(verb, c), token, verb)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("client", "c", c)
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("client", "c", c)
	assert.NotContains(t, buf.String(), token, "slog")
	for _, verb := range []string{"%v", "%+v", "%#v"} {
		assert.NotContains(t, fmt.Sprintf(verb, c.servers[0].pool), token, "pool.Pool "+verb)
	}
}

// WithAuthToken accepts tokens up to 65,536 bytes, but servers before
// v1.15 cap every line at 256 bytes: a longer token (a JWT, say) is
// refused by such a server however exactly it matches the server's own
// (-auth-token-file accepts it). The client knows the token's length, yet
// reported a plain "authentication failed" and logged "server refused the
// auth token", which sent the user comparing tokens that are equal.
func TestLongTokenOnOldServerSaysWhy(t *testing.T) {
	tok := strings.Repeat("t", 300)
	srv := newServer(t, testutil.Config{Version: testutil.V1_10, AuthToken: tok})
	c := newClient(t, addrsOf(srv), WithAuthToken(tok))
	_, err := c.TryLock(testCtx(t), "k")
	require.ErrorIs(t, err, ErrAuth)
	assert.Contains(t, err.Error(), "256", "the error does not point at the old servers' 256-byte line cap: %v", err)
}

// A server that goes down and comes back refusing the token (restarted
// with another one): the probe's refused dial marks it up ("reachable but
// refusing"), and Snapshot then reported it Up since the first dial before
// the outage, as if it had never been down. ServerSnapshot.Since is
// documented as "for Up, the first successful dial after the server was
// last down (zero while nothing was dialled yet)": no dial has succeeded
// since the outage.
func TestSinceAfterAuthRefusingRestart(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{AuthToken: "s3cret"})
	addr := srv.Addr()
	c := newClient(t, []string{addr}, WithAuthToken("s3cret"))
	ctx := testCtx(t)
	l, err := c.TryLock(ctx, "k")
	require.NoError(t, err)
	_ = l
	upBefore := c.Snapshot().Servers[0].Since
	require.False(t, upBefore.IsZero())

	require.NoError(t, srv.Close())
	require.Eventually(t, func() bool { return !c.Snapshot().Servers[0].Up }, 5*time.Second, time.Millisecond)
	downAt := c.Snapshot().Servers[0].Since

	_ = newServer(t, testutil.Config{Addr: addr, AuthToken: "rotated"})
	require.Eventually(t, func() bool { return c.Snapshot().Servers[0].Up }, 5*time.Second, time.Millisecond)
	_, err = c.TryLock(ctx, "k2")
	require.ErrorIs(t, err, ErrAuth)

	s := c.Snapshot().Servers[0]
	require.True(t, s.Up)
	require.False(t, s.Since.Before(downAt),
		"Up since %v, before the outage began at %v: no dial has succeeded since", s.Since, downAt)
}

// The same when the very first dial has its token refused: the server was
// reached, so Snapshot says Up since then, not since the zero time (found by
// a later review).
func TestSinceAfterFirstDialAuthRefused(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{AuthToken: "right"})
	c := newClient(t, addrsOf(srv), WithAuthToken("wrong"))
	_, err := c.TryLock(testCtx(t), "k")
	require.ErrorIs(t, err, ErrAuth)
	s := c.Snapshot().Servers[0]
	require.True(t, s.Up)
	require.False(t, s.Since.IsZero(), "a dial reached the server and had its token refused; Since is still zero")
}

// The same for the other two auth misconfigurations, which the pool turns
// into ErrAuth too: no token for a server that requires one (it refuses the
// ping), and a token for a server without auth (it answers the auth line
// the bare error) (found by review: only the refused token was recorded).
func TestSinceAfterFirstDialOtherAuthRefusals(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  testutil.Config
		opts []Option
	}{
		{"no token, auth server", testutil.Config{AuthToken: "right"}, nil},
		{"token, server without auth", testutil.Config{}, []Option{WithAuthToken("tok")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, tc.cfg)
			c := newClient(t, addrsOf(srv), tc.opts...)
			_, err := c.TryLock(testCtx(t), "k")
			require.ErrorIs(t, err, ErrAuth)
			s := c.Snapshot().Servers[0]
			require.True(t, s.Up)
			require.False(t, s.Since.IsZero(), "a dial reached the server and had its auth refused; Since is still zero")
		})
	}
}

// A refused auth token is an auth failure, whatever the token: the server
// was reached, so the error does not match ErrServerUnavailable and the
// server is not marked down (TestTokenForAServerWithoutAuthIsErrAuth,
// TestAuthFailureIsErrAuth). A token that happens to occur in the text of
// the handshake's own error ("dflock", the package's name, as a developer's
// token; or a word such as "server" or "auth") is redacted out of that
// text; the redacted error is no *ServerError, and the handshake classified
// it as a network failure (marking the server down) before it used errors.Is.
func TestRefusedTokenFoundInTheErrorTextIsStillAnAuthFailure(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{AuthToken: "the-real-one"})
	for _, token := range []string{"not-it", "dflock", "server", "authentication"} {
		t.Run(token, func(t *testing.T) {
			c := newClient(t, addrsOf(srv), WithAuthToken(token))
			ctx := testCtx(t)
			_, err := c.TryLock(ctx, "k")
			t.Logf("%v", err)
			require.ErrorIs(t, err, ErrAuth)
			assert.NotErrorIs(t, err, ErrServerUnavailable)
			assert.True(t, c.Snapshot().Servers[0].Up, "a server that refused the token was marked down")
			_, err = c.TryLock(ctx, "k")
			t.Logf("second call: %v", err)
			require.ErrorIs(t, err, ErrAuth)
			assert.NotErrorIs(t, err, ErrServerUnavailable)
		})
	}
}

// A service retrying against a server that refuses its token: every Lock
// and TryLock dialled again (the lane's slots, then a wait-pool
// connection), thousands of dials a second, each refused and held 100 ms by
// dflockd. Now refusals hold dials back; and once the server takes the
// token (restarted with it here), calls succeed again within the hold.
func TestAuthRefusedCallsDoNotDialEachTime(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{AuthToken: "old"})
	addr := srv.Addr()
	c := newClient(t, []string{addr}, WithAuthToken("new"))
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var calls atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for ctx.Err() == nil {
				var err error
				if g%2 == 0 {
					_, err = c.Lock(ctx, "k")
				} else {
					_, err = c.TryLock(ctx, "k")
				}
				if ctx.Err() == nil && !errors.Is(err, ErrAuth) {
					t.Errorf("a call against a server refusing the token: %v", err)
				}
				if calls.Add(1) == 2000 {
					cancel()
				}
			}
		})
	}
	wg.Wait()
	s := c.Snapshot().Servers[0]
	t.Logf("%d calls, %d dials", calls.Load(), s.DialFailures)
	assert.LessOrEqual(t, s.DialFailures, int64(20), "refused calls are not held back")
	assert.True(t, s.Up, "a refusing server was marked down")
	assert.True(t, s.AuthRefused, "Snapshot does not say the server refuses the token")

	require.NoError(t, srv.Close())
	newServer(t, testutil.Config{Addr: addr, AuthToken: "new"})
	ctx2 := testCtx(t)
	require.Eventually(t, func() bool {
		l, err := c.TryLock(ctx2, "k")
		if err != nil {
			assert.ErrorIs(t, err, ErrAuth)
			return false
		}
		assert.NoError(t, l.Release(ctx2))
		return true
	}, 10*time.Second, 5*time.Millisecond, "a server that now takes the token is still refused")
	assert.False(t, c.Snapshot().Servers[0].AuthRefused, "a dial succeeded, yet Snapshot says the token is refused")
}
