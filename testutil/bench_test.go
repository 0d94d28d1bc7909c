package testutil

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// BenchmarkPipelinedLockRelease measures the server's throughput ceiling:
// 8 raw connections, each pipelining batches of 64 `l key 0` requests,
// reading the grants, then pipelining the 64 matching `r` requests. Keys are
// distinct per connection, so nothing contends. One op is one lock+release
// pair (two requests).
//
//	go test -run='^$' -bench=PipelinedLockRelease -count=5 ./testutil
func BenchmarkPipelinedLockRelease(b *testing.B) {
	const (
		conns = 8
		batch = 64
	)
	s := NewServer(b, Config{})
	clients := make([]*benchClient, conns)
	for i := range clients {
		clients[i] = newBenchClient(b, s.Addr(), i, batch)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()

	var wg sync.WaitGroup
	errs := make(chan error, conns)
	per := (b.N + conns - 1) / conns
	for _, c := range clients {
		wg.Go(func() {
			for done := 0; done < per; done += batch {
				if err := c.round(min(batch, per-done)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	pairs := float64(per * conns)
	b.ReportMetric(pairs/elapsed.Seconds(), "pairs/s")
	b.ReportMetric(2*pairs/elapsed.Seconds(), "requests/s")
}

// benchClient is one pipelining connection with preallocated buffers.
type benchClient struct {
	nc    net.Conn
	br    *bufio.Reader
	locks [][]byte // the `l` request for each key of the batch
	keys  []string
	out   []byte
}

func newBenchClient(b *testing.B, addr string, id, batch int) *benchClient {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = nc.Close() })
	c := &benchClient{nc: nc, br: bufio.NewReaderSize(nc, 64<<10)}
	for j := range batch {
		key := fmt.Sprintf("bench_%d_%d", id, j)
		c.keys = append(c.keys, key)
		c.locks = append(c.locks, []byte("l\n"+key+"\n0\n"))
	}
	return c
}

// round locks n keys in one write, reads the grants, releases them in one
// write and reads the acknowledgements.
func (c *benchClient) round(n int) error {
	c.out = c.out[:0]
	for j := range n {
		c.out = append(c.out, c.locks[j]...)
	}
	if _, err := c.nc.Write(c.out); err != nil {
		return err
	}
	c.out = c.out[:0]
	for j := range n {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		// "ok <32 hex> 33\n"
		if len(line) < 36 || !bytes.HasPrefix(line, []byte("ok ")) {
			return fmt.Errorf("lock %s: %q", c.keys[j], line)
		}
		c.out = append(c.out, "r\n"...)
		c.out = append(c.out, c.keys[j]...)
		c.out = append(c.out, '\n')
		c.out = append(c.out, line[3:35]...)
		c.out = append(c.out, '\n')
	}
	if _, err := c.nc.Write(c.out); err != nil {
		return err
	}
	for j := range n {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if string(line) != "ok\n" {
			return fmt.Errorf("release %s: %q", c.keys[j], line)
		}
	}
	return nil
}
