package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/internal/faultlab"
)

func TestPercentile(t *testing.T) {
	ms := func(xs ...int) []time.Duration {
		var out []time.Duration
		for _, x := range xs {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(100-i) * time.Millisecond // unsorted on purpose
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"median of odd", ms(3, 1, 2), 50, 2 * time.Millisecond},
		{"median of even is the lower", ms(4, 1, 3, 2), 50, 2 * time.Millisecond},
		{"p99 of 100", hundred, 99, 99 * time.Millisecond},
		{"p95 of 100", hundred, 95, 95 * time.Millisecond},
		{"max", hundred, 100, 100 * time.Millisecond},
		{"p1 of 100", hundred, 1, time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]time.Duration(nil), tc.in...)
			require.Equal(t, tc.want, percentile(tc.in, tc.p))
			require.Equal(t, in, tc.in, "percentile must not reorder its input")
		})
	}
}

func TestMedian(t *testing.T) {
	require.Equal(t, 0.0, median(nil))
	require.Equal(t, 2.0, median([]float64{3, 1, 2}))
	require.Equal(t, 2.5, median([]float64{4, 1, 3, 2}))
}

func TestNum(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 7: "7", 1.234: "1.23", 12345.6: "12,346", 1234567: "1,234,567", -4321: "-4,321", 250.4: "250"} {
		require.Equal(t, want, num(in), "num(%v)", in)
	}
}

func TestNiceScale(t *testing.T) {
	for _, tc := range []struct{ max, step, top float64 }{
		{0, 1, 5}, {9.5, 2, 10}, {87000, 20000, 100000}, {3500, 1000, 4000}, {31000, 10000, 40000},
	} {
		step, top := niceScale(tc.max)
		require.Equal(t, tc.step, step, "step for %v", tc.max)
		require.Equal(t, tc.top, top, "top for %v", tc.max)
		require.GreaterOrEqual(t, top, tc.max)
	}
	require.Equal(t, "12k", shortNum(12000))
	require.Equal(t, "1.5M", shortNum(1.5e6))
	require.Equal(t, "2.5k", shortNum(2500))
}

func TestParse(t *testing.T) {
	all, err := ParseScenarios("all")
	require.NoError(t, err)
	require.Equal(t, AllScenarios, all)
	got, err := ParseScenarios("peer, throughput,peer")
	require.NoError(t, err)
	require.Equal(t, []string{"peer", "throughput"}, got)
	_, err = ParseScenarios("throughput,nope")
	require.ErrorContains(t, err, `"nope"`)
	ints, err := ParseInts("1, 4,16")
	require.NoError(t, err)
	require.Equal(t, []int{1, 4, 16}, ints)
	_, err = ParseInts("1,0")
	require.Error(t, err)
	for _, name := range []string{"quick", "full"} {
		c, err := Preset(name)
		require.NoError(t, err)
		require.NoError(t, c.validate(), name)
	}
	_, err = Preset("slow")
	require.Error(t, err)
}

// sampleReport is a report with throughput figures of every system, two
// claim sizes and three worker counts, plus an enqueue pair.
func sampleReport() *Report {
	r := &Report{Header: Header{Date: "2026-11-27T12:00:00Z", Preset: "quick", CPUs: 2, PostgreSQL: "15.20", Fsync: "on", River: "v0.51.2"}}
	for _, size := range []int{10, 100} {
		for i, w := range []int{1, 4, 16} {
			r.add(ScenarioThroughput, SystemSkiplock, "batches_per_s", float64(size*1000+i*100), "batches/s", "claim_size", size, "workers", w)
			r.add(ScenarioThroughput, SystemRiver, "batches_per_s", float64(size*400+i*10), "batches/s", "claim_size", size, "workers", w, "config", riverOneClient)
			r.add(ScenarioThroughput, SystemRiver, "batches_per_s", float64(size*300+i*10), "batches/s", "claim_size", size, "workers", w, "config", riverPerWorker)
		}
		r.add(ScenarioThroughput, SystemSkiplock, "best_batches_per_s", float64(size*1000+200), "batches/s", "claim_size", size, "workers", 16)
		r.add(ScenarioThroughput, SystemRiver, "best_batches_per_s", float64(size*400+20), "batches/s", "claim_size", size, "workers", 16, "config", riverOneClient)
		r.add(ScenarioThroughput, SystemPgbench, "best_batches_per_s", float64(size*900), "batches/s", "claim_size", size, "clients", 8)
	}
	r.add(ScenarioEnqueue, SystemSkiplock, "bulk_rows_per_s", 300000, "rows/s", "producers", 4)
	r.add(ScenarioEnqueue, SystemRiver, "bulk_rows_per_s", 100000, "rows/s", "producers", 4)
	r.add(ScenarioLatency, SystemSkiplock, "p99_ms", 3.5, "ms", "config", "notify")
	return r
}

