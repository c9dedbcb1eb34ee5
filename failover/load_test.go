package failover_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/internal/faultlab"
	"github.com/skiplock/skiplock/queue"
)

const loadQueue = faultlab.QueueDefault

// startLoad starts faultlab's load (producers cutting batches with a
// batch.Builder, runners recording every execution) on db, stopped when the
// test ends.
func startLoad(t *testing.T, db queue.DB, cfg *faultlab.LoadConfig) *faultlab.Load {
	t.Helper()
	var c faultlab.LoadConfig
	if cfg != nil {
		c = *cfg
	}
	c.Schema = testSchema
	if c.Logger == nil {
		c.Logger = testLogger(t)
	}
	l, err := faultlab.StartLoad(ctxFor(t, time.Minute), db, &c)
	require.NoError(t, err)
	t.Cleanup(l.Stop)
	return l
}

// runFor lets the load run for d (the fault schedule's own pacing).
func runFor(d time.Duration) { <-time.After(d) }

// finish stops the producers, drains, and runs the shared invariant check
// on the cluster's final writer.
func finish(t *testing.T, c *cluster, l *faultlab.Load) *faultlab.Report {
	t.Helper()
	rep, err := l.Finish(ctxFor(t, 3*time.Minute), c.Direct(c.Writer()), 90*time.Second)
	require.NoError(t, err)
	return rep
}

// requireInvariants fails the test on a broken invariant: every
// acknowledged batch completed exactly once (nothing lost, nothing left
// after the drain), no stale-token completion, and — unless the fault lost
// commits, where a second claim cannot be fenced — no handlers of one batch
// overlapping beyond the margin.
func requireInvariants(t *testing.T, name string, rep *faultlab.Report, lostCommits bool) {
	t.Helper()
	t.Logf("%s: %s", name, rep)
	if rep.Lost > 0 {
		t.Logf("%s: first lost keys: %v", name, rep.LostKeys)
	}
	require.Positive(t, rep.Acked)
	require.Zero(t, rep.Lost, "acknowledged batches were lost")
	require.Zero(t, rep.DoneTwice, "batches were completed more than once")
	require.Zero(t, rep.StaleCompletions, "a stale token's completion was accepted: %v", rep.StaleDetail)
	require.Equal(t, rep.Acked, rep.Completed, "every acknowledged batch should be completed after the drain")
	if !lostCommits {
		require.Zero(t, rep.Overlaps, "handlers of one batch overlapped beyond the margin (max %s)", rep.MaxOverlap)
	}
}
