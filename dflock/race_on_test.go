//go:build race

package dflock

// raceEnabled reports whether the tests run under the race detector.
const raceEnabled = true
