//go:build !linux

package pool

import "time"

// quietClock is the quiet watch's timer. Off Linux it is time.Sleep, a
// runtime timer, with the cost quietWatch describes; set does not shorten a
// wait already begun.
type quietClock struct{ d time.Duration }

func newQuietClock() *quietClock { return &quietClock{} }

func (q *quietClock) set(d time.Duration) { q.d = d }

func (q *quietClock) wait() { time.Sleep(q.d) }

func (*quietClock) close() {}
