package harness

import (
	"bufio"
	"context"

	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// Run runs the configured scenarios and returns what they measured. A
// scenario that fails is noted in the report and the others still run;
// the error then names the first failure. The report is usable either way.
func Run(ctx context.Context, cfg *Config) (*Report, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	prog := newProgress(cfg.Progress)
	rep := &Report{Header: header(cfg)}
	start := time.Now()
	defer func() { rep.Header.DurationSeconds = round1(time.Since(start).Seconds()) }()

	var firstErr error
	fail := func(scenario string, err error) {
		if err == nil {
			return
		}
		rep.note("%s: failed: %v", scenario, err)
		prog.step("%s FAILED: %v", scenario, err)
		if firstErr == nil {
			firstErr = fmt.Errorf("%s: %w", scenario, err)
		}
	}
	pick := func(own string) []string {
		var s []string
		if cfg.has(own) {
			s = append(s, SystemSkiplock)
		}
		if cfg.has(ScenarioPeer) {
			s = append(s, SystemRiver)
		}
		return s
	}
	enqueueSystems, throughputSystems, latencySystems := pick(ScenarioEnqueue), pick(ScenarioThroughput), pick(ScenarioLatency)
	ceiling := cfg.has(ScenarioCeiling)
	needEnv := len(enqueueSystems) > 0 || len(throughputSystems) > 0 || ceiling || len(latencySystems) > 0 || cfg.has(ScenarioSoak) ||
		cfg.has(ScenarioBacklog) || cfg.has(ScenarioCost) || cfg.has(ScenarioRetention) || cfg.has(ScenarioSlots) || cfg.has(ScenarioMVCC)
	if needEnv {
		e, err := startEnv(ctx, cfg.DSN, cfg.Diag, prog)
		if err != nil {
			return rep, fmt.Errorf("start: %w", err)
		}
		defer e.close()
		rep.Header.PostgreSQL = e.pgVersion
		rep.Header.Fsync = e.fsync
		if e.fsync != "on" {
			rep.note("the target server runs with fsync=%s: throughput and latency figures are not comparable with fsync-on figures", e.fsync)
		}
		if len(enqueueSystems) > 0 && ctx.Err() == nil {
			prog.step("scenario enqueue (%s)", strings.Join(enqueueSystems, ", "))
			fail(ScenarioEnqueue, runEnqueue(ctx, cfg, e, rep, prog, enqueueSystems))
		}
		if (len(throughputSystems) > 0 || ceiling) && ctx.Err() == nil {
			prog.step("scenario throughput (%s%s)", strings.Join(throughputSystems, ", "), map[bool]string{true: ", pgbench", false: ""}[ceiling])
			fail(ScenarioThroughput, runThroughput(ctx, cfg, e, rep, prog, throughputSystems, ceiling))
		}
		if len(latencySystems) > 0 && ctx.Err() == nil {
			prog.step("scenario latency (%s)", strings.Join(latencySystems, ", "))
			fail(ScenarioLatency, runLatency(ctx, cfg, e, rep, prog, latencySystems))
		}
		if cfg.has(ScenarioSoak) && ctx.Err() == nil {
			prog.step("scenario soak (%s)", cfg.SoakDuration)
			fail(ScenarioSoak, runSoak(ctx, cfg, e, rep, prog))
		}
		if cfg.has(ScenarioBacklog) && ctx.Err() == nil { // always both systems, whether or not peer is named
			prog.step("scenario backlog (%d batches; skiplock, river)", cfg.BacklogRows)
			fail(ScenarioBacklog, runBacklog(ctx, cfg, e, rep, prog))
		}
		if cfg.has(ScenarioCost) && ctx.Err() == nil { // River always: the scenario is a comparison
			prog.step("scenario cost (skiplock, River; %d batches per variant)", cfg.CostBatches)
			fail(ScenarioCost, runCost(ctx, cfg, e, rep, prog))
		}
		if cfg.has(ScenarioRetention) && ctx.Err() == nil {
			prog.step("scenario retention (%d key rows against %d)", cfg.RetentionRows, cfg.RetentionBaseRows)
			fail(ScenarioRetention, runRetention(ctx, cfg, e, rep, prog))
		}
		if cfg.has(ScenarioSlots) && ctx.Err() == nil { // River always: the comparison is the point
			prog.step("scenario slots (skiplock, River; slots %v × processes %v)", cfg.Slots, cfg.Processes)
			fail(ScenarioSlots, runSlots(ctx, cfg, e, rep, prog))
		}
		if cfg.has(ScenarioMVCC) && ctx.Err() == nil {
			prog.step("scenario mvcc (%s per run, variants %s; systems %s)", cfg.MVCCDuration, strings.Join(cfg.MVCCVariants, ", "), strings.Join(cfg.MVCCSystems, ", "))
			fail(ScenarioMVCC, runMVCC(ctx, cfg, e, rep, prog))
		}
	}
	if cfg.has(ScenarioFailover) && ctx.Err() == nil {
		prog.step("scenario failover (%d of each kind; own primary and replica per run)", cfg.FailoverRepeat)
		fail(ScenarioFailover, runFailover(ctx, cfg, rep, prog))
	}
	if cfg.has(ScenarioChaos) && ctx.Err() == nil {
		prog.step("scenario chaos (randomized fault schedule, seed %d, %s)", cfg.ChaosSeed, cfg.ChaosDuration)
		fail(ScenarioChaos, runChaos(ctx, cfg, rep, prog))
	}
	if ctx.Err() != nil && firstErr == nil {
		firstErr = ctx.Err()
	}
	derive(rep)
	prog.step("done")
	return rep, firstErr
}

// header describes the machine and the software of the run.
func header(cfg *Config) Header {
	h := Header{
		Date:      time.Now().UTC().Format(time.RFC3339),
		Preset:    cfg.Preset,
		Command:   strings.Join(append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...), " "),
		Scenarios: cfg.Scenarios,
		Target:    "throwaway",
		CPUs:      runtime.NumCPU(),
		OS:        runtime.GOOS + "/" + runtime.GOARCH,
		Go:        runtime.Version(),
	}
	if cfg.DSN != "" {
		h.Target = "dsn"
	}
	h.MemoryBytes = memTotal()
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/riverqueue/river" {
				h.River = d.Version
			}
		}
	}
	h.GitCommit = gitCommit()
	return h
}

