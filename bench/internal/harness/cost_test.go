package harness

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestDeriveCost(t *testing.T) {
	r := &Report{}
	for _, phase := range append(append([]string{}, costPhases...), phaseTotal) {
		r.add(ScenarioCost, SystemSkiplock, costPhaseFigures, 400, "B", "variant", costKeyless, "phase", phase)
		r.add(ScenarioCost, SystemSkiplock, costPhaseFigures, 900, "B", "variant", costKeyed, "phase", phase)
		r.add(ScenarioCost, SystemRiver, costPhaseFigures, 1000, "B", "variant", costPlain, "phase", phase)
		r.add(ScenarioCost, SystemRiver, costPhaseFigures, 1200, "B", "variant", costUnique, "phase", phase)
	}
	r.add(ScenarioCost, SystemSkiplock, "client_cpu_us_per_batch", 3, "µs", "variant", costKeyless, "phase", phaseTotal)
	r.add(ScenarioCost, SystemSkiplock, "server_cpu_us_per_batch", 7, "µs", "variant", costKeyless, "phase", phaseTotal)
	r.add(ScenarioCost, SystemRiver, "client_cpu_us_per_batch", 10, "µs", "variant", costPlain, "phase", phaseTotal)
	r.add(ScenarioCost, SystemRiver, "server_cpu_us_per_batch", 30, "µs", "variant", costPlain, "phase", phaseTotal)
	derive(r)
	got, ok := r.get(ScenarioCost, SystemSkiplock, "wal_ratio_over_river", "variant", costKeyless, "phase", phasePrune)
	require.True(t, ok)
	require.InDelta(t, 0.4, got, 1e-9)
	got, ok = r.get(ScenarioCost, SystemSkiplock, "wal_ratio_over_river", "variant", costKeyed, "phase", phaseTotal)
	require.True(t, ok)
	require.InDelta(t, 0.75, got, 1e-9)
	got, ok = r.get(ScenarioCost, SystemSkiplock, "cpu_ratio_over_river", "variant", costKeyless, "phase", phaseTotal)
	require.True(t, ok)
	require.InDelta(t, 0.25, got, 1e-9)
	met := map[string]bool{}
	for _, tg := range r.Targets {
		met[tg.Name] = tg.Met
	}
	require.Equal(t, map[string]bool{
		"cost: WAL per batch lifecycle, skiplock keyless / River plain": true,
		"cost: WAL per batch lifecycle, skiplock keyed / River unique":  false,
	}, met)
	var b bytes.Buffer
	require.NoError(t, r.WriteTable(&b))
	require.Contains(t, b.String(), "Cost per batch lifecycle")
	require.Contains(t, b.String(), "0.75")
}

func TestDeriveRetention(t *testing.T) {
	r := &Report{}
	r.add(ScenarioRetention, SystemSkiplock, "keyed_rows_per_s", 1000, "rows/s", "key_rows", 100)
	r.add(ScenarioRetention, SystemSkiplock, "keyed_rows_per_s", 700, "rows/s", "key_rows", 1000)
	r.add(ScenarioRetention, SystemSkiplock, "keyed_rate_ratio", 0.7, "x", "key_rows", 1000, "base_key_rows", 100)
	r.add(ScenarioRetention, SystemSkiplock, "deepest_1s_ratio", 0.85, "x", "during", "prune", "key_rows", 1000)
	derive(r)
	require.Len(t, r.Targets, 2)
	require.False(t, r.Targets[0].Met, "%+v", r.Targets[0])
	require.Contains(t, r.Targets[0].Name, "1,000 key rows")
	require.True(t, r.Targets[1].Met, "%+v", r.Targets[1])
}

func TestCostConfig(t *testing.T) {
	c, err := Preset("quick")
	require.NoError(t, err)
	c.Scenarios = []string{ScenarioCost, ScenarioRetention}
	require.NoError(t, c.validate())
	c.CostBatches = 10
	require.ErrorContains(t, c.validate(), "CostBatches")
	c.CostBatches = 1000
	c.RetentionRows = c.RetentionBaseRows - 1
	require.ErrorContains(t, c.validate(), "RetentionRows")
	got, err := ParseScenarios("cost,retention")
	require.NoError(t, err)
	require.Equal(t, []string{ScenarioCost, ScenarioRetention}, got)
	all, err := ParseScenarios("all")
	require.NoError(t, err)
	require.NotContains(t, all, ScenarioRetention, "retention runs only when named")
	require.Contains(t, all, ScenarioCost)
}

