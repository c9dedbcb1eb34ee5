// Command skiplock-bench measures skiplock side by side with River and
// with the database's own ceiling (pgbench running the same SQL cycle), and
// runs skiplock's failover faults under load.
//
//	cd bench && go run ./cmd/skiplock-bench -preset quick -json results.json -chart throughput.svg
//
// By default it starts a throwaway PostgreSQL server (fsync on) from the
// machine's server binaries; -dsn targets an existing server instead (the
// failover scenario always starts its own primary and replica). A table
// for people goes to stdout, progress to stderr. See bench/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/skiplock/skiplock/bench/internal/harness"
	"github.com/skiplock/skiplock/internal/faultlab"
)

func main() {
	if harness.IsCrashWorker() {
		os.Exit(harness.CrashWorkerMain())
	}
	if harness.IsSlotsChild() {
		os.Exit(harness.SlotsChildMain())
	}
	os.Exit(run())
}

func run() int {
	var (
		preset    = flag.String("preset", "quick", "quick (a few minutes on 2 cores) or full")
		duration  = flag.Duration("duration", 0, "soak duration; also scales the latency window; the chaos schedule's length; each mvcc run's length (0: the preset's)")
		seed      = flag.Int64("seed", 0, "chaos: seed of the randomized fault schedule (0: from the clock; printed, the same seed replays the schedule)")
		scenarios = flag.String("scenarios", "all", "comma-separated: enqueue, throughput, ceiling, peer, latency, soak, failover, chaos, backlog, cost, retention, slots, mvcc (all: every one but chaos, backlog, retention, slots and mvcc)")
		mvccVars  = flag.String("mvcc-variants", "all", "mvcc: comma-separated snapshot variants: none, primary, replica (all: the three; the ratios need none)")
		mvccSys   = flag.String("mvcc-systems", "all", "mvcc: comma-separated systems: skiplock, river (all: both)")
		dsn       = flag.String("dsn", "", "PostgreSQL connection string to measure on (default: start a throwaway server); the failover scenario always starts its own servers")
		jsonPath  = flag.String("json", "", "write every figure as JSON to this file")
		chartPath = flag.String("chart", "", "write the throughput chart (SVG) to this file")
		outDir    = flag.String("out-dir", "", "directory for -json and -chart files given without a directory (created if missing)")
		reps      = flag.Int("reps", 0, "repetitions of each measurement (0: the preset's)")
		workers   = flag.String("workers", "", "throughput worker counts, e.g. 1,2,4,8,16 (default: the preset's)")
		kinds     = flag.String("chaos-kinds", "", "chaos: comma-separated fault kinds to draw from (default: every kind)")
		backlog   = flag.Int("backlog", 0, "backlog scenario: batches enqueued before the drain (0: the preset's, quick 1,000,000, full 10,000,000)")
		costN     = flag.Int("cost-batches", 0, "cost: batches (River: jobs) per measured lifecycle of each variant (0: the preset's)")
		retRows   = flag.Int("retention-rows", 0, "retention: key rows at the target size (0: the preset's; 7 days of 500 batches/s is 302400000)")
		slots     = flag.String("slots", "", "slots: handler slots per worker process, e.g. 1,16,64,256 (default: the preset's)")
		diag      = flag.Bool("diag", false, "mvcc: load pg_stat_statements and auto_explain on the throwaway server and print, after each window, the statements, indexes, SLRUs and wait events the server spent its time on; the server log (slow plans) is copied next to -json as <name>-server.log")
		processes = flag.String("processes", "", "slots: worker process counts, e.g. 1,4,16 (default: the preset's)")
	)
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: skiplock-bench [flags]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		return 2
	}
	cfg, err := harness.Preset(*preset)
	if err == nil {
		cfg.Scenarios, err = harness.ParseScenarios(*scenarios)
	}
	if err == nil {
		cfg.MVCCVariants, err = harness.ParseMVCCVariants(*mvccVars)
	}
	if err == nil {
		cfg.MVCCSystems, err = harness.ParseMVCCSystems(*mvccSys)
	}
	if err == nil && *workers != "" {
		cfg.Workers, err = harness.ParseInts(*workers)
	}
	if err == nil && *kinds != "" {
		cfg.ChaosKinds, err = faultlab.ParseKinds(*kinds)
	}
	if err == nil && *slots != "" {
		cfg.Slots, err = harness.ParseInts(*slots)
	}
	if err == nil && *processes != "" {
		cfg.Processes, err = harness.ParseInts(*processes)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "skiplock-bench:", err)
		return 2
	}
	if *duration > 0 {
		cfg.SoakDuration = *duration
		cfg.LatencyWindow = min(cfg.LatencyWindow, *duration)
		cfg.ChaosDuration = *duration
		cfg.MVCCDuration, cfg.MVCCWindow = *duration, min(cfg.MVCCWindow, *duration)
	}
	cfg.ChaosSeed = *seed
	if cfg.ChaosSeed == 0 {
		cfg.ChaosSeed = time.Now().UnixNano() % 1_000_000
	}
	if *reps > 0 {
		cfg.Reps = *reps
	}
	if *backlog > 0 {
		cfg.BacklogRows = *backlog
	}
	if *costN > 0 {
		cfg.CostBatches = *costN
	}
	if *retRows > 0 {
		cfg.RetentionRows = *retRows
	}
	cfg.DSN = *dsn
	cfg.Progress = os.Stderr
	place := func(p string) string {
		if p == "" || *outDir == "" || filepath.Dir(p) != "." {
			return p
		}
		return filepath.Join(*outDir, p)
	}
	*jsonPath, *chartPath = place(*jsonPath), place(*chartPath)
	cfg.Diag = *diag
	if *diag && *jsonPath != "" {
		cfg.DiagLog = strings.TrimSuffix(*jsonPath, filepath.Ext(*jsonPath)) + "-server.log"
	}
	if *outDir != "" {
		if err := os.MkdirAll(*outDir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "skiplock-bench:", err)
			return 1
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	t0 := time.Now()
	rep, runErr := harness.Run(ctx, cfg)
	if rep == nil {
		fmt.Fprintln(os.Stderr, "skiplock-bench:", runErr)
		return 1
	}
	code := 0
	if err := rep.WriteTable(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "skiplock-bench: table:", err)
		code = 1
	}
	if *jsonPath != "" {
		if err := rep.WriteJSON(*jsonPath); err != nil {
			fmt.Fprintln(os.Stderr, "skiplock-bench: json:", err)
			code = 1
		} else {
			fmt.Fprintf(os.Stderr, "wrote %s\n", *jsonPath)
		}
	}
	if *chartPath != "" {
		if err := rep.WriteChart(*chartPath); err != nil {
			fmt.Fprintln(os.Stderr, "skiplock-bench: chart:", err)
			code = 1
		} else {
			fmt.Fprintf(os.Stderr, "wrote %s\n", *chartPath)
		}
	}
	fmt.Fprintf(os.Stderr, "finished in %s\n", time.Since(t0).Round(time.Second))
	if runErr != nil {
		fmt.Fprintln(os.Stderr, "skiplock-bench:", runErr)
		return 1
	}
	return code
}
