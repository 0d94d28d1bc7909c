package difftest

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// grantRE matches a grant line; the lease may be anything dflockd prints.
var grantRE = regexp.MustCompile(`^(ok|acquired) ([0-9a-f]{32}) (-?[0-9]+)$`)

// tokenBook names one server's tokens T1, T2, … in the order that server
// handed them out, so that equal behaviour gives equal names and a step can
// say "release T2" to both servers.
type tokenBook struct {
	byToken map[string]string // real token → name
	byName  map[string]string // name → real token
}

func newTokenBook() *tokenBook {
	return &tokenBook{byToken: map[string]string{}, byName: map[string]string{}}
}

// name returns tok's name, assigning the next one if tok is new.
func (b *tokenBook) name(tok string) string {
	if n, ok := b.byToken[tok]; ok {
		return n
	}
	n := "T" + strconv.Itoa(len(b.byToken)+1)
	b.byToken[tok], b.byName[n] = n, tok
	return n
}

// tokenRefRE is how a step's arg refers to a session token: {T3}.
var tokenRefRE = regexp.MustCompile(`\{(T[0-9]+)\}`)

// unknownToken stands in for a token name the server never handed out.
const unknownToken = "00000000000000000000000000000000"

// render replaces the {Tn} references of s with this server's tokens.
func (b *tokenBook) render(s string) string {
	return tokenRefRE.ReplaceAllStringFunc(s, func(ref string) string {
		if tok, ok := b.byName[ref[1:len(ref)-1]]; ok {
			return tok
		}
		return unknownToken
	})
}

// connNamer names server connection ids after the session's connections.
type connNamer func(id uint64) string

// reply is one normalised observation: a line with tokens renamed, a
// parsed stats payload, or the end of the stream, or silence.
type reply struct {
	text  string    // normalised line, "<closed>" or "<silent>"
	stats *statsDoc // set for `ok {json}`
}

func (r reply) String() string {
	if r.stats != nil {
		return "ok " + r.stats.String()
	}
	return r.text
}

// normalize turns what one server sent into a reply, naming new tokens.
func normalize(ev event, got bool, book *tokenBook, names connNamer) reply {
	switch {
	case !got:
		return reply{text: "<silent>"}
	case ev.closed:
		return reply{text: "<closed>"}
	}
	if m := grantRE.FindStringSubmatch(ev.line); m != nil {
		return reply{text: m[1] + " " + book.name(m[2]) + " " + m[3]}
	}
	if js, ok := strings.CutPrefix(ev.line, "ok {"); ok {
		var doc statsDoc
		if err := json.Unmarshal([]byte("{"+js), &doc); err == nil {
			doc.normalize(names)
			return reply{stats: &doc}
		}
	}
	return reply{text: ev.line}
}

// equal compares two replies; stats numbers that depend on timing are
// compared with a tolerance.
// With anyIdle, idle_s values are not compared.
func (r reply) equal(o reply, anyIdle bool) bool {
	if (r.stats == nil) != (o.stats == nil) {
		return false
	}
	if r.stats != nil {
		return r.stats.equal(o.stats, anyIdle)
	}
	return r.text == o.text
}

// timeTolerance is how far apart two servers' lease and idle seconds may be
// in stats: the harness asks both within milliseconds, but not at once.
const timeTolerance = 0.75

// statsDoc is the v1.10 `stats` payload, with owners named and entries sorted.
type statsDoc struct {
	Connections    int         `json:"connections"`
	Locks          []lockEntry `json:"locks"`
	Semaphores     []semEntry  `json:"semaphores"`
	IdleLocks      []idleEntry `json:"idle_locks"`
	IdleSemaphores []idleEntry `json:"idle_semaphores"`
	Unknown        []string    `json:"-"` // fields other than these five, by name
}

type lockEntry struct {
	Key     string  `json:"key"`
	OwnerID uint64  `json:"owner_conn_id"`
	Owner   string  `json:"-"` // the session's name of OwnerID
	Lease   float64 `json:"lease_expires_in_s"`
	Waiters int     `json:"waiters"`
}

