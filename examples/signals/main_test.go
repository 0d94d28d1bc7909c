package main

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The README promises this program runs on embedded servers; keep it true.
func TestRunOnEmbeddedServer(t *testing.T) {
	t.Setenv("DFLOCK_SERVERS", "")
	if err := run(); err != nil {
		t.Fatalf("run: %v", err)
	}
}