// TestSmokeCostRetention runs the cost and retention scenarios tiny on a
// throwaway server and checks that their figures are there and plausible.
func TestSmokeCostRetention(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server")
	}
	cfg, err := Preset("quick")
	require.NoError(t, err)
	cfg.Scenarios = []string{ScenarioCost, ScenarioRetention}
	cfg.CostBatches = 1000
	cfg.RetentionRows, cfg.RetentionBaseRows, cfg.RetentionWindow = 70_000, 7_000, 2*time.Second
	var progress bytes.Buffer
	cfg.Progress = &progress
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	require.NoError(t, err, "progress:\n%s", progress.String())

	get := func(system, metric string, params ...any) float64 {
		t.Helper()
		v, ok := rep.get(ScenarioCost, system, metric, params...)
		require.True(t, ok, "%s %s %v missing", system, metric, params)
		return v
	}
	variants := map[string][]string{SystemSkiplock: {costKeyless, costKeyed}, SystemRiver: {costPlain, costUnique}}
	for sys, vs := range variants {
		for _, v := range vs {
			var sum float64
			for _, phase := range costPhases {
				w := get(sys, costPhaseFigures, "variant", v, "phase", phase)
				require.GreaterOrEqual(t, w, 0.0, "%s %s %s", sys, v, phase)
				sum += w
			}
			total := get(sys, costPhaseFigures, "variant", v, "phase", phaseTotal)
			require.InDelta(t, sum, total, 1e-6*sum+1e-9, "%s %s: the total is the sum of the phases", sys, v)
			// A row's insert alone logs more than 100 bytes; a lifecycle
			// of a few hundred bytes of metadata must not take 100 kB.
			require.Greater(t, total, 100.0, "%s %s", sys, v)
			require.Less(t, total, 100_000.0, "%s %s", sys, v)
			require.Greater(t, get(sys, costPhaseFigures, "variant", v, "phase", phaseEnqueue), 50.0, "%s %s enqueue", sys, v)
			require.Greater(t, get(sys, costPhaseFigures, "variant", v, "phase", phaseWork), 50.0, "%s %s claim+complete", sys, v)
			require.Greater(t, get(sys, costPhaseFigures, "variant", v, "phase", phasePrune), 10.0, "%s %s prune", sys, v)
			require.Positive(t, get(sys, "server_cpu_us_per_batch", "variant", v, "phase", phaseTotal), "%s %s", sys, v)
			require.Positive(t, get(sys, "client_cpu_us_per_batch", "variant", v, "phase", phaseTotal), "%s %s", sys, v)
		}
	}
	// What each prune removed: exactly the measured lifecycle's records.
	n := float64(cfg.CostBatches)
	require.Equal(t, n, get(SystemSkiplock, "pruned_completion_records", "variant", costKeyless))
	require.Equal(t, 0.0, get(SystemSkiplock, "pruned_keys", "variant", costKeyless))
	require.Equal(t, n, get(SystemSkiplock, "pruned_completion_records", "variant", costKeyed))
	require.Equal(t, n, get(SystemSkiplock, "pruned_keys", "variant", costKeyed))
	require.Equal(t, n, get(SystemRiver, "pruned_jobs", "variant", costPlain))
	require.Equal(t, n, get(SystemRiver, "pruned_jobs", "variant", costUnique))
	// Keys cost WAL: a keyed enqueue writes a key row and its index entry too.
	require.Greater(t, get(SystemSkiplock, costPhaseFigures, "variant", costKeyed, "phase", phaseEnqueue),
		get(SystemSkiplock, costPhaseFigures, "variant", costKeyless, "phase", phaseEnqueue)+20)
	_, ok := rep.get(ScenarioCost, SystemSkiplock, "wal_ratio_over_river", "variant", costKeyed, "phase", phaseTotal)
	require.True(t, ok)

	ret := func(metric string, params ...any) float64 {
		t.Helper()
		v, ok := rep.get(ScenarioRetention, SystemSkiplock, metric, params...)
		require.True(t, ok, "%s %v missing", metric, params)
		return v
	}
	require.Equal(t, float64(cfg.RetentionRows/7), ret("rows_deleted", "step", "prune keys"))
	require.Equal(t, float64(retentionDoneRows(cfg.RetentionRows)/2), ret("rows_deleted", "step", "prune completion records"))
	require.Positive(t, ret("keyed_rows_per_s", "key_rows", cfg.RetentionBaseRows))
	require.Positive(t, ret("keyed_rows_per_s", "key_rows", cfg.RetentionRows))
	require.Greater(t, ret("key_pk_bytes", "key_rows", cfg.RetentionRows, "stage", "generated"),
		5*ret("key_pk_bytes", "key_rows", cfg.RetentionBaseRows, "stage", "generated"), "ten times the keys, a primary key at least five times the size")
	require.Positive(t, ret("wal_bytes", "step", "prune keys"))
	ratio := ret("deepest_1s_ratio", "during", "prune")
	require.Greater(t, ratio, 0.0)
	require.Less(t, ratio, 2.0)
	// Deleting rows frees no space by itself (and the load added keys).
	require.GreaterOrEqual(t, ret("key_table_bytes", "stage", "pruned"), ret("key_table_bytes", "key_rows", cfg.RetentionRows, "stage", "generated"))

	var table bytes.Buffer
	require.NoError(t, rep.WriteTable(&table))
	for _, want := range []string{"Cost per batch lifecycle", "Retention: keyed enqueue", "Pruning a day", "cost: WAL per batch lifecycle"} {
		require.Contains(t, table.String(), want)
	}
}
