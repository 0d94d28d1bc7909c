package difftest

import (
	"bufio"
	"io"
	"net"
	"time"
)

// ioDeadline bounds every dial and write of the harness.
const ioDeadline = 3 * time.Second

// event is what a connection delivered: a reply line (without its '\n') or
// the end of the stream (closed is set; no event follows).
type event struct {
	line   string
	closed bool
	err    error // why the stream ended: io.EOF, a reset, …
}

func (e event) String() string {
	if e.closed {
		return "<closed>"
	}
	return e.line
}

// rawClient is one client connection speaking literal bytes. A goroutine
// reads reply lines into events, so that the harness can wait for two
// servers at once with deadlines.
type rawClient struct {
	nc     net.Conn
	events chan event
	end    *event // the closing event, once received
	done   chan struct{}
}

func dialClient(addr string) (*rawClient, error) {
	nc, err := net.DialTimeout("tcp", addr, ioDeadline)
	if err != nil {
		return nil, err
	}
	c := &rawClient{nc: nc, events: make(chan event, 256), done: make(chan struct{})}
	go c.readLoop()
	return c, nil
}

func (c *rawClient) readLoop() {
	defer close(c.done)
	defer close(c.events)
	br := bufio.NewReaderSize(c.nc, 1<<16)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			// A partial line before the end is reported as such.
			if line != "" {
				c.events <- event{line: line + "<no LF>"}
			}
			c.events <- event{closed: true, err: err}
			return
		}
		c.events <- event{line: line[:len(line)-1]}
	}
}

// send writes b in one write call. A write to a connection the server
// closed may fail; that is seen as the closing event by the reader.
func (c *rawClient) send(b []byte) {
	_ = c.nc.SetWriteDeadline(time.Now().Add(ioDeadline))
	_, _ = c.nc.Write(b)
}

// closeWrite half-closes the connection (shutdown of the write side).
func (c *rawClient) closeWrite() {
	if tc, ok := c.nc.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// ended reports whether the connection's stream has been seen to end.
func (c *rawClient) ended() bool { return c.end != nil }

// close closes the connection and waits for the reader to finish.
func (c *rawClient) close() {
	_ = c.nc.Close()
	for range c.events { // drain, so that the reader can exit
	}
	<-c.done
}

// recv takes an event that has arrived on ch (from c.events).
func (c *rawClient) recv(ev event, ok bool) event {
	if !ok || ev.closed {
		if c.end == nil {
			if !ok {
				ev = event{closed: true, err: io.EOF}
			}
			c.end = &ev
		}
		return *c.end
	}
	return ev
}

// channel is what to select on for c's next event: nil once it ended.
func (c *rawClient) channel() <-chan event {
	if c.end != nil {
		return nil
	}
	return c.events
}

// awaitPair waits for the next event of both connections (either may be
// nil: then nothing is awaited on that side). It waits up to window for a
// first event and, once one side has answered, up to grace for the other,
// so that a prompt reply on one server and silence on the other is a
// difference, not a race. A side that already ended reports its end at
// once. got tells which sides delivered an event.
func awaitPair(cs [2]*rawClient, window, grace time.Duration) (evs [2]event, got [2]bool) {
	for i, c := range cs {
		if c == nil {
			got[i] = true
			evs[i] = event{line: "<n/a>"}
		} else if c.ended() {
			got[i], evs[i] = true, *c.end
		}
	}
	timer := time.NewTimer(window)
	defer timer.Stop()
	extended := got[0] != got[1] && (cs[0] == nil) == (cs[1] == nil)
	if extended {
		timer.Reset(grace)
	}
	for !got[0] || !got[1] {
		var ch [2]<-chan event
		for i := range cs {
			if !got[i] {
				ch[i] = cs[i].channel()
			}
		}
		select {
		case ev, ok := <-ch[0]:
			evs[0], got[0] = cs[0].recv(ev, ok), true
		case ev, ok := <-ch[1]:
			evs[1], got[1] = cs[1].recv(ev, ok), true
		case <-timer.C:
			if (got[0] || got[1]) && !extended {
				extended = true
				timer.Reset(grace)
				continue
			}
			return evs, got
		}
		if got[0] != got[1] && !extended {
			extended = true
			if !timer.Stop() {
				<-timer.C
			}
			timer.Reset(grace)
		}
	}
	return evs, got
}