// memTotal reads MemTotal from /proc/meminfo (0 where there is none).
func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// gitCommit returns the repository's HEAD (with "-dirty" for local
// changes), or "" outside a work tree or without git.
func gitCommit() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	out, err := exec.Command("git", "-C", dir, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return ""
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--", filepath.Join(dir, "..")).Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += "-dirty"
	}
	return c
}

// Target is one goal of the issue, checked against the run's figures.
type Target struct {
	Name string  `json:"name"`
	Want string  `json:"want"`
	Got  float64 `json:"got"`
	Unit string  `json:"unit"`
	Met  bool    `json:"met"`
}

// derive adds the ratios (all within this one run) and checks the targets.
func derive(rep *Report) {
	check := func(name, want string, got float64, unit string, met bool) {
		rep.Targets = append(rep.Targets, Target{Name: name, Want: want, Got: got, Unit: unit, Met: met})
	}
	for _, size := range paramValues(rep, ScenarioThroughput, SystemSkiplock, "best_batches_per_s", "claim_size") {
		sk, _ := rep.get(ScenarioThroughput, SystemSkiplock, "best_batches_per_s", "claim_size", size)
		if rv, ok := rep.get(ScenarioThroughput, SystemRiver, "best_batches_per_s", "claim_size", size); ok && rv > 0 {
			r := sk / rv
			rep.add(ScenarioThroughput, SystemSkiplock, "ratio_over_river", r, "x", "claim_size", size)
			check(fmt.Sprintf("claim+complete, claim %v: skiplock / River", size), ">= 2", r, "x", r >= 2)
		}
		if rv, ok := rep.max(ScenarioThroughput, SystemRiver, "batches_per_s", "claim_size", size, "config", riverPerWorker); ok && rv > 0 {
			rep.add(ScenarioThroughput, SystemSkiplock, "ratio_over_river_client_per_worker", sk/rv, "x", "claim_size", size)
		}
		if pg, ok := rep.get(ScenarioThroughput, SystemPgbench, "best_batches_per_s", "claim_size", size); ok && pg > 0 {
			r := sk / pg
			rep.add(ScenarioThroughput, SystemSkiplock, "ratio_over_pgbench", r, "x", "claim_size", size)
			check(fmt.Sprintf("claim+complete, claim %v: skiplock / pgbench", size), ">= 1", r, "x", r >= 1)
		}
	}
	for _, prods := range paramValues(rep, ScenarioEnqueue, SystemSkiplock, "bulk_rows_per_s", "producers") {
		sk, _ := rep.get(ScenarioEnqueue, SystemSkiplock, "bulk_rows_per_s", "producers", prods)
		if rv, ok := rep.get(ScenarioEnqueue, SystemRiver, "bulk_rows_per_s", "producers", prods); ok && rv > 0 {
			r := sk / rv
			rep.add(ScenarioEnqueue, SystemSkiplock, "bulk_ratio_over_river", r, "x", "producers", prods)
			check(fmt.Sprintf("bulk enqueue, %v producer(s): skiplock / River", prods), ">= 3", r, "x", r >= 3)
		}
	}
	for _, prods := range paramValues(rep, ScenarioEnqueue, SystemSkiplock, "single_rows_per_s", "producers") {
		sk, _ := rep.get(ScenarioEnqueue, SystemSkiplock, "single_rows_per_s", "producers", prods)
		if rv, ok := rep.get(ScenarioEnqueue, SystemRiver, "single_rows_per_s", "producers", prods); ok && rv > 0 {
			rep.add(ScenarioEnqueue, SystemSkiplock, "single_ratio_over_river", sk/rv, "x", "producers", prods)
		}
	}
	deriveSlots(rep, check)
	if p99, ok := rep.get(ScenarioLatency, SystemSkiplock, "p99_ms", "config", "notify"); ok {
		check("idle enqueue → handler p99, skiplock with NOTIFY", "< 5", p99, "ms", p99 < 5)
	}
	if lost, ok := rep.get(ScenarioFailover, SystemSkiplock, "total_lost"); ok {
		check("failover: acknowledged batches lost", "= 0", lost, "batches", lost == 0)
		stale, _ := rep.get(ScenarioFailover, SystemSkiplock, "total_stale_completions")
		check("failover: stale-token completions accepted", "= 0", stale, "batches", stale == 0)
	}
	if lost, ok := rep.get(ScenarioChaos, SystemSkiplock, "lost"); ok {
		check("chaos: acknowledged batches lost", "= 0", lost, "batches", lost == 0)
		stale, _ := rep.get(ScenarioChaos, SystemSkiplock, "stale_completions")
		check("chaos: stale-token completions accepted", "= 0", stale, "batches", stale == 0)
		if p99, ok := rep.get(ScenarioChaos, SystemSkiplock, "recovery_p99_ms"); ok {
			check("chaos: recovery p99 (writer reachable → first handler start)", "< 1000", p99, "ms", p99 < 1000)
		}
	}
	if p99, ok := rep.get(ScenarioFailover, SystemSkiplock, "recovery_p99_ms"); ok {
		check("failover: recovery p99 (writer reachable → first handler start)", "< 1000", p99, "ms", p99 < 1000)
	}
	backlogTargets(rep)
	deriveCost(rep, check)
	deriveRetention(rep, check)
	rep.Targets = append(rep.Targets, mvccTargets(rep)...)
}

// paramValues lists the distinct values of param among matching figures,
// in order of appearance.
func paramValues(rep *Report, scenario, system, metric, param string) []any {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	var out []any
	seen := map[string]bool{}
	for _, f := range rep.Figures {
		if f.Scenario != scenario || f.System != system || f.Metric != metric {
			continue
		}
		v, ok := f.Params[param]
		if !ok || seen[fmt.Sprint(v)] {
			continue
		}
		seen[fmt.Sprint(v)] = true
		out = append(out, v)
	}
	return out
}
