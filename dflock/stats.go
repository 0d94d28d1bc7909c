package dflock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/dflock-sdk/go/pool"
	"github.com/dflock-sdk/go/wire"
)

// Stats is a snapshot of the Client and of its servers.
type Stats struct {
	// Servers holds one entry per server, in the order given to New.
	Servers []ServerStats
	// Renew is the renewal scheduler's counters (leases held now, renewals
	// sent, batches written, ...).
	Renew RenewStats
	// Client is the Client's own counters.
	Client ClientStats
}

// RenewStats counts the renewal of held leases since New, over all servers.
type RenewStats struct {
	Leases  int   // tracked (held) now
	Sent    int64 // renew requests sent
	Renewed int64 // answered ok (also after the lease ended meanwhile)
	// Refused renewals were answered with anything but ok, or with an ok
	// for 0 seconds (which ends the lease lost); Unanswered ones
	// had their connection fail before the reply. Sent − Renewed − Refused
	// − Unanswered renewals are in flight.
	Refused    int64
	Unanswered int64
	Batches    int64 // renewal writes (one per connection per round, and one per Renew call)
	Rounds     int64 // scheduler wakes that sent at least one renewal
	Lost       int64 // leases lost, whatever the cause
	// ReleaseFailed counts best-effort releases of leases declared lost by
	// the client's clock that failed: refused (usually because the server
	// had already expired the lease) or not delivered (the connection broke;
	// the release is then sent again on another connection, in the
	// background, for a server with auto-release off).
	ReleaseFailed int64
}

// renewStats sums the per-server renewal Counters and adds the
// scheduler's own figures. Each server's Sent is read after its outcomes
// (Counters.Load), so Sent is never below their sum.
func (c *Client) renewStats() RenewStats {
	st := c.sched.Stats()
	r := RenewStats{Leases: st.Leases, Batches: st.Batches, Rounds: st.Rounds, ReleaseFailed: st.ReleaseFailed}
	for _, s := range c.servers {
		v := s.obs.renew.Load()
		r.Sent += v.Sent
		r.Renewed += v.Renewed
		r.Refused += v.Refused
		r.Unanswered += v.Unanswered
		r.Lost += v.Lost
	}
	return r
}

// ClientStats counts the Client's lease lifecycle since New.
type ClientStats struct {
	Acquired   int64 // locks and slots granted (all kinds)
	LaneGrants int64 // of which granted on the control lane (uncontended, or freed while waiting for a wait-pool connection)
	WaitGrants int64 // of which granted on a wait-pool connection (after finding the key held, now or within the last second, or two-phase)
	Contended  int64 // Lock/Semaphore calls whose control-lane try found the key held
	Released   int64 // leases released (by Release, WithLock, Cancel or Close)
	Lost       int64 // leases lost while held, and those Release found lost
	Held       int   // leases held now
	// CallbacksDropped counts log records and hook calls dropped because
	// more than 4096 were waiting for the Client's callback goroutine (a
	// handler or hook that is slow; see WithLogger; loss reports have a
	// longer queue, see Hooks), or because Close stopped waiting for them.
	CallbacksDropped int64
}

// ServerStats describes one server.
type ServerStats struct {
	Addr string
	// Pool is the client-side connection pool of the server (always set).
	Pool pool.Stats
	// State is the server's own view (the `stats` command), or nil if it
	// could not be fetched; Err says why.
	State *ServerState
	Err   error
}

// ServerState is the parsed reply of the server's `stats` command.
type ServerState struct {
	// Connections open on the server, including the one that asked.
	Connections int
	// Locks held or waited for. The server lists a semaphore of limit 1
	// here too (it classifies by limit), under its key.
	Locks []LockState
	// Semaphores with holders or waiters, of limit 2 or more.
	Semaphores []SemaphoreState
	// IdleLocks and IdleSemaphores are keys with no holder and no waiter,
	// not yet forgotten (they count against the server's key limit).
	IdleLocks      []IdleKey
	IdleSemaphores []IdleKey
	// SignalChannels are the subscriptions (signal-era servers only).
	SignalChannels []SignalChannel
}

// LockState is one lock in ServerState.
type LockState struct {
	Key string
	// OwnerConnID is the server's id of the holder's connection; 0 when the
	// lock has waiters but no holder.
	OwnerConnID uint64
	// LeaseExpiresIn is the time left of the holder's lease by the server's
	// clock; 0 when the lock has no holder.
	LeaseExpiresIn time.Duration
	Waiters        int // blocked waiters and queued places (tickets)
}

// SemaphoreState is one semaphore in ServerState.
type SemaphoreState struct {
	Key                     string
	Limit, Holders, Waiters int
}

