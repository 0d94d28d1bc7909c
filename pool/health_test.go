package pool

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Query's doc: "ctx bounds dial, handshake and exchange; Close interrupts
// it." That holds in the handshake too: a Query whose handshake the server
// does not answer (stalled) ends at Close, with ErrClosed (it once ran on
// until DialTimeout and failed with ErrUnavailable).
func TestCloseInterruptsQueryInItsHandshake(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	p, err := New(Config{Addr: srv.Addr(), DialTimeout: 3 * time.Second})
	require.NoError(t, err)
	defer p.Close()
	resume := srv.Stall(0) // TCP connects (kernel backlog); the handshake gets no answer
	defer resume()

	done := make(chan error, 1)
	go func() {
		_, err := p.Query(context.Background(), statsReq, 0)
		done <- err
	}()
	time.Sleep(200 * time.Millisecond) // the Query is in its handshake
	begin := time.Now()
	p.Close()
	select {
	case err := <-done:
		require.ErrorIs(t, err, ErrClosed)
	case <-time.After(time.Second):
		err := <-done
		t.Fatalf("Close did not interrupt Query: it returned %v after %v", err, time.Since(begin).Round(time.Millisecond))
	}
}
