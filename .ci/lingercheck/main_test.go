//go:build linux

// Package lingercheck checks, against a real dflockd, what the keepalive's
// linger is for (docs/leases.md): a try-acquire cut by the keepalive while
// the server is paused must not leave its grant held once the server
// resumes. Not part of `make test` (it needs a dflockd process to pause):
//
//	dflockd -port P -auto-release-on-disconnect=false &
//	LINGERCHECK_ADDR=127.0.0.1:P LINGERCHECK_PID=$! go test -count=1 -v ./.ci/lingercheck
package lingercheck

import (
	"context"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dflock-sdk/go/dflock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestTryGrantOfAPausedServerIsReleased(t *testing.T) {
	addr, pid := os.Getenv("LINGERCHECK_ADDR"), os.Getenv("LINGERCHECK_PID")
	if addr == "" || pid == "" {
		t.Skip("set LINGERCHECK_ADDR and LINGERCHECK_PID (a dflockd with auto-release off)")
	}
	p, err := strconv.Atoi(pid)
	if err != nil {
		t.Fatalf("LINGERCHECK_PID: %v", err)
	}
	ctx := context.Background()
	c, err := dflock.New([]string{addr}, dflock.WithKeepAlive(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	held := 0
	for i := range 10 {
		key := "lingercheck-" + strconv.Itoa(i)
		l, err := c.TryLock(ctx, "lingercheck-warm") // the lane is up before the pause
		if err != nil {
			t.Fatal(err)
		}
		_ = l.Release(ctx)
		_ = syscall.Kill(p, syscall.SIGSTOP)
		got, err := c.TryLock(ctx, key, dflock.LeaseTTL(time.Hour))
		time.Sleep(time.Duration(300+100*i) * time.Millisecond)
		_ = syscall.Kill(p, syscall.SIGCONT)
		t.Logf("%s: the TryLock during the pause: %v", key, err)
		if err == nil {
			// Served before the signal took effect: not the case under test.
			_ = got.Release(ctx)
		}
		free := false
		for range 50 {
			time.Sleep(100 * time.Millisecond)
			if l, err := c.TryLock(ctx, key); err == nil {
				_ = l.Release(ctx)
				free = true
				break
			}
		}
		if !free {
			held++
			t.Logf("%s: still held 5 s after the resume (its lease: an hour)", key)
		}
	}
	if held > 0 {
		t.Errorf("%d of 10 keys left held by nobody", held)
	}
}