// IdleKey is an idle key in ServerState.
type IdleKey struct {
	Key  string
	Idle time.Duration // since the key was last held or waited for
}

// SignalChannel is one subscription pattern in ServerState.
type SignalChannel struct {
	Pattern   string
	Group     string // empty for plain (ungrouped) subscriptions
	Listeners int    // the server's connections subscribed to Pattern (in Group)
}

// Stats returns the Client's counters and asks every server for its state,
// in parallel. Each server is asked on a short-lived connection of its
// own, outside the control lane and the wait pool: Stats does not wait for
// a pool connection (all of them may be pinned by held locks) and never
// risks a connection that owns leases. A reply is capped by
// WithMaxStatsReply. The returned Stats is complete except for the State
// of servers that could not answer; err joins their errors (each also in
// ServerStats.Err).
//
// Stats is for debugging: it costs a connection and a round trip per
// server. Metrics and health checks should read Snapshot, which does no
// I/O and never fails.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	if ctx == nil {
		return Stats{}, &ArgError{Arg: "ctx", Reason: "must not be nil"}
	}
	st := Stats{Servers: make([]ServerStats, len(c.servers))}
	if !c.enter() {
		for i, s := range c.servers {
			st.Servers[i].Err = &Error{Op: "stats", Server: s.addr, Err: ErrClosed}
		}
		return c.localStats(st), &Error{Op: "stats", Err: ErrClosed}
	}
	defer c.leave()
	opCtx, cancel := c.opContext(ctx)
	defer cancel()

	var wg sync.WaitGroup
	for i, s := range c.servers {
		wg.Go(func() {
			// Stays if the query's goroutine exits unfinished (a
			// runtime.Goexit in a dialer), which must not read as a
			// server that answered nothing without an error.
			st.Servers[i] = ServerStats{Addr: s.addr, Err: &Error{Op: "stats", Server: s.addr, Err: errQueryUnfinished}}
			state, err := c.serverState(ctx, opCtx, s)
			st.Servers[i] = ServerStats{Addr: s.addr, State: state, Err: err}
		})
	}
	wg.Wait()
	var errs []error
	for _, s := range st.Servers {
		if s.Err != nil {
			errs = append(errs, s.Err)
		}
	}
	return c.localStats(st), errors.Join(errs...)
}

// errQueryUnfinished: a Stats query's goroutine exited before its end.
var errQueryUnfinished = errors.New("the query ended without a result (runtime.Goexit in the dialer or the connection's methods)")

func (c *Client) localStats(st Stats) Stats {
	for i, s := range c.servers {
		st.Servers[i].Addr = s.addr
		st.Servers[i].Pool = s.pool.Stats()
	}
	// Before Held, as in Snapshot: a lease leaves the scheduler before it
	// is counted released, so a reading never counts it in both.
	released, lost := c.releasedAndLost()
	st.Renew = c.renewStats()
	st.Client = ClientStats{
		LaneGrants: c.stats.laneGrants.Load(),
		WaitGrants: c.stats.waitGrants.Load(),
		Contended:  c.stats.contended.Load(),
		Held:       st.Renew.Leases,
		Released:   released,
		Lost:       lost,

		CallbacksDropped: c.disp.dropped.Load(),
	}
	st.Client.Acquired = c.stats.acquired.Load() // last: see track
	return st
}

// withHint appends hint, in parentheses, to err's text. The pool's error
// about a server stays one (its Cause gets the hint), so that Error does
// not repeat the server's address.
func withHint(err error, hint string) error {
	var se *pool.ServerError
	if errors.As(err, &se) && se == err && se.Cause != nil {
		hinted := *se
		hinted.Cause = fmt.Errorf("%w (%s)", se.Cause, hint)
		return &hinted
	}
	return fmt.Errorf("%w (%s)", err, hint)
}

func (c *Client) serverState(ctx, opCtx context.Context, s *server) (*ServerState, error) {
	fail := func(err error) (*ServerState, error) {
		if opCtx.Err() != nil {
			err = connecting(c.ctxError(ctx, opCtx, nil), err) // the pool's error, if it dialled
		}
		return nil, &Error{Op: "stats", Server: s.addr, Err: err}
	}
	r, err := s.pool.Query(opCtx, wire.Request{Cmd: wire.CmdStats}, c.opts.maxStats)
	if err != nil {
		if errors.Is(err, wire.ErrLineTooLong) && !errors.Is(err, ErrServerUnavailable) {
			// The stats reply's own cap; a server found unavailable by
			// an over-long line elsewhere (a handshake's answer) is not.
			err = withHint(err, fmt.Sprintf("raise WithMaxStatsReply, now %d bytes", c.opts.maxStats))
		}
		return fail(err)
	}
	if r.Status != wire.StatusOK {
		word, sentinel := replyError(r)
		return nil, &Error{Op: "stats", Server: s.addr, Reply: word, Err: sentinel}
	}
	state, err := parseServerState(r.Text)
	if err != nil {
		return fail(scrubStatsError(err, r.Text, strings.TrimSpace(c.opts.authToken)))
	}
	return state, nil
}

