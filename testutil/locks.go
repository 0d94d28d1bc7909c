package testutil

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"slices"
	"sync"
	"time"
)

// namespace separates lock and semaphore keys from v1.14 on (§8g). v1.10
// puts both in nsShared, where a lock is a limit-1 semaphore.
type namespace uint8

const (
	nsShared namespace = iota
	nsLock
	nsSem
)

type resKey struct {
	ns  namespace
	key string
}

// enqKey is the identity of two-phase state: (connection, key) (§8d).
type enqKey struct {
	conn uint64
	res  resKey
}

// resource is one key's FIFO lock or counting semaphore.
type resource struct {
	key     resKey
	limit   int
	holders []*holder
	waiters []*waiter // FIFO; non-empty only while holders are at the limit
	// lastActive is the key's last activity, from which stats' idle_s and
	// the GC count: set when it is created and whenever it becomes idle,
	// and on V1_10 also by a release or renew that finds the key, whether
	// or not it finds the token (v1.10 touches the key before it looks the
	// token up; later servers leave a bogus token's key alone).
	lastActive time.Time
}

func (r *resource) idle() bool { return len(r.holders) == 0 && len(r.waiters) == 0 }

// holder is a granted slot. conn is the acquiring connection, which alone
// drives auto-release; renewals from elsewhere do not transfer it (§8a).
type holder struct {
	token     string
	res       *resource
	conn      uint64
	sem       bool // granted by sl/se (AuditEvent.Semaphore)
	leaseSecs int64
	lease     time.Duration
	expires   time.Time
	gone      bool      // released or expired; a lease is never resurrected
	enq       *enqState // unconsumed two-phase state that was granted this slot
}

// waiter is a queued acquirer. Blocking callers park on ready, which is
// closed once the grant (h) is recorded under the table lock.
type waiter struct {
	conn      uint64
	sem       bool
	leaseSecs int64
	lease     time.Duration
	res       *resource
	enq       *enqState // set while an `e` that answered `queued` is unconsumed
	ready     chan struct{}
	h         *holder
	// parkedAt is when its l/sl or w/sw began to wait: the server's timeout
	// for it runs from here, not from when its connection arms a timer.
	parkedAt time.Time
}

// enqState is the per-(connection, key) state left by `e`/`se` until `w`/`sw`
// consumes it. Exactly one of w (still queued) and h (granted) is set.
type enqState struct {
	key enqKey
	w   *waiter
	h   *holder
	// queued: the `e` answered `queued` (its slot, if h is set, was granted
	// later). On V1_10 such a state outlives its holder: v1.10.0 forgets a
	// two-phase state with its holder only if `e` answered `acquired` (the
	// state records no token otherwise), so `w` still finds it and answers
	// `ok` with the token it was granted, held or not (§15; said to be
	// fixed in v1.10.1).
	queued bool
}

// outcome is the result of a lock-table operation, mapped to a status word by the connection.
type outcome uint8

const (
	outGranted outcome = iota
	outQueued          // a waiter was registered; for l/sl/w/sw the caller waits on it
	outTimeout
	outMaxLocks
	outMaxWaiters
	outLimitMismatch
	outAlreadyEnqueued
	outNotEnqueued
	outLeaseExpired
	outFailed  // r/sr/n/sn refused: `error`
	outStopped // the server stopped under the request: close without a reply
)

// lockTable holds every lock and semaphore of a server behind one mutex.
// Grants to parked waiters go through per-waiter channels; expiry is handled
// by one sweeper (Server.janitor) and on the spot by acquire/enqueue/renew.
//
// Every change of a holder is reported to audit (Config.Audit) under mu, so
// the callback sees one total order; each operation reads the clock after
// taking mu, so the reported times never go backwards.
type lockTable struct {
	version    Version
	maxLocks   int // < 0: unlimited
	maxWaiters int // 0: unlimited
	audit      func(AuditEvent)
	clock      Clock

	mu      sync.Mutex
	res     map[resKey]*resource
	enq     map[enqKey]*enqState
	stopped bool // between stop and start: the server is down, nothing changes
	tokens  tokenSource
}

