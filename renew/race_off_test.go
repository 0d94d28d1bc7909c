//go:build !race

package renew

const raceEnabled = false