func TestJSONShape(t *testing.T) {
	r := sampleReport()
	derive(r)
	path := filepath.Join(t.TempDir(), "r.json")
	require.NoError(t, r.WriteJSON(path))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var doc struct {
		Header  map[string]any   `json:"header"`
		Figures []map[string]any `json:"figures"`
		Targets []map[string]any `json:"targets"`
	}
	require.NoError(t, json.Unmarshal(b, &doc))
	for _, k := range []string{"date", "nproc", "memory_bytes", "postgresql", "go", "river", "preset"} {
		require.Contains(t, doc.Header, k)
	}
	require.NotEmpty(t, doc.Figures)
	for _, f := range doc.Figures {
		require.Len(t, f, 6, "figure %v", f)
		for _, k := range []string{"scenario", "system", "params", "metric", "value", "unit"} {
			require.Contains(t, f, k)
		}
		require.Contains(t, []any{SystemSkiplock, SystemRiver, SystemPgbench}, f["system"])
		require.IsType(t, map[string]any{}, f["params"])
		require.IsType(t, 0.0, f["value"])
	}
	// The derived ratios are figures of the same run.
	ratio, ok := r.get(ScenarioThroughput, SystemSkiplock, "ratio_over_river", "claim_size", 100)
	require.True(t, ok)
	require.InDelta(t, 100200.0/40020, ratio, 1e-9)
	ratio, ok = r.get(ScenarioEnqueue, SystemSkiplock, "bulk_ratio_over_river", "producers", 4)
	require.True(t, ok)
	require.InDelta(t, 3.0, ratio, 1e-9)
	var met, missed int
	for _, tg := range r.Targets {
		if tg.Met {
			met++
		} else {
			missed++
		}
	}
	require.Equal(t, 6, met, "%+v", r.Targets) // 2×(vs River, vs pgbench), bulk 3×, p99
	require.Zero(t, missed, "%+v", r.Targets)
}

func TestThroughputSVG(t *testing.T) {
	_, err := (&Report{}).ThroughputSVG()
	require.Error(t, err)

	svg, err := sampleReport().ThroughputSVG()
	require.NoError(t, err)
	// Well-formed XML, and count what was drawn.
	dec := xml.NewDecoder(bytes.NewReader(svg))
	counts := map[string]int{}
	var texts []string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		switch el := tok.(type) {
		case xml.StartElement:
			counts[el.Name.Local]++
		case xml.CharData:
			if s := strings.TrimSpace(string(el)); s != "" {
				texts = append(texts, s)
			}
		}
	}
	require.Equal(t, 1, counts["svg"])
	require.Equal(t, 2*3, counts["polyline"], "a line per panel and series")
	require.Equal(t, 2*3*3, counts["circle"], "a point per worker count")
	joined := strings.Join(texts, "|")
	for _, want := range []string{"claim size 10", "claim size 100", "skiplock", "River v0.51.2, one client", "pgbench ceiling", "batches/s", "100k"} {
		require.Contains(t, joined, want)
	}
	require.Contains(t, string(svg), `stroke-dasharray="6 4"`, "the pgbench ceiling is a dashed line")
}

func TestWriteTable(t *testing.T) {
	r := sampleReport()
	derive(r)
	var b bytes.Buffer
	require.NoError(t, r.WriteTable(&b))
	out := b.String()
	for _, want := range []string{"Enqueue", "300,000", "Claim+complete", "Best per claim size", "100,200 (16)", "40,020 (16, one client)", "Targets", "met"} {
		require.Contains(t, out, want)
	}
}

