package main

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The README promises this program runs on an embedded server; keep it true.
// run fails if no standby takes over, or if the new leader started before
// the cut-off one stopped.
func TestRunOnEmbeddedServer(t *testing.T) {
	t.Setenv("DFLOCK_SERVERS", "")
	if err := run(); err != nil {
		t.Fatalf("run: %v", err)
	}
}
