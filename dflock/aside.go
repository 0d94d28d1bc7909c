package dflock

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/dflock-sdk/go/pool"
	"github.com/dflock-sdk/go/wire"
)

// bgJobs runs best-effort work that outlives the call that began it:
// releases sent aside and the withdrawal of ticket places whose caller gave
// up. Such work must not be cut short by Close — what it gives back would
// stay held by nobody on a server with auto-release off — but must not hold
// Close up either: Close lets the jobs run until its own release deadline,
// beside its own releases, then ends their context and waits for them
// before it closes the connections.
type bgJobs struct {
	ctx    context.Context // ended by stop
	cancel context.CancelFunc

	mu      sync.Mutex
	stopped bool
	running int // jobs started and not returned
	wg      sync.WaitGroup
}

func newBGJobs() *bgJobs {
	j := &bgJobs{}
	j.ctx, j.cancel = context.WithCancel(context.Background())
	return j
}

// start runs fn on a goroutine of its own, with a context that ends when
// Close's release deadline passes, and reports false (running nothing) once
// Close has stopped the jobs — but while stop waits for running jobs,
// before the deadline, it still starts what they (or a reader answering
// for them) start: a release one of them sends aside is part of the work
// Close waits for. (wg's counter is then above zero, so Add is legal
// during stop's Wait.)
func (j *bgJobs) start(fn func(ctx context.Context)) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.stopped && (j.running == 0 || j.ctx.Err() != nil) {
		return false
	}
	j.running++
	j.wg.Add(1)
	go func() {
		defer j.wg.Done()
		defer func() {
			j.mu.Lock()
			j.running--
			j.mu.Unlock()
		}()
		fn(j.ctx)
	}()
	return true
}

// stop refuses new jobs but those of running jobs, ends the running ones'
// context at deadline (at the latest), and waits for them.
func (j *bgJobs) stop(deadline time.Time) {
	t := time.AfterFunc(time.Until(deadline), j.cancel)
	defer t.Stop()
	j.mu.Lock()
	j.stopped = true
	j.mu.Unlock()
	j.wg.Wait()
	j.cancel()
}

// asideReleases queues a server's best-effort releases of grants whose own
// connection cannot carry them (Client.releaseAside).
type asideReleases struct {
	mu      sync.Mutex
	reqs    []asideRelease
	running bool // a flushAside job sends them
}

// asideRelease is one queued release and the time until which it is tried.
type asideRelease struct {
	req   wire.Request
	until time.Time
	again bool // answered the bare error once already
}

// Retries of releases sent aside while the server cannot be reached, and
// how long it must have been down for Close to stop them.
const (
	asideMinBackoff = 10 * time.Millisecond
	asideMaxBackoff = 200 * time.Millisecond
	asideDownGiveUp = time.Second
)

// releaseAside has a grant released, best effort, on another connection to
// srv (a release needs only the key and the token): a lease lost with its
// owning connection, or a grant read by a wait whose caller gave up before
// it was confirmed, whose connection is then closed. A server releases a
// closed connection's grants itself unless it runs with
// --auto-release-on-disconnect=false: then it keeps them, held by nobody
// until their TTL runs out. (A server that released them answers error,
// which is ignored.) It only queues, so it may run on the loss notifier:
// one background job per server sends what is queued, pipelined on a lane
// connection, retrying while the server cannot be reached, each release
// for DefaultReleaseTimeout from its queueing (a lost lease's: asideLife)
// — through Close too, until Close's own release deadline.
func (c *Client) releaseAside(srv *server, req wire.Request) {
	c.releaseAsideFor(srv, req, DefaultReleaseTimeout)
}

// maxAsideLife bounds how long a lost lease's release is tried aside
// (asideLife), as lingerFor bounds a lingering connection.
const maxAsideLife = time.Minute

// asideLife is how long the release of a lease lost with a TTL of ttl is
// tried aside: while the server may still hold it. A server unreachable
// for longer than DefaultReleaseTimeout (paused, partitioned) and running
// with auto-release off keeps the lease until a renewal's TTL runs out;
// a release given up before it resumes would leave the key held by nobody
// until then.
func asideLife(ttl time.Duration) time.Duration {
	return min(max(ttl, DefaultReleaseTimeout), maxAsideLife)
}

