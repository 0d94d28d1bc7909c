package soak

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// signalFigures are the totals of the signal check.
type signalFigures struct {
	received, expected, missedGap, missedDrop, dropped, gaps int
}

// checkSignals checks invariant (e) for every subscription against the
// emissions. The library promises at-most-once delivery, and that a
// subscription that misses a signal because its listener connection broke
// is told so by a gap marker; signals it drops because its buffer is full
// are counted. So:
//
//   - every received signal was emitted, on a channel its pattern matches,
//     and reached it at most once (a queue group: at most once per group);
//   - a signal the subscription should have received and did not is covered
//     by a gap of that signal's server, or by the drop count.
//
// "Should have received": emitted successfully on server X after Listen
// returned, and relayed before a signal of X that the subscription did
// receive (Emit ended before that one's Emit started; a server relays to a
// connection in order). Then it was delivered, or the connection broke in
// between. A gap of X covers it when the signal may have been relayed
// between the last X-signal received before the gap and the first one after
// it whose Emit succeeded (a failed Emit's end does not bound when the
// server relayed it).
func checkSignals(v *verdict, subs []*subRecord, emits map[string]*emission) signalFigures {
	var f signalFigures
	byNode := make(map[int][]*emission)
	for _, em := range emits {
		byNode[em.node] = append(byNode[em.node], em)
	}
	for _, ems := range byNode {
		slices.SortFunc(ems, func(a, b *emission) int { return a.start.Compare(b.start) })
	}
	groups := make(map[[2]string]map[string]int) // (pattern, group) → payload → receipts
	for _, s := range subs {
		s.mu.Lock()
		entries := s.entries
		dropped := s.dropped
		s.mu.Unlock()
		f.dropped += int(dropped)
		seen := make(map[string]bool)
		for _, e := range entries {
			if e.gapNode >= 0 {
				f.gaps++
				continue
			}
			f.received++
			em, ok := emits[e.payload]
			switch {
			case !ok:
				v.violate("e", "client %d %q: received %q, which nobody emitted", s.client, s.pattern, e.payload)
			case !patternMatches(s.pattern, em.channel):
				v.violate("e", "client %d %q: received %q emitted on %q", s.client, s.pattern, e.payload, em.channel)
			case seen[e.payload]:
				v.violate("e", "client %d %q: received %q twice", s.client, s.pattern, e.payload)
			}
			seen[e.payload] = true
			if s.group != "" {
				k := [2]string{s.pattern, s.group}
				if groups[k] == nil {
					groups[k] = make(map[string]int)
				}
				groups[k][e.payload]++
			}
		}
		if s.group != "" {
			continue // which member should get a signal is the server's choice
		}
		uncovered := 0
		var example string
		for _, node := range s.nodes {
			// The subscription's stream from this server: its signals and gaps.
			type item struct {
				em  *emission
				gap bool
				at  time.Time
			}
			var stream []item
			for _, e := range entries {
				switch {
				case e.gapNode == node:
					stream = append(stream, item{gap: true, at: e.at})
				case e.gapNode < 0:
					if em := emits[e.payload]; em != nil && em.node == node {
						stream = append(stream, item{em: em, at: e.at})
					}
				}
			}
			var last *emission
			for i := len(stream) - 1; i >= 0 && last == nil; i-- {
				last = stream[i].em
			}
			if last == nil {
				continue
			}
			// Gap windows: (start of the last signal before, end of the first
			// signal after); zero times are open ends.
			type window struct{ lo, hi time.Time }
			var gaps []window
			for i, it := range stream {
				if !it.gap {
					continue
				}
				var w window
				for j := i - 1; j >= 0; j-- {
					if stream[j].em != nil {
						w.lo = stream[j].em.start
						break
					}
				}
				// Only an Emit that got its answer bounds when the server
				// relayed it: one that failed (its connection broke, say)
				// may still have been read and relayed by the server later,
				// after the re-listen. Signals received are relayed in
				// order, so the first answered one bounds them all.
				for j := i + 1; j < len(stream); j++ {
					if stream[j].em != nil && stream[j].em.ok {
						w.hi = stream[j].em.end
						break
					}
				}
				gaps = append(gaps, w)
			}
			ems := byNode[node]
			i, _ := slices.BinarySearchFunc(ems, s.listened, func(e *emission, t time.Time) int {
				if e.start.After(t) {
					return 1
				}
				return -1
			})
			for ; i < len(ems) && ems[i].start.Before(last.start); i++ {
				em := ems[i]
				payload := em.payload
				if !em.ok || !em.end.Before(last.start) || !patternMatches(s.pattern, em.channel) {
					continue
				}
				f.expected++
				if seen[payload] {
					continue
				}
				covered := false
				for _, w := range gaps {
					if (w.lo.IsZero() || w.lo.Before(em.end)) && (w.hi.IsZero() || em.start.Before(w.hi)) {
						covered = true
						break
					}
				}
				if covered {
					f.missedGap++
					continue
				}
				uncovered++
				if example == "" {
					// Where it should have been: after the last signal received
					// that was emitted before it, before the first one emitted
					// after it; what the stream holds in between.
					lo, hi := -1, len(stream)
					for j, it := range stream {
						if it.em != nil && it.em.end.Before(em.start) {
							lo = j
						}
					}
					for j := len(stream) - 1; j >= 0; j-- {
						if it := stream[j]; it.em != nil && it.em.start.After(em.end) {
							hi = j
						}
					}
					var around []string
					for j := max(lo, 0); j <= min(hi, len(stream)-1); j++ {
						it := stream[j]
						if it.gap {
							around = append(around, "gap received "+stamp(it.at))
						} else if j == lo || j == hi {
							around = append(around, fmt.Sprintf("%s emitted [%s, %s] received %s", it.em.payload, stamp(it.em.start), stamp(it.em.end), stamp(it.at)))
						}
					}
					example = fmt.Sprintf("%s on %s (server %d, %d receiver(s)) emitted [%s, %s]; stream around it: %s%s",
						payload, em.channel, node, em.receivers, stamp(em.start), stamp(em.end), strings.Join(around, ", "),
						v.context(node, em.start.Add(-time.Second), em.end.Add(time.Second)))
				}
			}
		}
		f.missedDrop += min(uncovered, int(dropped))
		if uncovered > int(dropped) {
			v.violate("e", "client %d %q: %d signal(s) missed with no gap and only %d drop(s) counted, e.g. %s",
				s.client, s.pattern, uncovered, dropped, example)
		}
	}
	for k, m := range groups {
		for payload, n := range m {
			if n > 1 {
				v.violate("e", "queue group (%q, %q): %q delivered %d times", k[0], k[1], payload, n)
			}
		}
	}
	return f
}