func newLockTable(v Version, maxLocks, maxWaiters int, audit func(AuditEvent), clock Clock) *lockTable {
	t := &lockTable{version: v, maxLocks: maxLocks, maxWaiters: maxWaiters, audit: audit, clock: clock}
	t.tokens.fenced = v == V2_1
	// v2.1 seeds the fence with wall-clock nanoseconds so that tokens keep
	// increasing across restarts without a state file (§7). The real clock,
	// not t.clock: a ManualClock's start says nothing about other servers.
	t.tokens.fence = uint64(time.Now().UnixNano())
	t.res = make(map[resKey]*resource)
	t.enq = make(map[enqKey]*enqState)
	return t
}

// stop is the moment the server goes down: every holder ends (AuditStop),
// every key and two-phase state is dropped, and until start nothing is
// granted, released or cleaned up any more, as in a killed process. Parked
// waiters are left to their connections, which the caller closes next.
// The fence keeps counting.
func (t *lockTable) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	t.stopped = true
	now := t.clock.Now()
	for _, r := range t.res {
		for _, h := range r.holders {
			h.gone = true
			t.emit(AuditStop, h, now)
		}
	}
	t.res = make(map[resKey]*resource)
	t.enq = make(map[enqKey]*enqState)
}

// start makes a stopped table serve again, empty (Restart).
func (t *lockTable) start() {
	t.mu.Lock()
	t.stopped = false
	t.mu.Unlock()
}

// emit reports a holder's event to the audit callback. t.mu must be held.
func (t *lockTable) emit(kind AuditKind, h *holder, now time.Time) {
	if t.audit == nil {
		return
	}
	ev := AuditEvent{
		Time:      now,
		Kind:      kind,
		Key:       h.res.key.key,
		Token:     h.token,
		Semaphore: h.sem,
		Expires:   h.expires,
		Conn:      h.conn,
	}
	if h.sem {
		ev.Limit = h.res.limit
	}
	t.audit(ev)
}

func (t *lockTable) ns(sem bool) namespace {
	switch {
	case t.version == V1_10:
		return nsShared
	case sem:
		return nsSem
	}
	return nsLock
}

// lookup finds or creates the resource for a request with the given limit.
func (t *lockTable) lookup(k resKey, limit int, now time.Time) (*resource, outcome) {
	r := t.res[k]
	if r == nil {
		if t.maxLocks >= 0 && len(t.res) >= t.maxLocks {
			return nil, outMaxLocks
		}
		r = &resource{key: k, limit: limit, lastActive: now}
		t.res[k] = r
		return r, outGranted
	}
	if r.limit != limit {
		return nil, outLimitMismatch
	}
	return r, outGranted
}

// grantable reports whether a new acquirer may take a slot right now.
func (r *resource) grantable() bool { return len(r.holders) < r.limit && len(r.waiters) == 0 }

// newHolder grants a slot of r. t.mu must be held.
func (t *lockTable) newHolder(r *resource, conn uint64, sem bool, leaseSecs int64, now time.Time) *holder {
	lease := seconds(leaseSecs)
	h := &holder{
		token:     t.tokens.next(),
		res:       r,
		conn:      conn,
		sem:       sem,
		leaseSecs: leaseSecs,
		lease:     lease,
		expires:   now.Add(lease),
	}
	r.holders = append(r.holders, h)
	t.emit(AuditGrant, h, now)
	return h
}

func (t *lockTable) addWaiter(r *resource, conn uint64, sem bool, leaseSecs int64) *waiter {
	w := &waiter{
		conn:      conn,
		sem:       sem,
		leaseSecs: leaseSecs,
		lease:     seconds(leaseSecs),
		res:       r,
		ready:     make(chan struct{}),
	}
	r.waiters = append(r.waiters, w)
	return w
}

// acquire serves l/sl. On outGranted the token is returned; on outQueued the
// caller must wait on the waiter (try-locks get outTimeout instead).
func (t *lockTable) acquire(conn uint64, key string, sem bool, a acquireArgs) (outcome, string, *waiter) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return outStopped, "", nil
	}
	now := t.clock.Now()
	r, out := t.lookup(resKey{t.ns(sem), key}, a.limit, now)
	if out != outGranted {
		return out, "", nil
	}
	t.evictExpired(r, now)
	if r.grantable() {
		return outGranted, t.newHolder(r, conn, sem, a.lease, now).token, nil
	}
	// dflockd checks the waiter cap before the try-lock rule, so a try on a
	// key with a full queue answers error_max_waiters, not timeout (§15;
	// seen on v1.10 and on the signal-era development branch, and assumed
	// for v2.1, whose acquire path descends from it).
	if t.maxWaiters > 0 && len(r.waiters) >= t.maxWaiters {
		return outMaxWaiters, "", nil
	}
	if a.timeout == 0 {
		return outTimeout, "", nil
	}
	w := t.addWaiter(r, conn, sem, a.lease)
	w.parkedAt = now
	return outQueued, "", w
}

