//go:build !race

package main

// raceEnabled says that the tests run with the race detector, so the
// worker binary they build has it too.
const raceEnabled = false
