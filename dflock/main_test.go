package dflock

import (
	"flag"
	"runtime"
	"strconv"
	"testing"

	"go.uber.org/goleak"
)

// TestMain runs twice as many parallel tests at once as there are CPUs,
// unless -test.parallel is given or there is only one. This package's
// tests mostly wait (on leases, keepalives and the stalls they inject):
// under -race on two CPUs a run takes about 60 s of CPU in 175 s, so the
// default of one parallel test per CPU left the CPUs idle and the package
// on make test's critical path. On one CPU two at once starved a fault
// test of every grant for its whole 4 s (TestWithLockNeverLiveAfterLossReported),
// so there it stays one.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if n := runtime.GOMAXPROCS(0); !set && n > 1 {
		if err := flag.Set("test.parallel", strconv.Itoa(2*n)); err != nil {
			panic(err)
		}
	}
	goleak.VerifyTestMain(m)
}