type semEntry struct {
	Key     string `json:"key"`
	Limit   int    `json:"limit"`
	Holders int    `json:"holders"`
	Waiters int    `json:"waiters"`
}

type idleEntry struct {
	Key  string  `json:"key"`
	Idle float64 `json:"idle_s"`
}

func (d *statsDoc) UnmarshalJSON(b []byte) error {
	type plain statsDoc
	if err := json.Unmarshal(b, (*plain)(d)); err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	for k, v := range all {
		switch k {
		case "connections", "locks", "semaphores", "idle_locks", "idle_semaphores":
			if string(v) == "null" {
				d.Unknown = append(d.Unknown, k+":null")
			}
		default:
			d.Unknown = append(d.Unknown, k)
		}
	}
	slices.Sort(d.Unknown)
	return nil
}

func (d *statsDoc) normalize(names connNamer) {
	for i := range d.Locks {
		d.Locks[i].Owner = names(d.Locks[i].OwnerID)
	}
	slices.SortFunc(d.Locks, func(a, b lockEntry) int { return strings.Compare(a.Key, b.Key) })
	slices.SortFunc(d.Semaphores, func(a, b semEntry) int { return strings.Compare(a.Key, b.Key) })
	byKey := func(a, b idleEntry) int { return strings.Compare(a.Key, b.Key) }
	slices.SortFunc(d.IdleLocks, byKey)
	slices.SortFunc(d.IdleSemaphores, byKey)
}

func near(a, b float64) bool { return math.Abs(a-b) <= timeTolerance }

func (d *statsDoc) equal(o *statsDoc, anyIdle bool) bool {
	if d.Connections != o.Connections || !slices.Equal(d.Unknown, o.Unknown) ||
		len(d.Locks) != len(o.Locks) || len(d.Semaphores) != len(o.Semaphores) ||
		len(d.IdleLocks) != len(o.IdleLocks) || len(d.IdleSemaphores) != len(o.IdleSemaphores) {
		return false
	}
	for i, l := range d.Locks {
		m := o.Locks[i]
		if l.Key != m.Key || l.Owner != m.Owner || l.Waiters != m.Waiters || !near(l.Lease, m.Lease) {
			return false
		}
	}
	if !slices.Equal(d.Semaphores, o.Semaphores) {
		return false
	}
	idleEqual := func(a, b []idleEntry) bool {
		for i := range a {
			if a[i].Key != b[i].Key || !anyIdle && !near(a[i].Idle, b[i].Idle) {
				return false
			}
		}
		return true
	}
	return idleEqual(d.IdleLocks, o.IdleLocks) && idleEqual(d.IdleSemaphores, o.IdleSemaphores)
}

// showKey quotes a key, abbreviating a long run of one byte.
func showKey(k string) string {
	if len(k) > 40 && strings.Count(k, k[:1]) == len(k) {
		return fmt.Sprintf("%q×%d", k[:1], len(k))
	}
	return strconv.Quote(k)
}

// String renders the document compactly, seconds rounded to tenths.
func (d *statsDoc) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "{conns=%d", d.Connections)
	for _, l := range d.Locks {
		fmt.Fprintf(&b, " lock(%s owner=%s lease=%.1f waiters=%d)", showKey(l.Key), l.Owner, l.Lease, l.Waiters)
	}
	for _, s := range d.Semaphores {
		fmt.Fprintf(&b, " sem(%s limit=%d holders=%d waiters=%d)", showKey(s.Key), s.Limit, s.Holders, s.Waiters)
	}
	for _, i := range d.IdleLocks {
		fmt.Fprintf(&b, " idle-lock(%s %.1fs)", showKey(i.Key), i.Idle)
	}
	for _, i := range d.IdleSemaphores {
		fmt.Fprintf(&b, " idle-sem(%s %.1fs)", showKey(i.Key), i.Idle)
	}
	for _, u := range d.Unknown {
		fmt.Fprintf(&b, " extra(%s)", u)
	}
	b.WriteString("}")
	return b.String()
}
