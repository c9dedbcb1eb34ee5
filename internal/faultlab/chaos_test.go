package faultlab

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSummarizeRecoveries checks how recoveries are judged: one cut short by a later
// traffic-blocking fault is interrupted (not a timeout), one under a fault's own latency is
// slowed, and a timeout with nothing to explain it stays a timeout.
func TestSummarizeRecoveries(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	outcome := func(k Kind, began, ended float64, recs ...Recovery) *Outcome {
		return &Outcome{Fault: Fault{Kind: k}, Began: at(began), Ended: at(ended), Restored: at(ended), Recoveries: recs}
	}
	res := &ChaosResult{Final: &Report{}, Duplicates: map[Kind]int{}}
	res.Outcomes = []*Outcome{
		// A blackhole from 200 s to 209 s, into which a stale endpoint (206 s to 240 s) falls:
		// the blackhole's recovery times out at 239 s, before a writer is reachable at all.
		outcome(Blackhole, 200, 209, Recovery{Phase: "traffic flows again", Reachable: at(209), Took: 30 * time.Second, Err: ErrNoRecovery}),
		outcome(StaleEndpoint, 206, 240, Recovery{Phase: "endpoint switched", Reachable: at(240), Took: 200 * time.Millisecond}),
		// Backends terminated at 0 s; a stale endpoint begins at 3 s and lasts 33 s: no
		// handler can start before 36 s, so the 30 s limit is reached.
		outcome(TerminateBackends, 0, 0, Recovery{Phase: "backends terminated", Reachable: at(0), Took: 30 * time.Second, Err: ErrNoRecovery}),
		outcome(StaleEndpoint, 3, 36, Recovery{Phase: "endpoint switched", Reachable: at(36), Took: 120 * time.Millisecond}),
		// A flip back whose own latency slowed its first recovery.
		outcome(CommitLossFlipBack, 60, 64,
			Recovery{Phase: "endpoint switched", Reachable: at(61), Took: 1800 * time.Millisecond, Slowed: true},
			Recovery{Phase: "flip back", Reachable: at(64), Took: 90 * time.Millisecond}),
		// A restart nothing explains: a timeout.
		outcome(Restart, 100, 101, Recovery{Phase: "server restarted", Reachable: at(101), Took: 30 * time.Second, Err: ErrNoRecovery}),
	}
	res.summarize(time.Second, nil)
	require.Equal(t, 2, res.InterruptedRecoveries)
	require.Equal(t, 1, res.RecoveryTimeouts)
	require.Equal(t, []time.Duration{1800 * time.Millisecond}, res.SlowedRecoveries)
	require.ElementsMatch(t, []time.Duration{120 * time.Millisecond, 200 * time.Millisecond, 90 * time.Millisecond, 30 * time.Second}, res.Recoveries)
	require.Equal(t, 30*time.Second, res.RecoveryMax)
}

// TestDuplicatesGoToTheCommitLosingFault: a duplicate seen while a commit loss is being
// recovered from is the commit loss's, even when a latency fault began after it; with no
// commit-losing fault under way, the latest fault takes it.
func TestDuplicatesGoToTheCommitLosingFault(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 16, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	outcome := func(k Kind, began, restored float64) *Outcome {
		return &Outcome{Fault: Fault{Kind: k}, Began: at(began), Ended: at(restored), Restored: at(restored)}
	}
	res := &ChaosResult{Duplicates: map[Kind]int{}, Final: &Report{
		DuplicateAt:      []time.Time{at(12), at(40), at(100)},
		DeliveredTwiceAt: []time.Time{at(12), at(40)},
	}}
	res.Outcomes = []*Outcome{
		outcome(CommitLossFlipBack, 0, 10),
		outcome(Latency, 8, 14), // began later, but causes no duplicate
		outcome(Blackhole, 35, 45),
		outcome(Latency, 38, 42),
	}
	res.summarize(time.Second, nil)
	require.Equal(t, map[Kind]int{CommitLossFlipBack: 1, Latency: 1, "": 1}, res.Duplicates)
	require.Equal(t, 1, res.DupLosing)
	require.Equal(t, 2, res.DupNotLosing)
	require.Equal(t, 1, res.TwiceLosing)
	require.Equal(t, 1, res.TwiceNotLosing)
}