// scrubStatsError keeps the auth token out of err, a parse error of the
// stats document doc: the document is data, passed on as sent, but an
// error shows part of it, and a server may have echoed the token there.
// The error is rebuilt from the document with the token replaced before
// anything is cut from it.
//
// The document is JSON: a token in it may be escaped (Go's encoding/json,
// which dflockd uses, writes '&', '<', '>' as \u0026 and so on), while the
// error's reason may show it decoded. The forms Go writes are replaced in
// both; as any escape can spell any part of the token (an ASCII-only
// encoder writes \u00e4 for ä, a hostile server what it likes), the part
// of the document shown also ends before its first backslash.
func scrubStatsError(err error, doc, secret string) error {
	if secret == "" {
		return err
	}
	forms := []string{secret}
	for _, html := range []bool{true, false} {
		var b strings.Builder
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(html)
		if enc.Encode(secret) == nil {
			if f := strings.TrimSuffix(b.String(), "\n"); len(f) > 2 && f[1:len(f)-1] != secret {
				forms = append(forms, f[1:len(f)-1])
			}
		}
	}
	scrub := func(s string) (string, bool) {
		found := false
		for _, f := range forms {
			if strings.Contains(s, f) {
				s, found = strings.ReplaceAll(s, f, wire.Redacted), true
			}
		}
		return s, found
	}
	doc, inDoc := scrub(doc)
	line := doc[:min(len(doc), 64)]
	escaped := false
	if i := strings.IndexByte(line, '\\'); i >= 0 {
		line, escaped = line[:i], true
	}
	reason := "stats reply is not the expected JSON"
	var pe *wire.ProtocolError
	if errors.As(err, &pe) {
		reason = pe.Reason
	}
	reason, inReason := scrub(reason)
	if !inDoc && !inReason && !escaped {
		return err
	}
	return &wire.ProtocolError{Line: line, Reason: reason}
}

// The entries of the stats JSON (docs/protocol.md §6.7).
type (
	rawLock struct {
		Key            string  `json:"key"`
		OwnerConnID    uint64  `json:"owner_conn_id"`
		LeaseExpiresIn float64 `json:"lease_expires_in_s"`
		Waiters        int     `json:"waiters"`
	}
	rawSemaphore struct {
		Key     string `json:"key"`
		Limit   int    `json:"limit"`
		Holders int    `json:"holders"`
		Waiters int    `json:"waiters"`
	}
	rawChannel struct {
		Pattern   string `json:"pattern"`
		Group     string `json:"group"`
		Listeners int    `json:"listeners"`
	}
)

type rawIdle struct {
	Key   string  `json:"key"`
	IdleS float64 `json:"idle_s"`
}

func seconds(f float64) time.Duration {
	if math.IsNaN(f) || f <= 0 {
		return 0
	}
	if f >= math.MaxInt64/float64(time.Second) {
		return math.MaxInt64
	}
	return time.Duration(f * float64(time.Second))
}

