package wire

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestMatchPattern(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, channel string
		want             bool
	}{
		// docs/protocol.md §6.6.
		{">", "a", true},
		{">", "a.b.c", true},
		{"a.>", "a.b", true},
		{"a.>", "a.b.c", true},
		{"a.>", "a", false},
		{"a.*", "a.b", true},
		{"a.*", "a.b.c", false},
		{"a.*", "a", false},
		{"*", "a", true},
		{"*", "a.b", false},
		// Literals and mixtures.
		{"a", "a", true},
		{"a", "b", false},
		{"a", "a.b", false},
		{"a.b", "a", false},
		{"a.b", "a.bc", false},
		{"ab", "a.b", false},
		{"*.b.>", "x.b.c", true},
		{"*.b.>", "x.b", false},
		{"*.b.>", "x.c.d", false},
		{"a.*.c", "a.b.c", true},
		{"a.*.c", "a.b.d", false},
		{"*.*", "a.b", true},
		{"*.*", "a.b.c", false},
		{"a.*.>", "a.b.c", true},
		{"a.*.>", "a.b", false},
		// Empty tokens behave like the server's strings.Split, although
		// ValidatePattern refuses such patterns.
		{"a.*", "a.", true},
		{"*", "", true},
		{">", "", true},
		{"a..b", "a..b", true},
		{"a.*.b", "a..b", true},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, MatchPattern(tt.pattern, tt.channel), "%q vs %q", tt.pattern, tt.channel)
	}
}

func TestMatchPatternDoesNotAllocate(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		MatchPattern("orders.*.created.>", "orders.eu.created.2026.05")
	})
	assert.Zero(t, allocs)
}