// enqueue serves e/se: grant at once (`acquired`) or queue without blocking.
func (t *lockTable) enqueue(conn uint64, key string, sem bool, a acquireArgs) (outcome, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return outStopped, ""
	}
	now := t.clock.Now()
	k := resKey{t.ns(sem), key}
	ek := enqKey{conn, k}
	if t.enq[ek] != nil {
		return outAlreadyEnqueued, ""
	}
	r, out := t.lookup(k, a.limit, now)
	if out != outGranted {
		return out, ""
	}
	t.evictExpired(r, now)
	st := &enqState{key: ek}
	if r.grantable() {
		h := t.newHolder(r, conn, sem, a.lease, now)
		h.enq, st.h = st, h
		t.enq[ek] = st
		return outGranted, h.token
	}
	if t.maxWaiters > 0 && len(r.waiters) >= t.maxWaiters {
		return outMaxWaiters, ""
	}
	w := t.addWaiter(r, conn, sem, a.lease)
	w.enq, st.w, st.queued = st, w, true
	t.enq[ek] = st
	return outQueued, ""
}

// wait serves w/sw. It consumes the two-phase state in every outcome. On
// outGranted the token and the lease given at `e` time are returned; on
// outQueued the caller waits on (or, for timeout 0, withdraws) the waiter.
func (t *lockTable) wait(conn uint64, key string, sem bool) (outcome, string, int64, *waiter) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return outStopped, "", 0, nil
	}
	now := t.clock.Now()
	ek := enqKey{conn, resKey{t.ns(sem), key}}
	st := t.enq[ek]
	if st == nil {
		return outNotEnqueued, "", 0, nil
	}
	delete(t.enq, ek)
	if w := st.w; w != nil {
		w.enq = nil // from now on an ordinary parked waiter
		w.parkedAt = now
		return outQueued, "", 0, w
	}
	h := st.h
	h.enq = nil
	if st.queued && t.version == V1_10 {
		return t.waitV110Granted(h, now)
	}
	if h.gone {
		return outLeaseExpired, "", 0, nil
	}
	if !now.Before(h.expires) {
		t.removeHolder(h.res, h, AuditExpire, now)
		return outLeaseExpired, "", 0, nil
	}
	// §6.4: the lease given at `e` time restarts at the moment `w` returns.
	h.lease = seconds(h.leaseSecs)
	h.expires = now.Add(h.lease)
	t.emit(AuditRenew, h, now)
	return outGranted, h.token, h.leaseSecs, nil
}

// waitV110Granted is v1.10.0's w/sw for a queued e/se whose slot was
// granted before the w (lock.go, Wait's slow path): it takes the granted
// token, restarts the lease of the holder if there still is one (even a
// lapsed one the sweeper has not removed yet: the slow path does not look at
// the expiry), touches the key, and answers ok with the token and the lease
// of the e in every case. A holder released or evicted meanwhile (its slot
// perhaps granted to another client since) makes that a stale token: the
// caller holds nothing, and a later r/n with it answers error. t.mu must be
// held.
func (t *lockTable) waitV110Granted(h *holder, now time.Time) (outcome, string, int64, *waiter) {
	if r := t.res[h.res.key]; r != nil {
		r.lastActive = now
	}
	if !h.gone {
		h.lease = seconds(h.leaseSecs)
		h.expires = now.Add(h.lease)
		t.emit(AuditRenew, h, now)
	}
	return outGranted, h.token, h.leaseSecs, nil
}

// withdraw removes a parked waiter that gave up (timeout, drain, peer gone).
// It returns false if the waiter was granted first; the caller then owns w.h.
func (t *lockTable) withdraw(w *waiter) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if w.h != nil {
		return false
	}
	t.dropWaiter(w, t.clock.Now())
	return true
}

