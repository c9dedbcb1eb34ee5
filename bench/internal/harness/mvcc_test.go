package harness

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseMVCCVariants(t *testing.T) {
	all, err := ParseMVCCVariants("all")
	require.NoError(t, err)
	require.Equal(t, AllMVCCVariants, all)
	got, err := ParseMVCCVariants("primary, none,primary")
	require.NoError(t, err)
	require.Equal(t, []string{MVCCNone, MVCCPrimary}, got, "canonical order, baseline first")
	_, err = ParseMVCCVariants("none,standby")
	require.ErrorContains(t, err, `"standby"`)

	cfg, err := Preset("quick")
	require.NoError(t, err)
	require.NotContains(t, AllScenarios, ScenarioMVCC, "mvcc is long: it runs only when named")
	cfg.Scenarios = []string{ScenarioMVCC}
	require.NoError(t, cfg.validate())
	require.Equal(t, 3*time.Minute, cfg.MVCCDuration)
	cfg.MVCCWindow = 0
	require.ErrorContains(t, cfg.validate(), "MVCCWindow")
	cfg.MVCCWindow, cfg.MVCCVariants = time.Second, []string{"nope"}
	require.ErrorContains(t, cfg.validate(), "nope")
}

// TestMVCCDerive checks the ratios and targets on made-up windows.
func TestMVCCDerive(t *testing.T) {
	r := &Report{}
	win := func(sys, v string, rates, p99s []float64) {
		for i := range rates {
			r.add(ScenarioMVCC, sys, "batches_per_s", rates[i], "batches/s", "variant", v, "window", i+1, "window_end_s", float64(10*(i+1)))
			r.add(ScenarioMVCC, sys, "claim_p99_ms", p99s[i], "ms", "variant", v, "window", i+1, "window_end_s", float64(10*(i+1)))
		}
	}
	win(SystemSkiplock, MVCCNone, []float64{100, 100, 80}, []float64{2, 2, 2})
	win(SystemSkiplock, MVCCPrimary, []float64{100, 90, 76}, []float64{2, 4, 30})
	win(SystemRiver, MVCCNone, []float64{50, 50, 50}, []float64{1, 1, 1})
	win(SystemRiver, MVCCPrimary, []float64{40, 20, 10}, []float64{1, 5, 9})
	mvccDerive(r, nil, []string{MVCCNone, MVCCPrimary})

	get := func(sys, metric string, params ...any) float64 {
		t.Helper()
		v, ok := r.get(ScenarioMVCC, sys, metric, params...)
		require.True(t, ok, "%s %s %v", sys, metric, params)
		return v
	}
	require.InDelta(t, 0.9, get(SystemSkiplock, "ratio_over_none", "variant", MVCCPrimary, "window", 2), 1e-9)
	require.InDelta(t, 0.9, get(SystemSkiplock, "min_ratio_over_none", "variant", MVCCPrimary), 1e-9, "worst of 1, 0.9, 0.95")
	require.InDelta(t, 0.76, get(SystemSkiplock, "last_over_first", "variant", MVCCPrimary), 1e-9)
	require.InDelta(t, 15, get(SystemSkiplock, "claim_p99_max_over_first", "variant", MVCCPrimary), 1e-9)
	require.InDelta(t, 88.0+2.0/3, get(SystemSkiplock, "mean_batches_per_s", "variant", MVCCPrimary), 1e-9)
	require.InDelta(t, 0.2, get(SystemRiver, "min_ratio_over_none", "variant", MVCCPrimary), 1e-9)
	_, ok := r.get(ScenarioMVCC, SystemSkiplock, "min_ratio_over_none", "variant", MVCCNone)
	require.False(t, ok, "the baseline has no ratio over itself")

	targets := mvccTargets(r)
	require.Len(t, targets, 3, "skiplock only, primary only")
	met := map[string]bool{}
	for _, tg := range targets {
		require.Contains(t, tg.Name, "(primary)")
		met[tg.Want] = tg.Met
	}
	require.Equal(t, map[string]bool{">= 0.8": true, ">= 0.9": false, "<= 10": false}, met)

	derive(r)
	var b bytes.Buffer
	require.NoError(t, r.WriteTable(&b))
	for _, want := range []string{"MVCC: churn", "worst window / without snapshot 0.90", "MISSED", "river, primary: mean"} {
		require.Contains(t, b.String(), want)
	}

	// The chart: a panel per system, a line per variant; WriteChart puts it
	// at the path when there is no throughput chart.
	_, err := (&Report{}).MVCCSVG()
	require.Error(t, err)
	path := filepath.Join(t.TempDir(), "c.svg")
	require.NoError(t, r.WriteChart(path))
	svg, err := os.ReadFile(path)
	require.NoError(t, err)
	dec := xml.NewDecoder(bytes.NewReader(svg))
	counts := map[string]int{}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		if el, ok := tok.(xml.StartElement); ok {
			counts[el.Name.Local]++
		}
	}
	require.Equal(t, 2*2, counts["polyline"])
	require.Contains(t, string(svg), "snapshot held on the primary")
	require.Contains(t, string(svg), `stroke-dasharray="6 4"`)
}

