package harness

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestDepthWindow(t *testing.T) {
	for _, tc := range []struct {
		n, d, from, to int64
	}{
		{10_000_000, 10_000_000, 1, 100_000},          // at the top: the first 100,000
		{10_000_000, 1_000_000, 8_950_000, 9_050_000}, // depth 1,050,000 .. 950,000
		{10_000_000, 10_000, 9_987_500, 9_992_500},    // depth 12,500 .. 7,500
		{1_000_000, 1_000_000, 1, 100_000},
		{20_000, 20_000, 1, 10_000}, // w = d/2
		{20_000, 2_000, 17_500, 18_500},
		{20_000, 19_000, 1, 9_500}, // d + w/2 beyond n: moved down
	} {
		from, to := depthWindow(tc.n, tc.d)
		require.Equal(t, tc.from, from, "from, n=%d d=%d", tc.n, tc.d)
		require.Equal(t, tc.to, to, "to, n=%d d=%d", tc.n, tc.d)
	}
	require.Equal(t, []int64{1_000_000, 100_000, 10_000}, backlogMarks(BacklogMarksDefault, 1_000_000))
	require.Equal(t, []int64{20_000, 2_000}, backlogMarks([]int{2_000, 20_000, 50_000, 2_000}, 20_000))

	got, err := ParseScenarios(ScenarioBacklog)
	require.NoError(t, err)
	require.Equal(t, []string{ScenarioBacklog}, got)
	all, err := ParseScenarios("all")
	require.NoError(t, err)
	require.NotContains(t, all, ScenarioBacklog, "backlog runs only when named")
}

// TestSmokeBacklog runs the backlog scenario tiny (20,000 batches) for both
// systems and checks that every batch, backlog and new, was completed
// exactly once (counted in each system's tables), that every new batch was
// measured, and that the figures and targets exist.
func TestSmokeBacklog(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server")
	}
	const rows = 20_000
	cfg, err := Preset("quick")
	require.NoError(t, err)
	cfg.Scenarios = []string{ScenarioBacklog}
	cfg.BacklogRows = rows
	cfg.BacklogMarks = []int{50_000, rows, 2_000}
	var progress bytes.Buffer
	cfg.Progress = &progress
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	require.NoError(t, err, "progress:\n%s", progress.String())

	get := func(sys, metric string, params ...any) float64 {
		t.Helper()
		v, ok := rep.get(ScenarioBacklog, sys, metric, params...)
		require.True(t, ok, "%s %s %v missing", sys, metric, params)
		return v
	}
	for _, sys := range []string{SystemSkiplock, SystemRiver} {
		newBatches := get(sys, "new_batches")
		require.Positive(t, newBatches, sys)
		require.Equal(t, rows+newBatches, get(sys, "completed"), "%s: completed in the database", sys)
		require.Zero(t, get(sys, "left"), "%s: rows left", sys)
		require.Zero(t, get(sys, "duplicates"), "%s: completed twice or retried", sys)
		require.Equal(t, newBatches, get(sys, "new_start_samples", "class", "urgent")+get(sys, "new_start_samples", "class", "same"),
			"%s: a latency sample per new batch", sys)
		for _, class := range []string{"urgent", "same"} {
			require.Positive(t, get(sys, "new_done_p99_ms", "class", class), "%s %s", sys, class)
			require.GreaterOrEqual(t, get(sys, "new_done_p99_ms", "class", class), get(sys, "new_done_p50_ms", "class", class))
		}
		for _, m := range []string{"fill_rows_per_s", "heap_bytes", "index_bytes", "bytes_per_batch", "drain_s", "deep_over_shallow"} {
			require.Positive(t, get(sys, m), "%s %s", sys, m)
		}
		for _, d := range []int{rows, 2_000} {
			require.Positive(t, get(sys, "batches_per_s", "depth", d), "%s depth %d", sys, d)
		}
		_, ok := rep.get(ScenarioBacklog, sys, "batches_per_s", "depth", 50_000)
		require.False(t, ok, "no mark deeper than the backlog")
	}
	// The urgent class overtakes the backlog; the backlog's own class waits
	// behind it.
	require.Less(t, get(SystemSkiplock, "new_done_p50_ms", "class", "urgent"), get(SystemSkiplock, "new_done_p50_ms", "class", "same"))
	require.Positive(t, get(SystemSkiplock, "bytes_ratio_over_river"))
	var names []string
	for _, tg := range rep.Targets {
		names = append(names, tg.Name)
	}
	require.Len(t, names, 3, "%v", names)

	var table bytes.Buffer
	require.NoError(t, rep.WriteTable(&table))
	t.Log("\n" + table.String())
	for _, want := range []string{"Backlog: 20,000 keyed batches", "claim+complete at depth 2,000", "bytes per queued batch", "Targets"} {
		require.Contains(t, table.String(), want)
	}
}
