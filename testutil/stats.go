package testutil

import (
	"encoding/json"
	"slices"
	"strings"
)

// tableSnapshot is the lock table's part of a stats snapshot, sorted by key.
type tableSnapshot struct {
	locks          []LockInfo
	sems           []SemaphoreInfo
	idleLocks      []IdleKeyInfo
	idleSemaphores []IdleKeyInfo
}

// listedAsSemaphore decides whether stats lists r under semaphores: by its
// limit, not by the command that made it, so a limit-1 semaphore made by
// sl/se is listed as a lock. §15 saw that on v1.10; the signal-era server's
// Stats classifies the same way (limit 1: locks) and only strips the
// namespace prefix, so there a lock and a limit-1 semaphore of one name are
// two `locks` entries with the same key. v2.x is assumed to keep that code.
func (t *lockTable) listedAsSemaphore(r *resource) bool { return r.limit != 1 }

func (t *lockTable) snapshot() tableSnapshot {
	now := t.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	snap := tableSnapshot{
		locks:          []LockInfo{},
		sems:           []SemaphoreInfo{},
		idleLocks:      []IdleKeyInfo{},
		idleSemaphores: []IdleKeyInfo{},
	}
	for _, r := range t.res {
		sem := t.listedAsSemaphore(r)
		switch {
		case r.idle() && sem:
			snap.idleSemaphores = append(snap.idleSemaphores, IdleKeyInfo{r.key.key, now.Sub(r.lastActive)})
		case r.idle():
			snap.idleLocks = append(snap.idleLocks, IdleKeyInfo{r.key.key, now.Sub(r.lastActive)})
		case sem:
			snap.sems = append(snap.sems, SemaphoreInfo{Key: r.key.key, Limit: r.limit, Holders: len(r.holders), Waiters: len(r.waiters)})
		default:
			li := LockInfo{Key: r.key.key, Waiters: len(r.waiters)}
			if len(r.holders) > 0 {
				// A lock with waiters but no holder shows owner 0 and lease 0 (§6.7).
				li.OwnerConnID = r.holders[0].conn
				// Clamped, as the servers do: a lapsed lease not yet
				// swept shows 0, never a negative number.
				li.LeaseExpiresIn = max(r.holders[0].expires.Sub(now), 0)
			}
			snap.locks = append(snap.locks, li)
		}
	}
	slices.SortFunc(snap.locks, func(a, b LockInfo) int { return strings.Compare(a.Key, b.Key) })
	slices.SortFunc(snap.sems, func(a, b SemaphoreInfo) int { return strings.Compare(a.Key, b.Key) })
	byKey := func(a, b IdleKeyInfo) int { return strings.Compare(a.Key, b.Key) }
	slices.SortFunc(snap.idleLocks, byKey)
	slices.SortFunc(snap.idleSemaphores, byKey)
	return snap
}

// Stats returns a snapshot of the server's state (the same data as the
// `stats` command, typed) plus request counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	nconns := len(s.conns)
	s.mu.Unlock()
	snap := s.locks.snapshot()
	st := Stats{
		Connections:    nconns,
		Locks:          snap.locks,
		Semaphores:     snap.sems,
		IdleLocks:      snap.idleLocks,
		IdleSemaphores: snap.idleSemaphores,
		SignalChannels: []SignalChannelInfo{},
		Requests:       make(map[string]int64),
		Reads:          s.reads.Load(),
	}
	for _, ch := range s.hub.snapshot() {
		st.SignalChannels = append(st.SignalChannels, SignalChannelInfo{Pattern: ch.pattern, Group: ch.group, Listeners: ch.listeners})
	}
	for i := range s.requests {
		if n := s.requests[i].Load(); n > 0 {
			st.Requests[cmdNames[i]] = n
		}
	}
	return st
}

// The `stats` reply (§6.7): encoding/json of these structs, field order as
// in dflockd, arrays never null.
type (
	statsJSON struct {
		Connections    int            `json:"connections"`
		Locks          []lockJSON     `json:"locks"`
		Semaphores     []semJSON      `json:"semaphores"`
		IdleLocks      []idleJSON     `json:"idle_locks"`
		IdleSemaphores []idleJSON     `json:"idle_semaphores"`
		SignalChannels *[]channelJSON `json:"signal_channels,omitempty"` // v1.16 only
	}
	lockJSON struct {
		Key             string  `json:"key"`
		OwnerConnID     uint64  `json:"owner_conn_id"`
		LeaseExpiresInS float64 `json:"lease_expires_in_s"`
		Waiters         int     `json:"waiters"`
	}
	semJSON struct {
		Key     string `json:"key"`
		Limit   int    `json:"limit"`
		Holders int    `json:"holders"`
		Waiters int    `json:"waiters"`
	}
	idleJSON struct {
		Key   string  `json:"key"`
		IdleS float64 `json:"idle_s"`
	}
	channelJSON struct {
		Pattern   string `json:"pattern"`
		Group     string `json:"group,omitempty"`
		Listeners int    `json:"listeners"`
	}
)

// statsJSON renders the `stats` reply payload.
func (s *Server) statsJSON() []byte {
	st := s.Stats()
	out := statsJSON{
		Connections:    st.Connections,
		Locks:          make([]lockJSON, 0, len(st.Locks)),
		Semaphores:     make([]semJSON, 0, len(st.Semaphores)),
		IdleLocks:      make([]idleJSON, 0, len(st.IdleLocks)),
		IdleSemaphores: make([]idleJSON, 0, len(st.IdleSemaphores)),
	}
	for _, l := range st.Locks {
		out.Locks = append(out.Locks, lockJSON{l.Key, l.OwnerConnID, l.LeaseExpiresIn.Seconds(), l.Waiters})
	}
	for _, m := range st.Semaphores {
		out.Semaphores = append(out.Semaphores, semJSON(m))
	}
	for _, i := range st.IdleLocks {
		out.IdleLocks = append(out.IdleLocks, idleJSON{i.Key, i.Idle.Seconds()})
	}
	for _, i := range st.IdleSemaphores {
		out.IdleSemaphores = append(out.IdleSemaphores, idleJSON{i.Key, i.Idle.Seconds()})
	}
	if s.cfg.Version == V1_16 {
		chans := make([]channelJSON, 0, len(st.SignalChannels))
		for _, c := range st.SignalChannels {
			chans = append(chans, channelJSON(c))
		}
		out.SignalChannels = &chans
	}
	b, err := json.Marshal(out)
	if err != nil { // cannot happen: plain structs of strings and numbers
		panic("testutil: stats: " + err.Error())
	}
	return b
}
