package harness

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// WriteTable writes the report for people: one section per scenario, the
// ratios, the targets and the notes.
func (r *Report) WriteTable(w io.Writer) error {
	h := r.Header
	fmt.Fprintf(w, "skiplock bench, %s, preset %s, %d CPUs, %.1f GiB, PostgreSQL %s (fsync %s), %s, River %s",
		h.Date, h.Preset, h.CPUs, float64(h.MemoryBytes)/(1<<30), orDash(h.PostgreSQL), orDash(h.Fsync), h.Go, orDash(h.River))
	if h.GitCommit != "" {
		fmt.Fprintf(w, ", commit %s", h.GitCommit)
	}
	fmt.Fprintf(w, ", %.0f s\n", h.DurationSeconds)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', tabwriter.AlignRight)
	r.enqueueTable(tw)
	r.throughputTable(tw)
	r.slotsTable(tw)
	r.latencyTable(tw)
	r.soakTable(tw)
	r.backlogTable(tw)
	r.costTable(tw)
	r.retentionTable(tw)
	r.mvccTable(tw)
	r.failoverTable(tw)
	r.chaosTable(tw)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Targets) > 0 {
		fmt.Fprintln(w, "\nTargets")
		for _, t := range r.Targets {
			mark := "MISSED"
			if t.Met {
				mark = "met"
			}
			fmt.Fprintf(w, "  %-6s %s: %s (want %s %s)\n", mark, t.Name, num(t.Got)+" "+t.Unit, t.Want, t.Unit)
		}
	}
	if len(r.Notes) > 0 {
		fmt.Fprintln(w, "\nNotes")
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  - %s\n", n)
		}
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// num formats a figure with thousands separators (integers) or two
// decimals (small values).
func num(v float64) string {
	if v != math.Trunc(v) && v < 100 && v > -100 {
		return fmt.Sprintf("%.2f", v)
	}
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func (r *Report) cell(scenario, system, metric string, params ...any) string {
	if v, ok := r.get(scenario, system, metric, params...); ok {
		return num(v)
	}
	return "-"
}

func (r *Report) enqueueTable(w io.Writer) {
	prods := paramValues(r, ScenarioEnqueue, SystemSkiplock, "bulk_rows_per_s", "producers")
	if len(prods) == 0 {
		prods = paramValues(r, ScenarioEnqueue, SystemRiver, "bulk_rows_per_s", "producers")
	}
	if len(prods) == 0 {
		return
	}
	fmt.Fprintln(w, "\nEnqueue (rows/s, median)")
	fmt.Fprintln(w, "workload\tskiplock\tRiver\tskiplock/River\tCPU µs/row client+server: skiplock\tRiver\t")
	cpu := func(sys, mode string, p any) string {
		c, ok := r.get(ScenarioEnqueue, sys, mode+"_client_cpu_us_per_row", "producers", p)
		if !ok {
			return "-"
		}
		if sv, ok := r.get(ScenarioEnqueue, sys, mode+"_server_cpu_us_per_row", "producers", p); ok {
			return fmt.Sprintf("%.1f + %.1f", c, sv)
		}
		return fmt.Sprintf("%.1f + ?", c)
	}
	for _, p := range prods {
		fmt.Fprintf(w, "bulk (5,000 per call), %v producer(s)\t%s\t%s\t%s\t%s\t%s\t\n", p,
			r.cell(ScenarioEnqueue, SystemSkiplock, "bulk_rows_per_s", "producers", p),
			r.cell(ScenarioEnqueue, SystemRiver, "bulk_rows_per_s", "producers", p),
			r.cell(ScenarioEnqueue, SystemSkiplock, "bulk_ratio_over_river", "producers", p),
			cpu(SystemSkiplock, "bulk", p), cpu(SystemRiver, "bulk", p))
	}
	for _, p := range paramValues(r, ScenarioEnqueue, SystemSkiplock, "single_rows_per_s", "producers") {
		fmt.Fprintf(w, "single, %v producers\t%s\t%s\t%s\t%s\t%s\t\n", p,
			r.cell(ScenarioEnqueue, SystemSkiplock, "single_rows_per_s", "producers", p),
			r.cell(ScenarioEnqueue, SystemRiver, "single_rows_per_s", "producers", p),
			r.cell(ScenarioEnqueue, SystemSkiplock, "single_ratio_over_river", "producers", p),
			cpu(SystemSkiplock, "single", p), cpu(SystemRiver, "single", p))
	}
}

func (r *Report) throughputTable(w io.Writer) {
	sizes := paramValues(r, ScenarioThroughput, SystemSkiplock, "best_batches_per_s", "claim_size")
	if len(sizes) == 0 {
		sizes = paramValues(r, ScenarioThroughput, SystemRiver, "best_batches_per_s", "claim_size")
	}
	if len(sizes) == 0 {
		sizes = paramValues(r, ScenarioThroughput, SystemPgbench, "best_batches_per_s", "claim_size")
	}
	if len(sizes) == 0 {
		return
	}
	workers := paramValues(r, ScenarioThroughput, SystemSkiplock, "batches_per_s", "workers")
	if len(workers) == 0 {
		workers = paramValues(r, ScenarioThroughput, SystemRiver, "batches_per_s", "workers")
	}
	fmt.Fprintln(w, "\nClaim+complete, no-op handler (batches/s, median)")
	fmt.Fprintln(w, "claim size\tworkers\tskiplock\tRiver, one client\tRiver, client per worker\t")
	for _, s := range sizes {
		for _, wk := range workers {
			fmt.Fprintf(w, "%v\t%v\t%s\t%s\t%s\t\n", s, wk,
				r.cell(ScenarioThroughput, SystemSkiplock, "batches_per_s", "claim_size", s, "workers", wk),
				r.cell(ScenarioThroughput, SystemRiver, "batches_per_s", "claim_size", s, "workers", wk, "config", riverOneClient),
				r.cell(ScenarioThroughput, SystemRiver, "batches_per_s", "claim_size", s, "workers", wk, "config", riverPerWorker))
		}
	}
	fmt.Fprintln(w, "\nBest per claim size")
	fmt.Fprintln(w, "claim size\tskiplock (workers)\tRiver, best (workers, config)\tpgbench (clients)\tskiplock/River\tskiplock/River per worker\tskiplock/pgbench\t")
	// bestCPU returns the CPU per batch of sys at its best configuration.
	bestCPU := func(sys string, s any) string {
		params := r.bestParams(sys, s)
		if params == nil {
			return "-"
		}
		c, ok := r.get(ScenarioThroughput, sys, "client_cpu_us_per_batch", params...)
		if !ok {
			return "-"
		}
		if sv, ok := r.get(ScenarioThroughput, sys, "server_cpu_us_per_batch", params...); ok {
			return fmt.Sprintf("%.1f + %.1f", c, sv)
		}
		return fmt.Sprintf("%.1f + ?", c)
	}
	defer func() {
		fmt.Fprintln(w, "\nCPU per batch at each system's best (µs, client + server)")
		fmt.Fprintln(w, "claim size\tskiplock\tRiver\tpgbench\t")
		for _, s := range sizes {
			fmt.Fprintf(w, "%v\t%s\t%s\t%s\t\n", s, bestCPU(SystemSkiplock, s), bestCPU(SystemRiver, s), bestCPU(SystemPgbench, s))
		}
	}()
	best := func(sys string, s any) string {
		v, ok := r.get(ScenarioThroughput, sys, "best_batches_per_s", "claim_size", s)
		if !ok {
			return "-"
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, f := range r.Figures {
			if f.Scenario == ScenarioThroughput && f.System == sys && f.Metric == "best_batches_per_s" && fmt.Sprint(f.Params["claim_size"]) == fmt.Sprint(s) {
				if wk, ok := f.Params["workers"]; ok {
					if c, ok := f.Params["config"]; ok {
						return fmt.Sprintf("%s (%v, %v)", num(v), wk, c)
					}
					return fmt.Sprintf("%s (%v)", num(v), wk)
				}
				if c, ok := f.Params["clients"]; ok {
					return fmt.Sprintf("%s (%v)", num(v), c)
				}
			}
		}
		return num(v)
	}
	for _, s := range sizes {
		fmt.Fprintf(w, "%v\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s, best(SystemSkiplock, s), best(SystemRiver, s), best(SystemPgbench, s),
			r.cell(ScenarioThroughput, SystemSkiplock, "ratio_over_river", "claim_size", s),
			r.cell(ScenarioThroughput, SystemSkiplock, "ratio_over_river_client_per_worker", "claim_size", s),
			r.cell(ScenarioThroughput, SystemSkiplock, "ratio_over_pgbench", "claim_size", s))
	}
}

func (r *Report) latencyTable(w io.Writer) {
	var rows [][2]string // system, config
	r.mu.Lock()
	seen := map[[2]string]bool{}
	var rate any
	for _, f := range r.Figures {
		if f.Scenario == ScenarioLatency && f.Metric == "p50_ms" {
			k := [2]string{f.System, fmt.Sprint(f.Params["config"])}
			if !seen[k] {
				seen[k] = true
				rows = append(rows, k)
				rate = f.Params["rate_per_s"]
			}
		}
	}
	r.mu.Unlock()
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\nLatency, enqueue call → handler start, idle system, %v enqueues/s (ms)\n", rate)
	fmt.Fprintln(w, "system\tconfiguration\tp50\tp95\tp99\tmax\tsamples\tenqueue call p50/p99\twake-up after it p50/p99\t")
	for _, k := range rows {
		samples := "-"
		r.mu.Lock()
		for _, f := range r.Figures {
			if f.Scenario == ScenarioLatency && f.System == k[0] && f.Metric == "p50_ms" && fmt.Sprint(f.Params["config"]) == k[1] {
				samples = fmt.Sprint(f.Params["samples"])
			}
		}
		r.mu.Unlock()
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s / %s\t%s / %s\t\n", k[0], k[1],
			r.cell(ScenarioLatency, k[0], "p50_ms", "config", k[1]),
			r.cell(ScenarioLatency, k[0], "p95_ms", "config", k[1]),
			r.cell(ScenarioLatency, k[0], "p99_ms", "config", k[1]),
			r.cell(ScenarioLatency, k[0], "max_ms", "config", k[1]), samples,
			r.cell(ScenarioLatency, k[0], "enqueue_call_p50_ms", "config", k[1]),
			r.cell(ScenarioLatency, k[0], "enqueue_call_p99_ms", "config", k[1]),
			r.cell(ScenarioLatency, k[0], "wakeup_p50_ms", "config", k[1]),
			r.cell(ScenarioLatency, k[0], "wakeup_p99_ms", "config", k[1]))
	}
}

func (r *Report) soakTable(w io.Writer) {
	windows := paramValues(r, ScenarioSoak, SystemSkiplock, "batches_per_s", "window_end_s")
	if len(windows) == 0 {
		return
	}
	fmt.Fprintln(w, "\nSoak: producers + 4 runners (claim 100), backlog held near 20,000")
	fmt.Fprintln(w, "window end (s)\tbatches/s\thot table (bytes)\tdead tuples\t")
	for _, t := range windows {
		fmt.Fprintf(w, "%v\t%s\t%s\t%s\t\n", t,
			r.cell(ScenarioSoak, SystemSkiplock, "batches_per_s", "window_end_s", t),
			r.cell(ScenarioSoak, SystemSkiplock, "table_bytes", "window_end_s", t),
			r.cell(ScenarioSoak, SystemSkiplock, "dead_tuples", "window_end_s", t))
	}
	fmt.Fprintf(w, "end: mean %s batches/s, last/first window %s, table %s B, claim index %s B, vacuums %s (+%s auto), %s dead / %s live tuples\n",
		r.cell(ScenarioSoak, SystemSkiplock, "mean_batches_per_s"),
		r.cell(ScenarioSoak, SystemSkiplock, "last_over_first"),
		r.cell(ScenarioSoak, SystemSkiplock, "end_table_bytes"),
		r.cell(ScenarioSoak, SystemSkiplock, "end_claim_index_bytes"),
		r.cell(ScenarioSoak, SystemSkiplock, "vacuums"),
		r.cell(ScenarioSoak, SystemSkiplock, "autovacuums"),
		r.cell(ScenarioSoak, SystemSkiplock, "end_dead_tuples"),
		r.cell(ScenarioSoak, SystemSkiplock, "end_live_tuples"))
}

func (r *Report) failoverTable(w io.Writer) {
	if _, ok := r.get(ScenarioFailover, SystemSkiplock, "recovery_p50_ms"); !ok {
		return
	}
	fmt.Fprintln(w, "\nFailover under load (2 producers, 4 runners, failover.Pool behind a proxy)")
	fmt.Fprintln(w, "fault\trun\trecovery (ms)\tacked\tlost\tduplicates\tstale completions\t")
	type runKey struct {
		kind string
		run  any
	}
	var runs []runKey
	seen := map[string]bool{}
	r.mu.Lock()
	rec := map[string][]string{}
	for _, f := range r.Figures {
		if f.Scenario != ScenarioFailover || f.Params["kind"] == nil {
			continue
		}
		k := runKey{fmt.Sprint(f.Params["kind"]), f.Params["run"]}
		id := fmt.Sprint(k)
		if !seen[id] {
			seen[id] = true
			runs = append(runs, k)
		}
		switch {
		case f.Metric == "recovery_ms":
			rec[id] = append(rec[id], fmt.Sprintf("%s %s", f.Params["phase"], num(f.Value)))
		case strings.HasSuffix(f.Metric, "_ms"):
			rec[id] = append(rec[id], fmt.Sprintf("%s %s", strings.TrimSuffix(f.Metric, "_ms"), num(f.Value)))
		}
	}
	r.mu.Unlock()
	for _, k := range runs {
		id := fmt.Sprint(k)
		fmt.Fprintf(w, "%s\t%v\t%s\t%s\t%s\t%s\t%s\t\n", k.kind, k.run, strings.Join(rec[id], ", "),
			r.cell(ScenarioFailover, SystemSkiplock, "acked", "kind", k.kind, "run", k.run),
			r.cell(ScenarioFailover, SystemSkiplock, "lost", "kind", k.kind, "run", k.run),
			r.cell(ScenarioFailover, SystemSkiplock, "duplicates", "kind", k.kind, "run", k.run),
			r.cell(ScenarioFailover, SystemSkiplock, "stale_completions", "kind", k.kind, "run", k.run))
	}
	fmt.Fprintf(w, "recovery p50 / p99 / max: %s / %s / %s ms; lost %s, duplicates %s, stale completions %s\n",
		r.cell(ScenarioFailover, SystemSkiplock, "recovery_p50_ms"),
		r.cell(ScenarioFailover, SystemSkiplock, "recovery_p99_ms"),
		r.cell(ScenarioFailover, SystemSkiplock, "recovery_max_ms"),
		r.cell(ScenarioFailover, SystemSkiplock, "total_lost"),
		r.cell(ScenarioFailover, SystemSkiplock, "total_duplicates"),
		r.cell(ScenarioFailover, SystemSkiplock, "total_stale_completions"))
}

// bestParams returns the params (claim size, workers or clients, config)
// of sys's best throughput at claim size s, as key/value pairs, or nil.
func (r *Report) bestParams(sys string, s any) []any {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.Figures {
		if f.Scenario != ScenarioThroughput || f.System != sys || f.Metric != "best_batches_per_s" || fmt.Sprint(f.Params["claim_size"]) != fmt.Sprint(s) {
			continue
		}
		out := []any{"claim_size", s}
		for _, k := range []string{"workers", "clients", "config"} {
			if v, ok := f.Params[k]; ok {
				out = append(out, k, v)
			}
		}
		return out
	}
	return nil
}

func (r *Report) chaosTable(w io.Writer) {
	if _, ok := r.get(ScenarioChaos, SystemSkiplock, "faults_total"); !ok {
		return
	}
	var seed string
	r.mu.Lock()
	var kinds []string
	for _, f := range r.Figures {
		if f.Scenario == ScenarioChaos && f.Metric == "faults" {
			kinds = append(kinds, fmt.Sprint(f.Params["kind"]))
		}
		if f.Scenario == ScenarioChaos && f.Metric == "faults_total" {
			seed = fmt.Sprint(f.Params["seed"])
		}
	}
	r.mu.Unlock()
	fmt.Fprintf(w, "\nChaos: randomized fault schedule, seed %s (faultlab; 2 producers, 4 runners, failover.Pool behind a proxy)\n", seed)
	fmt.Fprintln(w, "fault\tfaults\tfailed to inject\tduplicates\tduplicates per fault\t")
	for _, k := range kinds {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t\n", k,
			r.cell(ScenarioChaos, SystemSkiplock, "faults", "kind", k),
			r.cell(ScenarioChaos, SystemSkiplock, "fault_errors", "kind", k),
			r.cell(ScenarioChaos, SystemSkiplock, "duplicates", "kind", k),
			r.cell(ScenarioChaos, SystemSkiplock, "duplicates_per_fault", "kind", k))
	}
	fmt.Fprintf(w, "faults survived %s; acked %s, lost %s, stale completions %s, completed twice %s, overlapping handlers %s; commits lost at promotion %s\n",
		r.cell(ScenarioChaos, SystemSkiplock, "faults_total"),
		r.cell(ScenarioChaos, SystemSkiplock, "acked"),
		r.cell(ScenarioChaos, SystemSkiplock, "lost"),
		r.cell(ScenarioChaos, SystemSkiplock, "stale_completions"),
		r.cell(ScenarioChaos, SystemSkiplock, "done_twice"),
		r.cell(ScenarioChaos, SystemSkiplock, "overlapping_handlers"),
		r.cell(ScenarioChaos, SystemSkiplock, "commits_lost_at_promotion"))
	fmt.Fprintf(w, "duplicates per fault: %s (faults that lose commits), %s (others), %s outside any fault; recovery p50 / p99 / max: %s / %s / %s ms (%s timeouts)\n",
		r.cell(ScenarioChaos, SystemSkiplock, "duplicates_per_losing_fault"),
		r.cell(ScenarioChaos, SystemSkiplock, "duplicates_per_other_fault"),
		r.cell(ScenarioChaos, SystemSkiplock, "duplicates_without_fault"),
		r.cell(ScenarioChaos, SystemSkiplock, "recovery_p50_ms"),
		r.cell(ScenarioChaos, SystemSkiplock, "recovery_p99_ms"),
		r.cell(ScenarioChaos, SystemSkiplock, "recovery_max_ms"),
		r.cell(ScenarioChaos, SystemSkiplock, "recovery_timeouts"))
}