// parseServerState parses the JSON of a `stats` reply. It decodes the
// arrays an entry at a time and refuses an entry without its key (or
// pattern), or shorter than the shortest a server sends (every field
// present, a one-byte key, zeros): a hostile reply of tiny entries (`{},`,
// three bytes each, each a struct of tens of bytes) made the client
// allocate ~140 times the reply's size, gigabytes under the default
// WithMaxStatsReply; with entries of at least their real size, parsing
// costs a few times the reply (TestHostileStatsAmplification). For the
// same reason it refuses a field that comes twice (JSON from a server never
// repeats one) and more than maxStatsFields fields: tens of thousands of
// tiny ones (`,"a":0`) cost some 50 times the reply.
func parseServerState(doc string) (*ServerState, error) {
	bad := func(reason string) error {
		return &wire.ProtocolError{Line: doc[:min(len(doc), 64)], Reason: "stats reply is not the expected JSON: " + reason}
	}
	dec := json.NewDecoder(strings.NewReader(doc))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, bad("not an object")
	}
	st := &ServerState{}
	seen := make(map[string]struct{}, 8)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, bad(err.Error())
		}
		name, _ := tok.(string)
		if _, dup := seen[name]; dup {
			return nil, bad(fmt.Sprintf("field %.64q twice", name))
		}
		if len(seen) == maxStatsFields {
			return nil, bad(fmt.Sprintf("more than %d fields", maxStatsFields))
		}
		seen[name] = struct{}{}
		switch name {
		case "connections":
			err = dec.Decode(&st.Connections)
		case "locks":
			err = eachEntry(dec, minLockEntry, func(l rawLock) string {
				st.Locks = append(st.Locks, LockState{Key: l.Key, OwnerConnID: l.OwnerConnID, LeaseExpiresIn: seconds(l.LeaseExpiresIn), Waiters: l.Waiters})
				return l.Key
			})
		case "semaphores":
			err = eachEntry(dec, minSemaphoreEntry, func(e rawSemaphore) string {
				st.Semaphores = append(st.Semaphores, SemaphoreState(e))
				return e.Key
			})
		case "idle_locks":
			err = eachEntry(dec, minIdleEntry, func(k rawIdle) string {
				st.IdleLocks = append(st.IdleLocks, IdleKey{Key: k.Key, Idle: seconds(k.IdleS)})
				return k.Key
			})
		case "idle_semaphores":
			err = eachEntry(dec, minIdleEntry, func(k rawIdle) string {
				st.IdleSemaphores = append(st.IdleSemaphores, IdleKey{Key: k.Key, Idle: seconds(k.IdleS)})
				return k.Key
			})
		case "signal_channels":
			err = eachEntry(dec, minChannelEntry, func(e rawChannel) string {
				st.SignalChannels = append(st.SignalChannels, SignalChannel(e))
				return e.Pattern
			})
		default: // a field of a later server: skipped
			var skip json.RawMessage
			err = dec.Decode(&skip)
		}
		if err != nil {
			return nil, bad(err.Error())
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, bad("the object does not end")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bad("text after the object")
	}
	if field := st.negativeCount(); field != "" {
		return nil, bad("negative " + field)
	}
	return st, nil
}

// negativeCount names a count of st below zero, which no server sends (a
// caller summing waiters or dividing by a limit would compute nonsense),
// or returns "".
func (st *ServerState) negativeCount() string {
	if st.Connections < 0 {
		return "connections"
	}
	for _, l := range st.Locks {
		if l.Waiters < 0 {
			return fmt.Sprintf("waiters of lock %.64q", l.Key)
		}
	}
	for _, e := range st.Semaphores {
		switch {
		case e.Limit < 0:
			return fmt.Sprintf("limit of semaphore %.64q", e.Key)
		case e.Holders < 0:
			return fmt.Sprintf("holders of semaphore %.64q", e.Key)
		case e.Waiters < 0:
			return fmt.Sprintf("waiters of semaphore %.64q", e.Key)
		}
	}
	for _, ch := range st.SignalChannels {
		if ch.Listeners < 0 {
			return fmt.Sprintf("listeners of pattern %.64q", ch.Pattern)
		}
	}
	return ""
}

// maxStatsFields bounds the fields of a `stats` reply's object: servers send
// six (v1.11–v1.16), later ones a few more.
const maxStatsFields = 64

// The shortest entries a server sends: every field, a one-byte key, zeros
// (`{"key":"a","idle_s":0}`; a channel's group is left out when empty).
const (
	minLockEntry      = len(`{"key":"a","owner_conn_id":0,"lease_expires_in_s":0,"waiters":0}`)
	minSemaphoreEntry = len(`{"key":"a","limit":0,"holders":0,"waiters":0}`)
	minIdleEntry      = len(`{"key":"a","idle_s":0}`)
	minChannelEntry   = len(`{"pattern":"a","listeners":0}`)
)

// eachEntry decodes the JSON array at dec's position (or null) an entry at
// a time, handing each to add, which returns the entry's key: an empty one
// is refused, and so is an entry shorter than minLen bytes.
func eachEntry[E any](dec *json.Decoder, minLen int, add func(E) string) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok == nil {
		return nil // null: none
	}
	if tok != json.Delim('[') {
		return fmt.Errorf("%v where an array belongs", tok)
	}
	for dec.More() {
		start := dec.InputOffset()
		var e E
		if err := dec.Decode(&e); err != nil {
			return err
		}
		if dec.InputOffset()-start < int64(minLen) {
			return fmt.Errorf("an entry shorter than any server sends (%d bytes)", dec.InputOffset()-start)
		}
		if add(e) == "" {
			return errors.New("an entry without its key")
		}
	}
	_, err = dec.Token() // ]
	return err
}