// mvccSmoke runs the mvcc scenario with tiny durations and checks that
// every window of every run has throughput and timed claims.
func mvccSmoke(t *testing.T, variants []string, d, window time.Duration) *Report {
	t.Helper()
	cfg, err := Preset("quick")
	require.NoError(t, err)
	cfg.Scenarios = []string{ScenarioMVCC}
	cfg.MVCCDuration, cfg.MVCCWindow, cfg.MVCCVariants = d, window, variants
	var progress bytes.Buffer
	cfg.Progress = &progress
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	require.NoError(t, err, "progress:\n%s", progress.String())
	n := int(d / window)
	for _, sys := range []string{SystemSkiplock, SystemRiver} {
		for _, v := range variants {
			rates, has := mvccSeries(rep, sys, v, "batches_per_s")
			require.Len(t, rates, n, "%s %s windows", sys, v)
			for i := range rates {
				require.True(t, has[i])
				require.Positive(t, rates[i], "%s %s window %d throughput", sys, v, i+1)
				claims, ok := rep.get(ScenarioMVCC, sys, "claims", "variant", v, "window", i+1)
				require.True(t, ok)
				require.Positive(t, claims, "%s %s window %d: claims timed by the tracer", sys, v, i+1)
				p99, ok := rep.get(ScenarioMVCC, sys, "claim_p99_ms", "variant", v, "window", i+1)
				require.True(t, ok)
				require.Positive(t, p99)
				for _, m := range []string{"total_bytes", "table_bytes", "index_bytes", "dead_tuples", "horizon_age_xids"} {
					_, ok := rep.get(ScenarioMVCC, sys, m, "variant", v, "window", i+1)
					require.True(t, ok, "%s %s window %d: %s", sys, v, i+1, m)
				}
			}
			_, ok := rep.get(ScenarioMVCC, sys, "last_over_first", "variant", v)
			require.True(t, ok)
			if v != MVCCNone {
				alive, ok := rep.get(ScenarioMVCC, sys, "holder_survived", "variant", v)
				require.True(t, ok)
				require.Equal(t, 1.0, alive, "%s %s: the holder's transaction lived through the run", sys, v)
			}
		}
	}
	var table bytes.Buffer
	require.NoError(t, rep.WriteTable(&table))
	require.Contains(t, table.String(), "MVCC: churn")
	return rep
}

// TestSmokeMVCC runs both systems without and with a snapshot held on the
// primary, and checks that the snapshot really held the horizon back: the
// horizon grows old with it and not without, and skiplock's dead tuples
// pile up with it.
func TestSmokeMVCC(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server")
	}
	rep := mvccSmoke(t, []string{MVCCNone, MVCCPrimary}, 12*time.Second, 4*time.Second)
	last := func(sys, v, metric string) float64 {
		vals, _ := mvccSeries(rep, sys, v, metric)
		require.NotEmpty(t, vals)
		return vals[len(vals)-1]
	}
	for _, sys := range []string{SystemSkiplock, SystemRiver} {
		held := last(sys, MVCCPrimary, "horizon_age_xids")
		without, _ := mvccSeries(rep, sys, MVCCNone, "horizon_age_xids")
		require.Greater(t, held, slices.Max(without)+100, "%s: horizon age at the end with the snapshot %v, without %v", sys, held, without)
		holder := last(sys, MVCCPrimary, "holder_age_xids")
		require.GreaterOrEqual(t, held, holder, "%s: the horizon is at least as old as the holder's snapshot", sys)
		_, ok := rep.get(ScenarioMVCC, sys, "min_ratio_over_none", "variant", MVCCPrimary)
		require.True(t, ok)
	}
	require.Greater(t, last(SystemSkiplock, MVCCPrimary, "dead_tuples"), last(SystemSkiplock, MVCCNone, "dead_tuples"),
		"dead tuples pile up under the held snapshot")
	var n int
	for _, tg := range rep.Targets {
		if bytes.Contains([]byte(tg.Name), []byte("mvcc")) {
			n++
		}
	}
	require.Equal(t, 3, n, "%+v", rep.Targets)
}

// TestSmokeMVCCReplica holds the snapshot on a streaming replica with
// hot_standby_feedback and checks that the primary's horizon follows it.
func TestSmokeMVCCReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL servers")
	}
	rep := mvccSmoke(t, []string{MVCCReplica}, 8*time.Second, 4*time.Second)
	for _, sys := range []string{SystemSkiplock, SystemRiver} {
		horizon, _ := mvccSeries(rep, sys, MVCCReplica, "horizon_age_xids")
		holder, _ := mvccSeries(rep, sys, MVCCReplica, "holder_age_xids")
		require.NotEmpty(t, holder)
		for i := range holder {
			require.Positive(t, holder[i])
			require.GreaterOrEqual(t, horizon[i], holder[i], "%s window %d: the primary's horizon is held by the replica's snapshot", sys, i+1)
		}
		require.Greater(t, holder[len(holder)-1], holder[0], "%s: the held snapshot ages", sys)
	}
}
