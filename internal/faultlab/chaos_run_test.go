package faultlab

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestHarnessSurvivesTerminatedBackends: a terminate_backends fault kills every client
// backend on the writer, the harness's own connections included. The topology fault that
// follows at once must not fail on a connection that fault killed (a 30-minute chaos run
// once ended on "WAL position of node 0: FATAL ... (SQLSTATE 57P01)").
func TestHarnessSurvivesTerminatedBackends(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := StartCluster(ctx, &ClusterConfig{Logf: t.Logf})
	require.NoError(t, err)
	defer c.Close()
	w, r := c.Writer(), c.Replica()
	// Every connection of both direct pools is open and idle before the fault.
	for range 3 {
		require.NoError(t, c.WaitCaughtUp(ctx, w, r))
	}
	n, err := c.Nodes[w].TerminateBackends(ctx)
	require.NoError(t, err)
	require.Positive(t, n, "the harness's idle connections to the writer are client backends")
	require.NoError(t, c.WaitCaughtUp(ctx, w, r))
	var one int
	require.NoError(t, c.Direct(w).QueryRow(ctx, `SELECT 1`).Scan(&one))
}

// TestChaosEndsAfterAFailedTopologyFault: when a topology fault fails (the cluster's shape is
// then unknown), the run stops and returns that error promptly, with overlapping faults and
// the load still under way; it does not wait for the rest of the schedule or hang in the
// clean-up (a 30-minute run once hung there for good).
func TestChaosEndsAfterAFailedTopologyFault(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	boom := errors.New("injected failure")
	sched := &Schedule{Seed: -1, Duration: 5 * time.Minute, Faults: []Fault{
		{Kind: TerminateBackends, Start: 3 * time.Second},
		{Kind: Blackhole, Start: 4 * time.Second, Window: 10 * time.Second},
		// It fails with no writer left, as a planned failover that fails between
		// demoting the writer and promoting the replica does.
		{Kind: PlannedFailover, Start: 4 * time.Second, Inspect: func(ctx context.Context, c *Cluster, o *Outcome) error {
			return errors.Join(boom, c.Nodes[c.Writer()].DemoteReadOnly(ctx))
		}},
		{Kind: Latency, Start: 4 * time.Minute},
	}}
	start := time.Now()
	res, err := RunSchedule(ctx, sched, &ChaosConfig{Logf: t.Logf})
	require.ErrorIs(t, err, boom)
	require.NotNil(t, res)
	// The fault fails about 15 s in; the load then stops within 10 s plus a round trip and
	// the client gives its re-assertions at most RetryWindow (30 s).
	require.Less(t, time.Since(start), 2*time.Minute, "the run went on past its failed topology fault")
	require.Zero(t, res.Faults[Latency], "a fault after the failure ran")
}
