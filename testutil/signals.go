package testutil

import (
	"slices"
	"strconv"
	"strings"
	"sync"
)

// subKey identifies one subscription of a connection: (pattern, group).
type subKey struct {
	pattern, group string
}

// subject holds every subscription to one pattern.
type subject struct {
	pattern string
	plain   []*conn       // non-grouped listeners, in join order
	groups  []*queueGroup // queue groups, in creation order
}

func (s *subject) empty() bool { return len(s.plain) == 0 && len(s.groups) == 0 }

// queueGroup is keyed by (pattern, name); each matching signal goes to one
// member, chosen round-robin in join order.
type queueGroup struct {
	name    string
	members []*conn
	next    uint64
}

// SignalOverflow is what the server does with a signal for a listener
// whose push buffer (Config.PushBuffer) is full.
type SignalOverflow int

const (
	// OverflowDisconnect is the released servers' behaviour (dflockd
	// v1.11+): the signal is dropped and the listener disconnected; for a
	// queue group whose members are all full, the member whose turn it
	// was. The listener's client can see the loss (its connection broke).
	OverflowDisconnect SignalOverflow = iota
	// OverflowDrop is the behaviour of the signal-capable development
	// build that issue 11 measured: the signal is dropped for that
	// listener (or group) and the connection kept. Nothing reaches the
	// listener; only the publisher's `ok <n>` counts one receiver less.
	OverflowDrop
)

func (o SignalOverflow) String() string {
	switch o {
	case OverflowDisconnect:
		return "disconnect"
	case OverflowDrop:
		return "drop"
	}
	return "SignalOverflow(" + strconv.Itoa(int(o)) + ")"
}

// signalHub is the v1.16 pub/sub manager (§6.6). Pushes are non-blocking
// sends onto each connection's bounded push buffer; a listener that cannot
// keep up is disconnected (or, with OverflowDrop, misses the signal)
// rather than allowed to stall the publisher.
type signalHub struct {
	maxSubs  int // per connection; 0 = unlimited
	overflow SignalOverflow

	mu     sync.Mutex
	exact  map[string]*subject // patterns without wildcards, by pattern
	wild   []*subject          // wildcard patterns, in creation order
	byConn map[*conn]map[subKey]struct{}
}

func newSignalHub(maxSubs int, overflow SignalOverflow) *signalHub {
	h := &signalHub{maxSubs: maxSubs, overflow: overflow}
	h.reset()
	return h
}

func (h *signalHub) reset() {
	h.mu.Lock()
	h.exact = make(map[string]*subject)
	h.wild = nil
	h.byConn = make(map[*conn]map[subKey]struct{})
	h.mu.Unlock()
}

func (h *signalHub) subjectFor(pattern string, create bool) *subject {
	if !isWildcard(pattern) {
		s := h.exact[pattern]
		if s == nil && create {
			s = &subject{pattern: pattern}
			h.exact[pattern] = s
		}
		return s
	}
	for _, s := range h.wild {
		if s.pattern == pattern {
			return s
		}
	}
	if !create {
		return nil
	}
	s := &subject{pattern: pattern}
	h.wild = append(h.wild, s)
	return s
}

// listen subscribes c. A duplicate is a no-op success even at the cap
// (v1.16 HasListener); a new subscription at the cap fails.
func (h *signalHub) listen(c *conn, pattern, group string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := subKey{pattern, group}
	subs := h.byConn[c]
	if _, dup := subs[k]; dup {
		return true
	}
	if h.maxSubs > 0 && len(subs) >= h.maxSubs {
		return false
	}
	if subs == nil {
		subs = make(map[subKey]struct{})
		h.byConn[c] = subs
	}
	subs[k] = struct{}{}
	s := h.subjectFor(pattern, true)
	if group == "" {
		s.plain = append(s.plain, c)
		return true
	}
	for _, g := range s.groups {
		if g.name == group {
			g.members = append(g.members, c)
			return true
		}
	}
	s.groups = append(s.groups, &queueGroup{name: group, members: []*conn{c}})
	return true
}

// unlisten removes one subscription; unknown ones are fine.
func (h *signalHub) unlisten(c *conn, pattern, group string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := subKey{pattern, group}
	if _, ok := h.byConn[c][k]; !ok {
		return
	}
	delete(h.byConn[c], k)
	if len(h.byConn[c]) == 0 {
		delete(h.byConn, c)
	}
	h.removeSub(c, k)
}

func (h *signalHub) removeSub(c *conn, k subKey) {
	s := h.subjectFor(k.pattern, false)
	if s == nil {
		return
	}
	if k.group == "" {
		s.plain = deleteConn(s.plain, c)
	} else {
		for i, g := range s.groups {
			if g.name == k.group {
				g.members = deleteConn(g.members, c)
				if len(g.members) == 0 {
					s.groups = slices.Delete(s.groups, i, i+1)
				}
				break
			}
		}
	}
	if s.empty() {
		if isWildcard(s.pattern) {
			h.wild = slices.DeleteFunc(h.wild, func(x *subject) bool { return x == s })
		} else {
			delete(h.exact, s.pattern)
		}
	}
}

