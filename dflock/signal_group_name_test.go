package dflock

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dflock-sdk/go/testutil"
)

// Group("") — a group name read from an unset environment variable, say —
// is refused before any I/O with an *ArgError naming group. It meant "no
// group": every instance then got every signal, the duplicate processing a
// queue group exists to prevent (found by review). Without Group, no group.
func TestEmptyGroupNameIsRefused(t *testing.T) {
	t.Parallel()
	srv := newServer(t, testutil.Config{})
	c := newClient(t, []string{srv.Addr()})
	sub, err := c.Listen(testCtx(t), "jobs.>", Group(""))
	if err == nil {
		sub.Close()
		t.Fatalf("Listen with Group(\"\") subscribed without a group (Group() = %q)", sub.Group())
	}
	var ae *ArgError
	require.True(t, errors.As(err, &ae), "%v is not an *ArgError", err)
	require.Equal(t, "group", ae.Arg)
	require.Equal(t, 0, srv.Stats().Connections, "nothing was dialled")

	sub, err = c.Listen(testCtx(t), "jobs.>")
	require.NoError(t, err)
	require.Empty(t, sub.Group())
	sub.Close()
}
