//go:build !linux

package pool

import (
	"sync/atomic"
	"time"
)

// quietClock is the quiet watch's timer. Off Linux it is time.Sleep, a
// runtime timer, with the cost quietWatch describes; set does not shorten a
// wait already begun. set may come from any goroutine while the watch
// goroutine waits, hence the atomic.
type quietClock struct{ d atomic.Int64 }

func newQuietClock() *quietClock { return &quietClock{} }

func (q *quietClock) set(d time.Duration) { q.d.Store(int64(d)) }

func (q *quietClock) wait() { time.Sleep(time.Duration(q.d.Load())) }

func (*quietClock) close() {}