func deleteConn(cs []*conn, c *conn) []*conn {
	if i := slices.Index(cs, c); i >= 0 {
		return slices.Delete(cs, i, i+1)
	}
	return cs
}

// removeConn drops every subscription of a closing connection.
func (h *signalHub) removeConn(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k := range h.byConn[c] {
		h.removeSub(c, k)
	}
	delete(h.byConn, c)
}

// signal delivers one message and returns the number of successful
// enqueues, plus the listeners to disconnect (closed by the caller, outside
// the hub lock, as v1.15 does; none with OverflowDrop). Order: exact non-grouped, exact groups,
// wildcard non-grouped, wildcard groups; non-grouped paths give each
// connection at most one copy.
func (h *signalHub) signal(channel, payload string) (int, []*conn) {
	line := make([]byte, 0, len("sig  \n")+len(channel)+len(payload))
	line = append(line, "sig "...)
	line = append(line, channel...)
	line = append(line, ' ')
	line = append(line, payload...)
	line = append(line, '\n')

	h.mu.Lock()
	defer h.mu.Unlock()
	d := delivery{line: line, keep: h.overflow == OverflowDrop}
	exact := h.exact[channel]
	var wild []*subject
	for _, s := range h.wild {
		if matchPattern(s.pattern, channel) {
			wild = append(wild, s)
		}
	}
	if exact != nil {
		d.plain(exact.plain)
		d.groups(exact.groups)
	}
	for _, s := range wild {
		d.plain(s.plain)
	}
	for _, s := range wild {
		d.groups(s.groups)
	}
	return d.n, d.victims
}

// delivery accumulates the outcome of one signal.
type delivery struct {
	line    []byte
	keep    bool // OverflowDrop: a full buffer costs the signal, not the connection
	n       int
	seen    []*conn // connections already served through a non-grouped path
	victims []*conn
}

func (d *delivery) plain(cs []*conn) {
	for _, c := range cs {
		if slices.Contains(d.seen, c) {
			continue
		}
		d.seen = append(d.seen, c)
		if c.push(d.line) {
			d.n++
		} else if !d.keep && !slices.Contains(d.victims, c) {
			d.victims = append(d.victims, c)
		}
	}
}

func (d *delivery) groups(gs []*queueGroup) {
	for _, g := range gs {
		start := int(g.next % uint64(len(g.members)))
		g.next++
		delivered := false
		for i := range g.members {
			if g.members[(start+i)%len(g.members)].push(d.line) {
				d.n++
				delivered = true
				break
			}
		}
		if !delivered && !d.keep {
			if p := g.members[start]; !slices.Contains(d.victims, p) {
				d.victims = append(d.victims, p)
			}
		}
	}
}

// channelInfo is one signal_channels entry.
type channelInfo struct {
	pattern, group string
	listeners      int
}

func (h *signalHub) snapshot() []channelInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []channelInfo
	add := func(s *subject) {
		if len(s.plain) > 0 {
			out = append(out, channelInfo{s.pattern, "", len(s.plain)})
		}
		for _, g := range s.groups {
			out = append(out, channelInfo{s.pattern, g.name, len(g.members)})
		}
	}
	for _, s := range h.exact {
		add(s)
	}
	for _, s := range h.wild {
		add(s)
	}
	slices.SortFunc(out, func(a, b channelInfo) int {
		if c := strings.Compare(a.pattern, b.pattern); c != 0 {
			return c
		}
		return strings.Compare(a.group, b.group)
	})
	return out
}

// ensureWriter starts the push writer before the first subscription.
func (c *conn) ensureWriter() {
	if c.pushCh != nil {
		return
	}
	c.pushCh = make(chan []byte, c.srv.cfg.PushBuffer)
	c.srv.wg.Add(1)
	go c.pushLoop()
}

// push enqueues a signal line without blocking; false if the buffer is full.
// Called by the hub under its lock.
func (c *conn) push(line []byte) bool {
	select {
	case c.pushCh <- line:
		return true
	default:
		return false
	}
}

// pushLoop writes queued signal lines, each with a write call of its own
// as dflockd does: batching them would let this server keep up with
// publishers that fill dflockd's push buffers, and hide the losses that a
// client must be measured against. A failed write kills the connection.
func (c *conn) pushLoop() {
	defer c.srv.wg.Done()
	for {
		select {
		case <-c.done:
			return
		case line := <-c.pushCh:
			c.wmu.Lock()
			if c.werr == nil {
				_, c.werr = c.bw.Write(line)
			}
			if c.werr == nil {
				c.werr = c.bw.Flush()
			}
			err := c.werr
			c.wmu.Unlock()
			if err != nil {
				c.close()
				return
			}
		}
	}
}