// undo withdraws a parked waiter whose connection went away (§8e), like
// withdraw, and if it was granted first, before the grant could be
// written, ends that grant and hands the slot on, as dflockd's
// commitGrantLocked does for a waiter cancelled before it saw its grant
// (releaseGrantOnCancel), whether or not auto-release is on: the grant was
// never anyone's. Reported as AuditDisconnect. (Seen in the v2 source;
// assumed from v1.15 on, where the peer watch that cancels the waiter came
// in; v1.10 keeps the grant and does not watch.)
func (t *lockTable) undo(w *waiter) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock.Now()
	if w.h == nil {
		t.dropWaiter(w, now)
		return
	}
	if h := w.h; !h.gone && !t.stopped {
		t.dropHolderEnq(h)
		t.removeHolder(h.res, h, AuditDisconnect, now)
	}
}

func (t *lockTable) dropWaiter(w *waiter, now time.Time) {
	r := w.res
	if i := slices.Index(r.waiters, w); i >= 0 {
		r.waiters = slices.Delete(r.waiters, i, i+1)
	}
	if w.enq != nil {
		t.dropEnq(w.enq)
		w.enq = nil
	}
	if r.idle() {
		r.lastActive = now
	}
}

func (t *lockTable) dropEnq(st *enqState) {
	if t.enq[st.key] == st {
		delete(t.enq, st.key)
	}
}

// dropHolderEnq drops the two-phase state that was granted h's slot, except
// on V1_10 a queued one, which stays for `w` (enqState.queued).
func (t *lockTable) dropHolderEnq(h *holder) {
	if h.enq != nil && h.enq.queued && t.version == V1_10 {
		return
	}
	if h.enq != nil {
		t.dropEnq(h.enq)
		h.enq = nil
	}
}

// release serves r/sr: outGranted for `ok`; unknown tokens fail
// (outFailed). A lapsed lease not yet swept fails too and is evicted, except
// on V1_10, whose release does not look at the expiry: it answers ok and
// hands the slot on (reported as AuditRelease).
func (t *lockTable) release(key, token string, sem bool) outcome {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return outStopped
	}
	now := t.clock.Now()
	h := t.find(key, token, sem, now)
	if h == nil {
		return outFailed
	}
	// §6.3: a released `acquired` slot takes its two-phase state with it,
	// and so does an evicted one.
	t.dropHolderEnq(h)
	if !now.Before(h.expires) && t.version != V1_10 {
		t.removeHolder(h.res, h, AuditExpire, now)
		return outFailed
	}
	t.removeHolder(h.res, h, AuditRelease, now)
	return outGranted
}

// renew serves n/sn like release. An expired-but-unswept lease is evicted
// (and its slot handed on) instead of being resurrected, on every version.
func (t *lockTable) renew(key, token string, sem bool, leaseSecs int64) outcome {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return outStopped
	}
	now := t.clock.Now()
	h := t.find(key, token, sem, now)
	if h == nil {
		return outFailed
	}
	if !now.Before(h.expires) {
		t.dropHolderEnq(h) // evicted: as by the sweeper
		t.removeHolder(h.res, h, AuditExpire, now)
		return outFailed
	}
	h.lease = seconds(leaseSecs)
	h.expires = now.Add(h.lease)
	t.emit(AuditRenew, h, now)
	return outGranted
}

// find looks up the holder of token for r/sr/n/sn. On V1_10 finding the key
// is activity (resource.lastActive), whether or not the token is found.
func (t *lockTable) find(key, token string, sem bool, now time.Time) *holder {
	r := t.res[resKey{t.ns(sem), key}]
	if r == nil {
		return nil
	}
	if t.version == V1_10 {
		r.lastActive = now
	}
	for _, h := range r.holders {
		if h.token == token {
			return h
		}
	}
	return nil
}

// removeHolder ends h's lease (reported as why) and hands its slot to the
// next waiters in FIFO order.
func (t *lockTable) removeHolder(r *resource, h *holder, why AuditKind, now time.Time) {
	h.gone = true
	if i := slices.Index(r.holders, h); i >= 0 {
		r.holders = slices.Delete(r.holders, i, i+1)
	}
	t.emit(why, h, now)
	t.promote(r, now)
}

// promote grants free slots to waiters, oldest first.
func (t *lockTable) promote(r *resource, now time.Time) {
	for len(r.holders) < r.limit && len(r.waiters) > 0 {
		w := r.waiters[0]
		r.waiters[0] = nil
		r.waiters = r.waiters[1:]
		h := t.newHolder(r, w.conn, w.sem, w.leaseSecs, now)
		if w.enq != nil {
			// Nobody is parked on a queued `e`: the grant waits in its state for `w`.
			st := w.enq
			st.w, st.h, h.enq = nil, h, st
			w.enq = nil
		}
		w.h = h
		close(w.ready)
	}
	if r.idle() {
		r.lastActive = now
	}
}

