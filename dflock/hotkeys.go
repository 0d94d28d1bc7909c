package dflock

import (
	"sync"
	"sync/atomic"
	"time"
)

// A Lock on a key that another holder has tries the control lane first,
// finds the key held, and only then waits on a wait-pool connection: a
// round trip wasted on every contended acquire. hotKeys remembers, per
// server, the keys whose lane try recently found them held, and Lock sends
// those straight to the wait pool. An entry lives hotKeyTTL after the last
// time a lane try found its key held; then the next Lock tries the lane
// again (one wasted round trip per key per hotKeyTTL while the contention
// lasts), so a key that has cooled down goes back to the cheaper lane.
//
// The set never holds more than hotKeysMax entries: when it is full,
// expired entries are dropped, and if none has expired a new key is not
// remembered (it keeps paying the lane try, as before this existed).
const (
	hotKeyTTL  = time.Second
	hotKeysMax = 1024
)

type hotKey struct {
	key string
	sem bool
}

type hotKeys struct {
	// n is the number of entries; while it is 0 — every key uncontended —
	// a lookup is one atomic load.
	n        atomic.Int64
	ttl      time.Duration // 0: hotKeyTTL (tests set it before first use)
	mu       sync.RWMutex
	m        map[hotKey]time.Time // expiry
	prunedAt time.Time            // the last pruneLocked scan
}

func (h *hotKeys) lifetime() time.Duration {
	if h.ttl > 0 {
		return h.ttl
	}
	return hotKeyTTL
}

// contains reports whether k's lane try found it held less than hotKeyTTL
// ago. An expired entry is dropped.
func (h *hotKeys) contains(k hotKey, now func() time.Time) bool {
	if h.n.Load() == 0 {
		return false
	}
	h.mu.RLock()
	exp, ok := h.m[k]
	h.mu.RUnlock()
	if !ok {
		return false
	}
	if now().Before(exp) {
		return true
	}
	h.mu.Lock()
	if cur, ok := h.m[k]; ok && cur.Equal(exp) { // not refreshed meanwhile
		delete(h.m, k)
		h.n.Add(-1)
	}
	h.mu.Unlock()
	return false
}

// add remembers that k's lane try found it held at now.
func (h *hotKeys) add(k hotKey, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.m[k]; !ok {
		if len(h.m) >= hotKeysMax && !h.pruneLocked(now) {
			return
		}
		if h.m == nil {
			h.m = make(map[hotKey]time.Time)
		}
		h.n.Add(1)
	}
	h.m[k] = now.Add(h.lifetime())
}

// pruneLocked drops the expired entries and reports whether that made room.
// A full set of live entries is scanned at most every quarter lifetime, so
// that a burst of new contended keys does not turn every add into a scan.
func (h *hotKeys) pruneLocked(now time.Time) bool {
	if now.Sub(h.prunedAt) < h.lifetime()/4 {
		return false
	}
	h.prunedAt = now
	for k, exp := range h.m {
		if !now.Before(exp) {
			delete(h.m, k)
			h.n.Add(-1)
		}
	}
	return len(h.m) < hotKeysMax
}

// len is the number of entries, expired ones included.
func (h *hotKeys) len() int { return int(h.n.Load()) }
