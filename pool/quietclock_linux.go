package pool

import (
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// quietClock is the quiet watch's timer: a timerfd read through the
// network poller, so that the goroutine waiting for it parks like one
// reading a socket, and no runtime timer shortens the poller's waits (see
// quietWatch). Where the kernel refuses a timerfd (a sandbox), it falls
// back to time.Sleep. Only the watch goroutine waits; set may come from
// any goroutine.
type quietClock struct {
	mu  sync.Mutex
	f   *os.File        // nil: the fallback
	rc  syscall.RawConn // f's descriptor, safe against f's Close
	d   time.Duration   // the fallback's next sleep
	buf [8]byte         // wait's
}

func newQuietClock() *quietClock {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return &quietClock{}
	}
	f := os.NewFile(uintptr(fd), "dflock-quiet-timer")
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return &quietClock{}
	}
	return &quietClock{f: f, rc: rc}
}

// set (re)arms the clock to fire d from now, also while wait is waiting.
func (q *quietClock) set(d time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.d = d
	if q.f == nil {
		return
	}
	// A zero value would disarm the timer and leave wait waiting forever.
	its := unix.ItimerSpec{Value: unix.NsecToTimespec(max(int64(d), 1))}
	var err error
	if cerr := q.rc.Control(func(fd uintptr) { err = unix.TimerfdSettime(int(fd), 0, &its, nil) }); cerr != nil || err != nil {
		// Not expected of a valid timerfd. Fall back rather than leave
		// wait waiting for a timer never armed (Close ends its Read).
		_ = q.f.Close()
		q.f = nil
	}
}

// wait returns once the clock fires.
func (q *quietClock) wait() {
	q.mu.Lock()
	f, d := q.f, q.d
	q.mu.Unlock()
	if f == nil {
		time.Sleep(d)
		return
	}
	if _, err := f.Read(q.buf[:]); err != nil {
		time.Sleep(d)
	}
}

func (q *quietClock) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.f != nil {
		_ = q.f.Close()
		q.f = nil
	}
}