// evictExpired drops lapsed holders of r, with their two-phase state, and
// promotes waiters. The released servers' sweeper and their eviction on the
// spot (an acquire or enqueue of the key) both drop the state (v1.10.0
// lock.go, and the signal-era lock.go): a later `w` finds none and answers
// error_not_enqueued. Only a `w` that comes before any eviction finds the
// lapsed lease (error_lease_expired, §6.4). Except on V1_10 for a queued
// `e` granted its slot: its state stays, and `w` answers ok with the stale
// token (waitV110Granted).
func (t *lockTable) evictExpired(r *resource, now time.Time) {
	expired := false
	for _, h := range r.holders {
		if !now.Before(h.expires) {
			h.gone = true
			expired = true
			t.dropHolderEnq(h)
			t.emit(AuditExpire, h, now)
		}
	}
	if !expired {
		return
	}
	r.holders = slices.DeleteFunc(r.holders, func(h *holder) bool { return h.gone })
	t.promote(r, now)
}

// sweep evicts every expired lease (and its two-phase state: `w` then
// answers error_not_enqueued, §15, or on V1_10 for a queued `e` ok with the
// stale token); run every SweepInterval.
func (t *lockTable) sweep() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	now := t.clock.Now()
	for _, r := range t.res {
		if len(r.holders) > 0 {
			t.evictExpired(r, now)
		}
	}
}

// gc prunes keys that have been idle for longer than maxIdle (strictly, as
// every dflockd's GC), freeing their MaxLocks budget and their semaphore limit.
func (t *lockTable) gc(maxIdle time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock.Now()
	for k, r := range t.res {
		if r.idle() && now.Sub(r.lastActive) > maxIdle {
			delete(t.res, k)
		}
	}
}

// disconnect applies §8b when a connection closes. With auto-release its
// holders are released; its waiters and two-phase state are dropped, except
// on v1.10 with auto-release off, which cleans up nothing.
func (t *lockTable) disconnect(conn uint64, autoRelease bool) {
	if !autoRelease && t.version == V1_10 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	now := t.clock.Now()
	for k, st := range t.enq {
		if k.conn == conn {
			if st.h != nil {
				st.h.enq = nil
			}
			if st.w != nil {
				st.w.enq = nil
			}
			delete(t.enq, k)
		}
	}
	for _, r := range t.res {
		changed := false
		for _, w := range r.waiters {
			if w.conn == conn {
				changed = true
			}
		}
		if changed {
			r.waiters = slices.DeleteFunc(r.waiters, func(w *waiter) bool { return w.conn == conn })
		}
		if autoRelease {
			for _, h := range r.holders {
				if h.conn == conn {
					h.gone = true
					changed = true
					t.emit(AuditDisconnect, h, now)
				}
			}
			r.holders = slices.DeleteFunc(r.holders, func(h *holder) bool { return h.gone })
		}
		if changed {
			t.promote(r, now)
		}
	}
}

// tokenSource makes §7 tokens: 16 bytes as 32 lowercase hex. Random bytes
// come from crypto/rand in blocks, so a grant rarely costs a syscall. With
// fenced (v2.1) the first 8 bytes are a big-endian, strictly increasing
// server-wide counter. Guarded by lockTable.mu.
type tokenSource struct {
	fenced bool
	fence  uint64
	buf    [1024]byte
	off    int // next unused byte of buf; len(buf) means empty
	filled bool
}

func (ts *tokenSource) random(dst []byte) {
	if !ts.filled || ts.off+len(dst) > len(ts.buf) {
		_, _ = rand.Read(ts.buf[:]) // never fails (crypto/rand since Go 1.24)
		ts.off, ts.filled = 0, true
	}
	ts.off += copy(dst, ts.buf[ts.off:])
}

func (ts *tokenSource) next() string {
	var raw [16]byte
	if ts.fenced {
		ts.fence++
		binary.BigEndian.PutUint64(raw[:8], ts.fence)
		ts.random(raw[8:])
	} else {
		ts.random(raw[:])
	}
	var out [32]byte
	hex.Encode(out[:], raw[:])
	return string(out[:])
}
