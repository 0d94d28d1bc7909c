package renew

import (
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"
	"unsafe"
	"weak"
)

// Had OwnerFailed built the LostErrors of all the owner's leases in one
// slice, a program that keeps the error of one lost lease (or the lease
// itself, through Err) would keep every LostError of the burst, and with
// them every key and server string, reachable.
func TestOneKeptLossErrorDoesNotRetainTheWholeBurst(t *testing.T) {
	s := newTestScheduler(t, Config{})
	o := okOwner(t)
	const n = 1000
	var kept error
	var far weak.Pointer[byte]
	func() {
		leases := make([]*Lease, n)
		for i := range leases {
			leases[i] = s.Track(Spec{Key: fmt.Sprintf("burst.key.%06d", i), Token: "t", TTL: time.Minute, Owner: o})
		}
		s.OwnerFailed(o, errors.New("connection reset"))
		kept = leases[0].Err() // one loss the program remembers
		far = weak.Make(unsafe.StringData(leases[n-1].Key()))
	}()
	for range 10 {
		runtime.GC()
	}
	retained := far.Value() != nil
	runtime.KeepAlive(kept)
	if retained {
		t.Errorf("keeping one lease's loss error (%v) keeps the key of another lease of the burst reachable", kept)
	}
}