// TestSmoke runs every scenario but failover end to end with tiny sizes
// on a throwaway server, and one fault of the failover scenario on its own
// primary and replica.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL servers")
	}
	cfg, err := Preset("quick")
	require.NoError(t, err)
	cfg.Scenarios = []string{ScenarioEnqueue, ScenarioThroughput, ScenarioCeiling, ScenarioPeer, ScenarioLatency, ScenarioSoak}
	cfg.Reps = 1
	cfg.ClaimSizes = []int{10}
	cfg.Workers = []int{2}
	cfg.DrainRows = map[int]int{10: 2000}
	cfg.DrainCap = 10 * time.Second
	cfg.EnqueueRows = 10000
	cfg.EnqueueProducers = []int{2}
	cfg.SingleWindow = 200 * time.Millisecond
	cfg.LatencyWindow = 400 * time.Millisecond
	cfg.LatencyRate = 50
	cfg.SoakDuration = 2 * time.Second
	cfg.SoakWindow = time.Second
	var progress bytes.Buffer
	cfg.Progress = &progress
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	require.NoError(t, err, "progress:\n%s", progress.String())

	positive := func(scenario, system, metric string, params ...any) {
		t.Helper()
		v, ok := rep.get(scenario, system, metric, params...)
		require.True(t, ok, "%s %s %s %v missing", scenario, system, metric, params)
		require.Positive(t, v, "%s %s %s %v", scenario, system, metric, params)
	}
	for _, sys := range []string{SystemSkiplock, SystemRiver} {
		positive(ScenarioEnqueue, sys, "bulk_rows_per_s", "producers", 2)
		positive(ScenarioEnqueue, sys, "single_rows_per_s")
		positive(ScenarioThroughput, sys, "best_batches_per_s", "claim_size", 10)
		positive(ScenarioLatency, sys, "p99_ms")
	}
	positive(ScenarioThroughput, SystemPgbench, "best_batches_per_s", "claim_size", 10)
	positive(ScenarioThroughput, SystemSkiplock, "server_cpu_us_per_batch")
	positive(ScenarioThroughput, SystemSkiplock, "ratio_over_pgbench", "claim_size", 10)
	positive(ScenarioSoak, SystemSkiplock, "mean_batches_per_s")
	positive(ScenarioSoak, SystemSkiplock, "end_table_bytes")
	require.Equal(t, "on", rep.Header.Fsync)
	require.NotEmpty(t, rep.Header.PostgreSQL)
	require.Contains(t, progress.String(), "throughput skiplock")

	dir := t.TempDir()
	require.NoError(t, rep.WriteJSON(filepath.Join(dir, "r.json")))
	require.NoError(t, rep.WriteChart(filepath.Join(dir, "c.svg")))
	var table bytes.Buffer
	require.NoError(t, rep.WriteTable(&table))
	require.Contains(t, table.String(), "Latency")

	// One fault under load, with the shared invariant check.
	fcfg := *cfg
	fcfg.BlackholeWindow = 300 * time.Millisecond
	var blackhole *faultKind
	for _, k := range faultKinds(&fcfg) {
		if k.name == "blackhole" {
			blackhole = &k
		}
	}
	require.NotNil(t, blackhole)
	run, err := oneFault(ctx, blackhole.fault)
	require.NoError(t, err)
	require.Positive(t, run.report.Acked)
	require.Zero(t, run.report.Lost)
	require.Zero(t, run.report.StaleCompletions)
	require.Equal(t, run.report.Acked, run.report.Completed)
	require.Len(t, run.outcome.Recoveries, 1)
	require.NoError(t, run.recoveryErr)
}

// TestSmokeChaos runs a very short randomized schedule of two fault kinds
// through the chaos scenario and checks its figures reach the report.
func TestSmokeChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL servers")
	}
	cfg, err := Preset("quick")
	require.NoError(t, err)
	cfg.Scenarios = []string{ScenarioChaos}
	cfg.ChaosDuration = 40 * time.Second
	cfg.ChaosSeed = 7
	cfg.ChaosKinds = []faultlab.Kind{faultlab.PlannedFailover, faultlab.Blackhole}
	var progress bytes.Buffer
	cfg.Progress = &progress
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	require.NoError(t, err, "progress:\n%s", progress.String())
	require.Contains(t, progress.String(), "schedule seed=7")
	total, ok := rep.get(ScenarioChaos, SystemSkiplock, "faults_total")
	require.True(t, ok)
	require.Positive(t, total)
	lost, ok := rep.get(ScenarioChaos, SystemSkiplock, "lost")
	require.True(t, ok)
	require.Zero(t, lost)
	var table bytes.Buffer
	require.NoError(t, rep.WriteTable(&table))
	require.Contains(t, table.String(), "Chaos: randomized fault schedule, seed 7")
}
