package pool

import (
	"sync"
	"sync/atomic"

	"github.com/dflock-sdk/go/wire"
)

// call is one request awaiting its reply. Calls are recycled through
// callPool; a call belongs to exactly one party at a time (sender until
// enqueued, then the reader/failer, then — for callWait — the waiter once
// delivered).
type call struct {
	kind     uint8
	blocking bool
	cmd      wire.Command
	state    atomic.Uint32
	// done receives, for callWait only, the state that ended the wait:
	// stateDelivered from the reader (or fail), or stateEnded from the
	// pool's Lifetime (endWaits). Cap 1; at most one send per use, by
	// whoever moved state from stateWaiting.
	done  chan uint32
	reply wire.Reply
	err   error
	key   string // lane l/sl: to release an abandoned grant
	// grantKey is the key of a request that can be answered with a grant
	// (l, sl, e, se, w, sw): a grant read for it as the connection
	// breaks, when its caller gets the connection's error, goes to
	// Config.OnReleaseLost (grantLost).
	grantKey string
	cb       func(int, wire.Reply, error)
	idx      int
	// unsent: the connection broke before any byte of the request was
	// written (set by fail, before delivering, or by the writer before it
	// closes verdict), so the server never saw it.
	unsent bool
	// verdict, if set (by fail, before delivering), closes once the
	// writer has decided unsent (see conn.writing).
	verdict chan struct{}
}

const (
	callWait uint8 = iota
	callBatch
	callPing
	callDiscard
)

const (
	stateWaiting uint32 = iota
	stateAbandoned
	// stateEnded: abandoned by the pool's Lifetime (endWaits), which sent
	// the caller a token on done; such a call is never recycled.
	stateEnded
	stateDelivered
)

var callPool = sync.Pool{New: func() any { return &call{done: make(chan uint32, 1)} }}

func getCall() *call { return callPool.Get().(*call) }

func putCall(cl *call) {
	cl.reply = wire.Reply{}
	cl.err = nil
	cl.key = ""
	cl.grantKey = ""
	cl.cb = nil
	cl.idx = 0
	cl.blocking = false
	cl.unsent = false
	cl.verdict = nil
	cl.state.Store(stateWaiting)
	callPool.Put(cl)
}

func (cl *call) result() (wire.Reply, error) {
	r, err := cl.reply, cl.err
	putCall(cl)
	return r, err
}

// callQueue is a FIFO ring of calls; its storage is reused.
type callQueue struct {
	buf  []*call // len is a power of two
	head int
	n    int
}

func (q *callQueue) push(cl *call) {
	if q.n == len(q.buf) {
		nb := make([]*call, max(16, 2*len(q.buf)))
		for i := 0; i < q.n; i++ {
			nb[i] = q.buf[(q.head+i)&(len(q.buf)-1)]
		}
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.n)&(len(q.buf)-1)] = cl
	q.n++
}

// at returns the i-th call from the head; 0 <= i < q.n.
func (q *callQueue) at(i int) *call { return q.buf[(q.head+i)&(len(q.buf)-1)] }

func (q *callQueue) pop() *call {
	if q.n == 0 {
		return nil
	}
	cl := q.buf[q.head]
	q.buf[q.head] = nil
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.n--
	if q.n == 0 && len(q.buf) > maxKeepCalls {
		// A backlog passed (a stall): a connection lives for weeks and
		// need not keep its peak's ring.
		q.buf, q.head = nil, 0
	}
	return cl
}

// maxKeepCalls is the largest ring a callQueue keeps once empty.
const maxKeepCalls = 1024

// set replaces the i-th call from the head; 0 <= i < q.n.
func (q *callQueue) set(i int, cl *call) { q.buf[(q.head+i)&(len(q.buf)-1)] = cl }

// truncate keeps the first n calls; 0 <= n <= q.n.
func (q *callQueue) truncate(n int) {
	for i := n; i < q.n; i++ {
		q.set(i, nil)
	}
	q.n = n
}
