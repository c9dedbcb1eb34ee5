package harness

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/skiplock/skiplock/internal/faultlab"
)

// The failover scenario: every fault kind, each on a fresh primary and
// replica behind a proxy, under faultlab's load (2 producers cutting
// batches with a batch.Builder, 4 runners) through one failover.Pool, each
// ending with faultlab's invariant check on the final writer.
const foSteady = time.Second // load before and after each fault

type faultKind struct {
	name  string
	fault faultlab.Fault
}

// faultKinds returns the faults of the failover scenario, in order.
func faultKinds(cfg *Config) []faultKind {
	kinds := []faultKind{
		{"planned failover", faultlab.Fault{Kind: faultlab.PlannedFailover}},
		{"stale endpoint", faultlab.Fault{Kind: faultlab.StaleEndpoint, Window: cfg.StaleWindow}},
		{"reversed failover", faultlab.Fault{Kind: faultlab.ReversedFailover}},
		{"split brain", faultlab.Fault{Kind: faultlab.SplitBrain}},
		{"blackhole", faultlab.Fault{Kind: faultlab.Blackhole, Window: cfg.BlackholeWindow}},
		{"admin shutdown", faultlab.Fault{Kind: faultlab.AdminShutdown}},
		{"commit loss", faultlab.Fault{Kind: faultlab.CommitLoss}},
	}
	if cfg.WorkerCrash {
		kinds = append(kinds, faultKind{"worker crash", faultlab.Fault{Kind: faultlab.WorkerCrash}})
	}
	return kinds
}

// runFailover runs every fault kind FailoverRepeat times, each on a fresh
// primary and replica, and reports recovery times and the invariant check.
func runFailover(ctx context.Context, cfg *Config, rep *Report, prog *progress) error {
	var all []time.Duration
	var lost, dupes, stale int
	for _, kind := range faultKinds(cfg) {
		for k := 1; k <= cfg.FailoverRepeat; k++ {
			prog.step("failover %s #%d: starting a primary and a replica", kind.name, k)
			run, err := oneFault(ctx, kind.fault)
			if err != nil {
				return fmt.Errorf("failover %s #%d: %w", kind.name, k, err)
			}
			if rep.Header.PostgreSQL == "" {
				rep.Header.PostgreSQL = run.version
			}
			params := []any{"kind", kind.name, "run", k}
			for _, r := range run.outcome.Recoveries {
				all = append(all, r.Took)
				rep.add(ScenarioFailover, SystemSkiplock, "recovery_ms", ms(r.Took), "ms", append(slices.Clone(params), "phase", r.Phase)...)
			}
			for name, d := range run.outcome.Extra {
				rep.add(ScenarioFailover, SystemSkiplock, name+"_ms", ms(d), "ms", params...)
			}
			out := run.report
			rep.add(ScenarioFailover, SystemSkiplock, "acked", float64(out.Acked), "batches", params...)
			rep.add(ScenarioFailover, SystemSkiplock, "lost", float64(out.Lost+out.DoneTwice), "batches", params...)
			rep.add(ScenarioFailover, SystemSkiplock, "duplicates", float64(out.Duplicates), "batches", params...)
			rep.add(ScenarioFailover, SystemSkiplock, "stale_completions", float64(out.StaleCompletions), "batches", params...)
			if kind.fault.Kind == faultlab.CommitLoss {
				rep.add(ScenarioFailover, SystemSkiplock, "commits_lost_at_promotion", float64(run.outcome.CommitsLost), "batches", params...)
			}
			lost += out.Lost + out.DoneTwice
			dupes += out.Duplicates
			stale += out.StaleCompletions
			prog.step("failover %s #%d: %s, generations %d, recovery %s%s",
				kind.name, k, out, run.generations, fmtRecoveries(run.outcome.Recoveries), fmtExtra(run.outcome.Extra))
			if run.recoveryErr != nil {
				return fmt.Errorf("failover %s #%d: %w", kind.name, k, run.recoveryErr)
			}
		}
	}
	runs := cfg.FailoverRepeat
	rep.add(ScenarioFailover, SystemSkiplock, "recovery_p50_ms", ms(percentile(all, 50)), "ms", "samples", len(all), "runs_per_kind", runs)
	rep.add(ScenarioFailover, SystemSkiplock, "recovery_p99_ms", ms(percentile(all, 99)), "ms", "samples", len(all), "runs_per_kind", runs)
	rep.add(ScenarioFailover, SystemSkiplock, "recovery_max_ms", ms(percentile(all, 100)), "ms", "samples", len(all), "runs_per_kind", runs)
	rep.add(ScenarioFailover, SystemSkiplock, "total_lost", float64(lost), "batches", "runs_per_kind", runs)
	rep.add(ScenarioFailover, SystemSkiplock, "total_duplicates", float64(dupes), "batches", "runs_per_kind", runs)
	rep.add(ScenarioFailover, SystemSkiplock, "total_stale_completions", float64(stale), "batches", "runs_per_kind", runs)
	if lost > 0 || stale > 0 {
		return fmt.Errorf("failover: broken invariant: %d lost, %d stale completions", lost, stale)
	}
	return nil
}

// faultResult is one fault on a fresh cluster.
type faultResult struct {
	outcome     *faultlab.Outcome
	report      *faultlab.Report
	recoveryErr error // a recovery that did not happen within the limit
	generations int64
	version     string // the servers' PostgreSQL version
}

func oneFault(ctx context.Context, f faultlab.Fault) (*faultResult, error) {
	c, err := faultlab.StartCluster(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	res := &faultResult{}
	if err := c.Direct(0).QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&res.version); err != nil {
		return nil, err
	}
	pool, err := c.NewPool(ctx, nil)
	if err != nil {
		return nil, err
	}
	l, err := faultlab.StartLoad(ctx, pool, nil)
	if err != nil {
		return nil, err
	}
	defer l.Stop()
	<-time.After(foSteady)
	res.outcome = faultlab.Run(ctx, c, l, f)
	if res.outcome.Err != nil {
		return nil, res.outcome.Err
	}
	for _, r := range res.outcome.Recoveries {
		if r.Err != nil && res.recoveryErr == nil {
			res.recoveryErr = fmt.Errorf("%s: %w", r.Phase, r.Err)
		}
	}
	<-time.After(foSteady)
	res.report, err = l.Finish(ctx, c.Direct(c.Writer()), 60*time.Second)
	if err != nil {
		return nil, err
	}
	res.generations = pool.Generation()
	if res.report.Acked == 0 {
		return nil, errors.New("no enqueue was acknowledged")
	}
	return res, nil
}

func fmtRecoveries(rs []faultlab.Recovery) string {
	var s string
	for _, r := range rs {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%s %s", r.Phase, r.Took.Round(time.Millisecond))
	}
	return s
}

func fmtExtra(m map[string]time.Duration) string {
	var s string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		s += fmt.Sprintf("; %s %s", k, m[k].Round(time.Millisecond))
	}
	return s
}
