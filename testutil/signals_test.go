package testutil

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSignalsQueueGroupRoundRobin(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{})
	members := make([]*uconn, 3)
	for i := range members {
		members[i] = udial(t, s)
		require.Equal(t, "ok", members[i].do("listen", "jobs.*", " workers "))
	}
	plain := udial(t, s)
	require.Equal(t, "ok", plain.do("listen", "jobs.*", ""))
	require.Equal(t, "ok", plain.do("listen", "jobs.run", ""), "second matching pattern, still one copy")
	// Same group name on another pattern is another group.
	other := udial(t, s)
	require.Equal(t, "ok", other.do("listen", "jobs.>", "workers"))

	pub := udial(t, s)
	for i := range 6 {
		assert.Equal(t, "ok 3", pub.do("signal", "jobs.run", fmt.Sprintf(" p%d", i)))
	}
	for i, m := range members {
		// Round-robin in join order: member i gets messages i and i+3.
		assert.Equal(t, fmt.Sprintf("sig jobs.run  p%d", i), m.line())
		assert.Equal(t, fmt.Sprintf("sig jobs.run  p%d", i+3), m.line())
		m.expectSilence(50 * time.Millisecond)
	}
	for i := range 6 {
		assert.Equal(t, fmt.Sprintf("sig jobs.run  p%d", i), plain.line())
		assert.Equal(t, fmt.Sprintf("sig jobs.run  p%d", i), other.line())
	}
	plain.expectSilence(50 * time.Millisecond)

	st := s.Stats()
	assert.Contains(t, st.SignalChannels, SignalChannelInfo{Pattern: "jobs.*", Group: "workers", Listeners: 3})
	assert.Contains(t, st.SignalChannels, SignalChannelInfo{Pattern: "jobs.*", Listeners: 1})
	assert.Contains(t, pub.do("stats", "_", ""), `{"pattern":"jobs.*","group":"workers","listeners":3}`)
}

func TestSignalsDeliveryToSelfAndUnlisten(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{MaxSubscriptions: 1})
	a := udial(t, s)
	require.Equal(t, "ok", a.do("listen", "x", ""))
	assert.Equal(t, "ok", a.do("listen", "x", ""), "duplicate at the cap is a no-op")
	assert.Equal(t, "error", a.do("listen", "y", ""), "new subscription over the cap")
	a.send("signal", "x", "hello world")
	// The push may come before or after the reply.
	got := []string{a.line(), a.line()}
	assert.ElementsMatch(t, []string{"sig x hello world", "ok 1"}, got)
	require.Equal(t, "ok", a.do("unlisten", "x", ""))
	assert.Equal(t, "ok 0", a.do("signal", "x", "again"))
	assert.Empty(t, s.Stats().SignalChannels)
}

func TestSignalsSlowListenerIsDisconnected(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{PushBuffer: 4})
	slow := udial(t, s)
	require.Equal(t, "ok", slow.do("listen", "big", ""))
	pub := udial(t, s)
	payload := strings.Repeat("x", maxLargeBytes-5-len("big"))
	// The slow listener reads nothing: once the socket buffers are full its
	// push buffer fills, and the next push disconnects it.
	delivered := 0
	for i := 0; ; i++ {
		require.Less(t, i, 10000, "listener never disconnected")
		reply := pub.do("signal", "big", payload)
		if reply == "ok 0" {
			break
		}
		require.Equal(t, "ok 1", reply)
		delivered++
	}
	assert.Greater(t, delivered, 4)
	waitFor(t, "slow listener gone", func() bool { return s.Stats().Connections == 1 })
	assert.Empty(t, s.Stats().SignalChannels)
	slow.expectEOF(unitWait)
}

func TestSignalsQueueGroupAllFullDisconnectsPrimary(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{PushBuffer: 1})
	a, b := udial(t, s), udial(t, s)
	require.Equal(t, "ok", a.do("listen", "g", "grp"))
	require.Equal(t, "ok", b.do("listen", "g", "grp"))
	pub := udial(t, s)
	payload := strings.Repeat("y", maxLargeBytes-5-1)
	for i := 0; ; i++ {
		require.Less(t, i, 10000, "group never overflowed")
		if pub.do("signal", "g", payload) == "ok 0" {
			break
		}
	}
	waitFor(t, "a group member disconnected", func() bool { return s.Stats().Connections < 3 })
}

func TestSignalsOverflowDropKeepsTheSlowListener(t *testing.T) {
	t.Parallel()
	// No write timeout: the listener reads nothing until the end, and its
	// connection must survive the wait whatever the machine's load.
	s := NewServer(t, Config{PushBuffer: 4, SignalOverflow: OverflowDrop, WriteTimeout: -1})
	slow := udial(t, s)
	require.Equal(t, "ok", slow.do("listen", "big", ""))
	pub := udial(t, s)
	payload := strings.Repeat("x", maxLargeBytes-5-len("big"))
	delivered := dropTwice(t, pub, "big", payload)
	assert.Greater(t, delivered, 4)
	assert.Equal(t, 2, s.Stats().Connections, "the slow listener is kept")
	assert.Contains(t, s.Stats().SignalChannels, SignalChannelInfo{Pattern: "big", Listeners: 1})

	// Exactly what was counted arrives, and then the listener gets new
	// signals again: the drops left no trace on its connection.
	for range delivered {
		require.Equal(t, "sig big "+payload, slow.line())
	}
	for i := 0; ; i++ {
		require.Less(t, i, 10000, "listener never got a signal again")
		if pub.do("signal", "big", "after") == "ok 1" {
			break
		}
	}
	assert.Equal(t, "sig big after", slow.line())
	slow.expectSilence(50 * time.Millisecond)
}

func TestSignalsOverflowDropKeepsTheFullGroup(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Config{PushBuffer: 1, SignalOverflow: OverflowDrop, WriteTimeout: -1})
	a, b := udial(t, s), udial(t, s)
	require.Equal(t, "ok", a.do("listen", "g", "grp"))
	require.Equal(t, "ok", b.do("listen", "g", "grp"))
	pub := udial(t, s)
	dropTwice(t, pub, "g", strings.Repeat("y", maxLargeBytes-5-1))
	assert.Equal(t, 3, s.Stats().Connections, "no member is disconnected")
	assert.Contains(t, s.Stats().SignalChannels, SignalChannelInfo{Pattern: "g", Group: "grp", Listeners: 2})
}

// dropTwice signals payload on channel until two signals have been dropped
// (`ok 0`), and returns how many were delivered (`ok 1`) meanwhile. Not
// until the first drop only: a push buffer is full when its writer is
// blocked on the socket, but the kernel may yet take more of the blocked
// write (seen: the signal after the first drop delivered), so a drop does
// not prove that the next signal is dropped too.
func dropTwice(t *testing.T, pub *uconn, channel, payload string) (delivered int) {
	t.Helper()
	for i, drops := 0, 0; drops < 2; i++ {
		require.Less(t, i, 10000, "the push buffer never filled")
		switch reply := pub.do("signal", channel, payload); reply {
		case "ok 0":
			drops++
		case "ok 1":
			delivered++
		default:
			t.Fatalf("signal: %q", reply)
		}
	}
	return delivered
}
