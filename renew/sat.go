package renew

import (
	"math"
	"time"
)

// Scheduler times are int64 nanoseconds since the scheduler's epoch, and a
// lease may be as long as wire.MaxSeconds (about 292 years, "forever"):
// every sum or difference of a time and a duration saturates instead of
// wrapping, so that "never" stays in the far future rather than turning
// into "long ago".

// addSat returns a+b clamped to the int64 range.
func addSat(a, b int64) int64 {
	s := a + b
	if (a >= 0) == (b >= 0) && (s >= 0) != (a >= 0) {
		if a >= 0 {
			return math.MaxInt64
		}
		return math.MinInt64
	}
	return s
}

// subSat returns a−b clamped to the int64 range.
func subSat(a, b int64) int64 {
	s := a - b
	if (a >= 0) != (b >= 0) && (s >= 0) != (a >= 0) {
		if a >= 0 {
			return math.MaxInt64
		}
		return math.MinInt64
	}
	return s
}

// scaleDur returns d×f for d >= 0 and 0 < f < 1, clamped to [0, d]
// (float64 rounding must not push the product past d or the int64 range).
func scaleDur(d time.Duration, f float64) time.Duration {
	x := float64(d) * f
	if x <= 0 {
		return 0
	}
	if x >= float64(d) {
		return d
	}
	return time.Duration(x)
}

// seconds converts a count of whole seconds to a Duration, saturating.
func seconds(n int64) time.Duration {
	switch {
	case n > math.MaxInt64/int64(time.Second):
		return math.MaxInt64
	case n < math.MinInt64/int64(time.Second):
		return math.MinInt64
	}
	return time.Duration(n) * time.Second
}
