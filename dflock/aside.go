package dflock

import (
	"context"
	"sync"
	"time"

	"github.com/dflock-sdk/go/wire"
)

// asideReleases queues a server's best-effort releases of grants whose own
// connection cannot carry them (Client.releaseAside).
type asideReleases struct {
	mu      sync.Mutex
	reqs    []asideRelease
	running bool // a flushAside goroutine sends them
}

// asideRelease is one queued release and the time until which it is tried.
type asideRelease struct {
	req   wire.Request
	until time.Time
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
// connection, retrying while the server cannot be reached, each release
// for DefaultReleaseTimeout from its queueing, and never past Close.
func (c *Client) releaseAside(srv *server, req wire.Request) {
	q := &srv.aside
	q.mu.Lock()
	defer q.mu.Unlock()
	q.reqs = append(q.reqs, asideRelease{req: req, until: time.Now().Add(DefaultReleaseTimeout)})
	if q.running || !c.enter() { // enter: Close waits for the goroutine
		return
	}
	q.running = true
	go c.flushAside(srv)
}

func (c *Client) flushAside(srv *server) {
	defer c.leave()
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
		reqs, until := liveReleases(q.reqs, time.Now())
		q.reqs = nil
		if len(reqs) == 0 || c.ctx.Err() != nil {
			// Done, or what is left is out of time: given up.
			q.running = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		ctx, cancel := context.WithDeadline(c.ctx, until)
		failed := sendAside(ctx, srv, reqs)
		cancel()
		if len(failed) == 0 {
			backoff = asideMinBackoff
			continue
		}
		// The server cannot be reached for now (the fault that broke the
		// lease's connection broke the lane too, a lane being dialled
		// again): keep what did not get through, in order, and try again
		// shortly.
		q.mu.Lock()
		q.reqs = append(failed, q.reqs...)
		q.mu.Unlock()
		if retry == nil {
			retry = time.NewTimer(backoff)
		} else {
			retry.Reset(backoff)
		}
		select {
		case <-retry.C:
		case <-c.ctx.Done():
		}
		backoff = min(2*backoff, asideMaxBackoff)
	}
}

// liveReleases returns, in a new slice, the releases still to be tried at
// now, and the latest time until which one of them is.
func liveReleases(reqs []asideRelease, now time.Time) (live []asideRelease, until time.Time) {
	for _, r := range reqs {
		if now.Before(r.until) {
			live = append(live, r)
			if r.until.After(until) {
				until = r.until
			}
		}
	}
	return live, until
}

// sendAside sends reqs on a lane connection of srv and returns those that
// did not get through: the first goes through Do, which finds (or dials) a
// lane connection, the rest follow on that connection in one write, and
// those whose connection failed before they were answered (all of them if
// ctx ends first) are returned. A refusal is an answer: the server no
// longer had the grant.
func sendAside(ctx context.Context, srv *server, reqs []asideRelease) (failed []asideRelease) {
	_, owner, err := srv.pool.Do(ctx, reqs[0].req)
	if err != nil {
		return reqs
	}
	rest := reqs[1:]
	if len(rest) == 0 {
		return nil
	}
	batch := make([]wire.Request, len(rest))
	for i, r := range rest {
		batch[i] = r.req
	}
	type result struct {
		i   int
		err error
	}
	ch := make(chan result, len(batch))
	owner.SendBatch(batch, func(i int, _ wire.Reply, err error) { ch <- result{i, err} })
	for range batch {
		select {
		case r := <-ch:
			if r.err != nil {
				failed = append(failed, rest[r.i])
			}
		case <-ctx.Done():
			return rest
		}
	}
	return failed
}
