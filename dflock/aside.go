package dflock

import (
	"context"
	"sync"
	"time"

	"github.com/dflock-sdk/go/pool"
	"github.com/dflock-sdk/go/wire"
)

// asideReleases queues a server's best-effort releases of grants whose own
// connection cannot carry them (Client.releaseAside).
type asideReleases struct {
	mu      sync.Mutex
	reqs    []wire.Request
	running bool // a flushAside goroutine sends them
}

// Retries of releases sent aside while the server cannot be reached.
const (
	asideMinBackoff = 10 * time.Millisecond
	asideMaxBackoff = 200 * time.Millisecond
)

// releaseAside has a grant released, best effort, on another connection to
// srv (a release needs only the key and the token): a lease lost with its
// owning connection, or a grant read by a wait whose caller gave up before
// it was confirmed, whose connection is then closed. A server releases a
// closed connection's grants itself unless it runs with
// --auto-release-on-disconnect=false: then it keeps them, held by nobody
// until their TTL runs out. (A server that released them answers error,
// which is ignored.) It only queues, so it may run on the loss notifier:
// one goroutine per server sends what is queued, pipelined on a lane
// connection, retrying while the server cannot be reached, for at most
// DefaultReleaseTimeout and never past Close.
func (c *Client) releaseAside(srv *server, req wire.Request) {
	q := &srv.aside
	q.mu.Lock()
	defer q.mu.Unlock()
	q.reqs = append(q.reqs, req)
	if q.running || !c.enter() { // enter: Close waits for the goroutine
		return
	}
	q.running = true
	go c.flushAside(srv)
}

func (c *Client) flushAside(srv *server) {
	defer c.leave()
	ctx, cancel := context.WithTimeout(c.ctx, DefaultReleaseTimeout)
	defer cancel()
	q := &srv.aside
	backoff := asideMinBackoff
	var retry *time.Timer
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		q.mu.Lock()
		reqs := q.reqs
		q.reqs = nil
		if len(reqs) == 0 || ctx.Err() != nil {
			// Done, or out of time: what is left is given up.
			q.running = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		// The first goes through Do, which finds (or dials) a lane
		// connection; the rest follow on that connection in one write.
		_, owner, err := srv.pool.Do(ctx, reqs[0])
		if err == nil {
			reqs = sendAll(ctx, owner, reqs[1:])
		}
		if len(reqs) == 0 {
			backoff = asideMinBackoff
			continue
		}
		// The server cannot be reached for now (the fault that broke the
		// lease's connection broke the lane too, a lane being dialled
		// again): keep what did not get through, in order, and try again
		// shortly.
		q.mu.Lock()
		q.reqs = append(reqs, q.reqs...)
		q.mu.Unlock()
		if retry == nil {
			retry = time.NewTimer(backoff)
		} else {
			retry.Reset(backoff)
		}
		select {
		case <-retry.C:
		case <-ctx.Done():
		}
		backoff = min(2*backoff, asideMaxBackoff)
	}
}

// sendAll sends reqs on owner in one write and returns those whose
// connection failed before they were answered (all of them if ctx ends
// first). A refusal is an answer: the server no longer had the grant.
func sendAll(ctx context.Context, owner pool.Owner, reqs []wire.Request) (failed []wire.Request) {
	if len(reqs) == 0 {
		return nil
	}
	type result struct {
		i   int
		err error
	}
	ch := make(chan result, len(reqs))
	owner.SendBatch(reqs, func(i int, _ wire.Reply, err error) { ch <- result{i, err} })
	for range reqs {
		select {
		case r := <-ch:
			if r.err != nil {
				failed = append(failed, reqs[r.i])
			}
		case <-ctx.Done():
			return reqs
		}
	}
	return failed
}
