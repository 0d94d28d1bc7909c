package difftest

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// The comparator is what makes TestDifferential able to fail, and that
// runs only when a dflockd binary is given (never in make test or CI). These exercise it without one: equal behaviour must compare
// equal, and each kind of difference must be flagged as a mismatch.
func TestComparatorFlagsDifferences(t *testing.T) {
	session := func() *session {
		return &session{books: [2]*tokenBook{newTokenBook(), newTokenBook()}, lookPast: map[string]bool{}}
	}
	const tokA, tokB = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	line := func(l string) event { return event{line: l} }
	cases := []struct {
		name   string
		real   event
		fake   event
		gotF   bool
		differ bool
	}{
		{"same grant, other token", line("ok " + tokA + " 30"), line("ok " + tokB + " 30"), true, false},
		{"grant vs timeout", line("ok " + tokA + " 30"), line("timeout"), true, true},
		{"other lease", line("ok " + tokA + " 30"), line("ok " + tokB + " 33"), true, true},
		{"acquired vs ok", line("acquired " + tokA + " 30"), line("ok " + tokB + " 30"), true, true},
		{"error words", line("error"), line("error_auth"), true, true},
		{"closed vs reply", event{closed: true}, line("ok"), true, true},
		{"silent vs reply", line("ok"), event{}, false, true},
		{"stats lock count", line(`ok {"connections":1,"locks":[],"semaphores":[],"idle_locks":[],"idle_semaphores":[]}`),
			line(`ok {"connections":1,"locks":[{"key":"k","owner_conn_id":0,"lease_expires_in_s":3,"waiters":0}],"semaphores":[],"idle_locks":[],"idle_semaphores":[]}`), true, true},
		{"stats lease beyond tolerance", line(`ok {"connections":1,"locks":[{"key":"k","owner_conn_id":0,"lease_expires_in_s":3,"waiters":0}],"semaphores":[],"idle_locks":[],"idle_semaphores":[]}`),
			line(`ok {"connections":1,"locks":[{"key":"k","owner_conn_id":0,"lease_expires_in_s":9,"waiters":0}],"semaphores":[],"idle_locks":[],"idle_semaphores":[]}`), true, true},
		{"stats lease within tolerance", line(`ok {"connections":1,"locks":[{"key":"k","owner_conn_id":0,"lease_expires_in_s":3,"waiters":0}],"semaphores":[],"idle_locks":[],"idle_semaphores":[]}`),
			line(`ok {"connections":1,"locks":[{"key":"k","owner_conn_id":0,"lease_expires_in_s":3.5,"waiters":0}],"semaphores":[],"idle_locks":[],"idle_semaphores":[]}`), true, false},
	}
	for _, tc := range cases {
		s := session()
		var evs [2]event
		evs[onReal], evs[onFake] = tc.real, tc.fake
		var got [2]bool
		got[onReal], got[onFake] = true, tc.gotF
		_, _, ok := s.observe("", evs, got)
		assert.Equal(t, !tc.differ, ok, "%s: observe says equal=%v", tc.name, ok)
		assert.Equal(t, tc.differ, s.mismatch, "%s: session mismatch flag", tc.name)
	}
	// A second grant from each server keeps the names in step: T2 on both.
	s := session()
	for _, tok := range [][2]string{{tokA, tokB}, {tokB, tokA}} {
		var evs [2]event
		evs[onReal], evs[onFake] = line("ok "+tok[0]+" 30"), line("ok "+tok[1]+" 30")
		_, _, ok := s.observe("", evs, [2]bool{true, true})
		assert.True(t, ok)
	}
	assert.Equal(t, tokB, s.books[onReal].render("{T2}")[:32])
	assert.Equal(t, tokA, s.books[onFake].render("{T2}")[:32])
}