// releaseAsideFor is releaseAside trying req for d from now.
func (c *Client) releaseAsideFor(srv *server, req wire.Request, d time.Duration) {
	q := &srv.aside
	q.mu.Lock()
	defer q.mu.Unlock()
	q.reqs = append(q.reqs, asideRelease{req: req, until: time.Now().Add(d)})
	if q.running {
		return
	}
	q.running = c.jobs.start(func(ctx context.Context) { c.flushAside(ctx, srv) })
}

// flushAside sends srv's queued releases until none is left, each is out of
// time, or ctx (Close's deadline) ends.
func (c *Client) flushAside(ctx context.Context, srv *server) {
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
		if len(reqs) == 0 || ctx.Err() != nil {
			// Done, or what is left is out of time: given up.
			q.running = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		sctx, cancel := context.WithDeadline(ctx, until)
		failed := sendAside(sctx, srv, reqs)
		cancel()
		if len(failed) == 0 {
			backoff = asideMinBackoff
			continue
		}
		if c.closing.Load() && srv.pool.DownFor(time.Now()) >= asideDownGiveUp {
			// Closing, and the server has been down a while (its dials
			// failing): Close does not wait for a server it cannot
			// reach. (A lost lease's release is tried for up to a
			// minute, asideLife: Close would otherwise take its whole
			// deadline.) A server down for less may only have blinked —
			// the fault that broke the lease's connection resetting the
			// lane's re-dial too — and the probe reaches it again within
			// probeMinBackoff: giving up then left the lease held by
			// nobody on a server with auto-release off.
			q.mu.Lock()
			q.running = false
			q.mu.Unlock()
			return
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
		case <-ctx.Done():
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

// sendAside sends reqs in one write on a lane connection of srv (found, or
// dialled, by pool.Lane, which keeps working while the Client closes) and
// returns those that did not get through: those whose connection failed
// before they were answered, those answered the bare `error` for the first
// time (mayNotBeApplied: marked again, so that a second one is final), or
// all of them if ctx ends first. Any other refusal is an answer: the server
// no longer had the grant.
func sendAside(ctx context.Context, srv *server, reqs []asideRelease) (failed []asideRelease) {
	owner, err := srv.pool.Lane(ctx)
	if err != nil {
		return reqs
	}
	batch := make([]wire.Request, len(reqs))
	for i, r := range reqs {
		batch[i] = r.req
	}
	type result struct {
		i   int
		err error
	}
	ch := make(chan result, len(batch))
	owner.SendBatch(batch, func(i int, r wire.Reply, err error) {
		// The lane may have been timed out by the same pause: its
		// `error` answers this release unapplied. Once more, then final.
		if err == nil && mayNotBeApplied(r) && !reqs[i].again {
			err = errAsideAgain
		}
		ch <- result{i, err}
	})
	for range batch {
		select {
		case r := <-ch:
			if r.err != nil {
				f := reqs[r.i]
				f.again = f.again || r.err == errAsideAgain
				failed = append(failed, f)
			}
		case <-ctx.Done():
			return reqs
		}
	}
	return failed
}

// errAsideAgain marks an aside release answered the bare error the first time.
var errAsideAgain = errors.New("dflock: aside release answered error")

// lateAnswer is the answer to an acquire whose caller gave up while it was
// on its way.
type lateAnswer struct {
	r   wire.Reply
	err error
}

// settleLate gives back, in a background job (inBackground), what the late
// answer to the acquire req on conn holds (settleAnswer). An answer that
// does not come within the job's time means a stalled server (paused, say):
// an Enqueue's or a ticket wait's is then waited for longer
// (awaitOverdue), and a Lock's or Semaphore's wait's connection is left to
// linger (pool.Conn.Abandon); either is closed at once while the Client
// closes.
func (c *Client) settleLate(srv *server, conn *pool.Conn, req wire.Request, late <-chan lateAnswer,
	withdraw func(context.Context, *pool.Conn)) {
	c.inBackground(conn, func(ctx context.Context) {
		var a lateAnswer
		select {
		case a = <-late:
		case <-ctx.Done():
			// The answer was due within a second (see exchange) and has
			// not come. A socket closed now would meet the grant the
			// server makes when it resumes, and a server with auto-release
			// off would hold that for nobody until its lease ran out.
			switch {
			case c.closing.Load():
				// Close does not wait for the server: it closes.
				conn.Destroy()
			case withdraw != nil:
				// An e/se (or a ticket's w), which a linger cannot
				// settle: an e/se's answer may be `queued`, a place that
				// needs a withdrawal written on conn — closed, a server
				// before v1.15 with auto-release off would keep the place
				// and grant it to nobody.
				c.awaitOverdue(srv, conn, req, late, withdraw)
				return
			default:
				// A wait's answer: a grant is read by the lingering
				// connection and released (a minute at most); any other
				// answer needs nothing.
				conn.Abandon()
			}
			// Sent aside, which this job's own running lets start while
			// Close stops the jobs; after Close's deadline nothing can be.
			c.releaseGrantIn(srv, req, awaitLate(late))
			return
		}
		c.settleAnswer(ctx, srv, conn, req, a, withdraw)
	})
}

// settleAnswer gives back what a, the answer to the acquire req on conn
// that its caller gave up, holds: a grant, released on the same connection;
// a queue place (e/se), given to withdraw; or nothing, and conn goes back to
// the pool.
func (c *Client) settleAnswer(ctx context.Context, srv *server, conn *pool.Conn, req wire.Request, a lateAnswer,
	withdraw func(context.Context, *pool.Conn)) {
	switch {
	case a.err != nil:
		conn.Destroy()
	case a.r.Status == wire.StatusQueued && withdraw != nil:
		withdraw(ctx, conn)
	case a.r.Status == wire.StatusOK || a.r.Status == wire.StatusAcquired:
		c.giveBackUntrackable(ctx, srv, conn, req, a.r)
	default:
		giveBack(conn, a.r)
	}
}

// overdueWait bounds how long awaitOverdue waits for a stalled server's
// answer to an Enqueue, as lingerFor bounds a lingering connection's.
const overdueWait = time.Minute

// awaitOverdue waits on, in a job of its own that Close ends at once, for
// the answer to req (an e/se, or a ticket's w) on conn, overdue on a
// stalled server, and settles it (settleAnswer) when it comes. A
// connection kept from its pool costs what a lingering one does, for as
// long.
func (c *Client) awaitOverdue(srv *server, conn *pool.Conn, req wire.Request, late <-chan lateAnswer,
	withdraw func(context.Context, *pool.Conn)) {
	ok := c.jobs.start(func(jctx context.Context) {
		t := time.NewTimer(overdueWait)
		defer t.Stop()
		select {
		case a := <-late:
			ctx, cancel := context.WithTimeout(jctx, DefaultReleaseTimeout)
			defer cancel()
			c.settleAnswer(ctx, srv, conn, req, a, withdraw)
			conn.AwaitReader(time.Second)
			return
		case <-t.C:
		case <-c.ctx.Done(): // Close
		}
		conn.Destroy()
		c.releaseGrantIn(srv, req, awaitLate(late))
		conn.AwaitReader(time.Second)
	})
	if !ok {
		conn.Destroy()
	}
}

// releaseLateGrant watches late, the answer to req on a wait-pool
// connection withdrawn (pool.Conn.Withdraw) because its caller gave up.
// The reader may have read a grant just before the withdrawal (it takes the
// call off the queue under the connection's lock, then delivers outside
// it): that grant reaches late, not the pool's OnReleaseLost, and is
// released aside here. late is called exactly once, and promptly after the
// withdrawal: by the reader, or by the withdrawal itself (with the error).
// The job then lasts while the half-closed connection is still read — a
// grant that crossed the withdrawal goes to OnReleaseLost, whose release
// aside may start during Close only while a job runs — so that Close, up
// to its deadline, waits for the server to close its side too.
func (c *Client) releaseLateGrant(srv *server, conn *pool.Conn, req wire.Request, late <-chan lateAnswer) {
	// (Refused once Close has stopped the jobs: the pools' Close, next,
	// closes the socket.)
	c.jobs.start(func(ctx context.Context) {
		c.releaseGrantIn(srv, req, awaitLate(late))
		select {
		case <-conn.ReaderDone():
		case <-ctx.Done():
		}
	})
}

// awaitLate returns the answer late receives after its connection was
// destroyed: promptly, since the destroy or the reader delivers it without
// waiting on anything. The bound is a guard, not a timing.
func awaitLate(late <-chan lateAnswer) lateAnswer {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case a := <-late:
		return a
	case <-t.C:
		return lateAnswer{err: ErrClosed}
	}
}

// releaseGrantIn releases aside the grant a holds, if it holds one: the
// answer to req, read for nobody.
func (c *Client) releaseGrantIn(srv *server, req wire.Request, a lateAnswer) {
	if a.err == nil && (a.r.Status == wire.StatusOK || a.r.Status == wire.StatusAcquired) && a.r.Token != "" {
		c.releaseAside(srv, wire.ReleaseRequest(req.Key, a.r.Token, req.Limit > 0))
	}
}

// giveBackUntrackable releases r, a grant made on conn for req that nobody
// will hold — its caller gave up, or checkGrant refused it (a lease out of
// range: the server still holds the lock, until its TTL with auto-release
// off) — on conn, as releaseOn does. A grant without a token, or with one
// that cannot be sent back, is dropped with conn, all that can be done.
func (c *Client) giveBackUntrackable(ctx context.Context, srv *server, conn *pool.Conn, req wire.Request, r wire.Reply) {
	rel := wire.ReleaseRequest(req.Key, r.Token, req.Limit > 0)
	if r.Token == "" || rel.Validate() != nil {
		conn.Destroy()
		return
	}
	c.releaseOn(ctx, srv, conn, rel)
}

// giveBackUntrackableLater is giveBackUntrackable in a background job. A
// function of its own: a closure in exchange, capturing its reply and
// request, would move them to the heap on every call.
func (c *Client) giveBackUntrackableLater(srv *server, conn *pool.Conn, req wire.Request, r wire.Reply) {
	c.inBackground(conn, func(ctx context.Context) { c.giveBackUntrackable(ctx, srv, conn, req, r) })
}

// releaseOn sends rel, the release of a grant made on conn, on conn, which
// then goes back to the pool; if conn cannot carry it, the release is sent
// aside and conn closed.
func (c *Client) releaseOn(ctx context.Context, srv *server, conn *pool.Conn, rel wire.Request) {
	r, err := sendOn(ctx, conn, rel)
	if err == nil && r.Status == wire.StatusOK {
		conn.Release()
		return
	}
	if err != nil || mayNotBeApplied(r) {
		c.releaseAside(srv, rel)
	}
	conn.Destroy()
}

// mayNotBeApplied reports whether r, the answer to a release, leaves the
// release possibly not done: the bare `error` is what the server answers
// a token it does not know, but also a request that reached it after its
// read deadline (a server paused past it), which it then did not apply
// before closing the connection — keeping the grant, with auto-release
// off. A release so answered is sent again aside: for a token the server
// does not know, that costs one more refused request. (sendAside sends it
// once more — its lane may have been timed out by the same pause — then
// takes it as final.)
func mayNotBeApplied(r wire.Reply) bool { return r.Status == wire.StatusError }

// inBackground runs fn, which settles conn, as a background job bounded by
// DefaultReleaseTimeout (and Close's deadline); once Close has stopped the
// jobs, conn is closed instead. If fn destroyed conn, the job lasts until
// conn's reader has exited: a grant the reader read just before the close
// goes to OnReleaseLost, whose release aside may start only while a job
// runs once Close is stopping the jobs (bgJobs.start).
func (c *Client) inBackground(conn *pool.Conn, fn func(ctx context.Context)) {
	ok := c.jobs.start(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, DefaultReleaseTimeout)
		defer cancel()
		fn(ctx)
		conn.AwaitReader(time.Second)
	})
	if !ok {
		conn.Destroy()
	}
}
