package harness

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/skiplock/skiplock/internal/faultlab"
)

// runChaos runs faultlab's randomized fault schedule of cfg.ChaosSeed over
// cfg.ChaosDuration (faults of every kind, topology faults serialized, the
// others overlapping them) and reports what survived.
func runChaos(ctx context.Context, cfg *Config, rep *Report, prog *progress) error {
	prog.step("chaos: seed %d, %s (replay: -scenarios chaos -duration %s -seed %d)", cfg.ChaosSeed, cfg.ChaosDuration, cfg.ChaosDuration, cfg.ChaosSeed)
	res, err := faultlab.RunChaos(ctx, &faultlab.ChaosConfig{
		Seed: cfg.ChaosSeed, Duration: cfg.ChaosDuration, Kinds: cfg.ChaosKinds,
		Logf: func(format string, args ...any) { prog.step(format, args...) },
	})
	if res == nil {
		return err
	}
	params := []any{"seed", cfg.ChaosSeed, "duration_s", cfg.ChaosDuration.Seconds()}
	add := func(metric string, v float64, unit string, more ...any) {
		rep.add(ScenarioChaos, SystemSkiplock, metric, v, unit, append(slices.Clone(params), more...)...)
	}
	var total, losing int
	for _, k := range slices.Sorted(maps.Keys(res.Faults)) {
		n := res.Faults[k]
		total += n
		add("faults", float64(n), "faults", "kind", string(k))
		add("fault_errors", float64(res.FaultErrors[k]), "faults", "kind", string(k))
		add("duplicates", float64(res.Duplicates[k]), "batches", "kind", string(k))
		if n > 0 {
			add("duplicates_per_fault", float64(res.Duplicates[k])/float64(n), "batches", "kind", string(k))
		}
		if k.LosesCommits() {
			losing += n
		}
	}
	add("faults_total", float64(total), "faults")
	add("faults_losing_commits", float64(losing), "faults")
	add("faults_commit_loss_kinds", float64(res.Faults[faultlab.CommitLoss]+res.Faults[faultlab.CommitLossFlipBack]), "faults")
	if res.Final == nil {
		add("completed_run", 0, "bool")
		return err
	}
	add("completed_run", 1, "bool")
	add("faults_slow_detection", float64(res.SlowDetection), "faults", "min_s", 30)
	add("acked", float64(res.Final.Acked), "batches")
	add("lost", float64(res.Lost), "batches")
	add("stale_completions", float64(res.Stale), "batches")
	add("done_twice", float64(res.DoneTwice), "batches")
	add("overlapping_handlers", float64(res.Overlaps), "pairs")
	add("commits_lost_at_promotion", float64(res.CommitsLost), "batches")
	add("faults_that_lost_commits", float64(res.RealCommitLosses), "faults")
	if losing > 0 {
		add("duplicates_per_losing_fault", float64(res.DupLosing)/float64(losing), "batches")
		add("acked_around_losing_faults", float64(res.AckedAroundLosing), "batches", "around_s", faultlab.AroundLosing.Seconds())
		if res.AckedAroundLosing > 0 {
			add("duplicates_share_around_losing_faults", 100*float64(res.DupLosing)/float64(res.AckedAroundLosing), "%")
		}
	}
	if total-losing > 0 {
		add("duplicates_per_other_fault", float64(res.DupNotLosing)/float64(total-losing), "batches")
	}
	add("duplicates_without_fault", float64(res.Duplicates[""]), "batches")
	add("delivered_twice_losing_faults", float64(res.TwiceLosing), "batches")
	add("delivered_twice_other_faults", float64(res.TwiceNotLosing), "batches")
	add("recovery_p50_ms", ms(res.RecoveryP50), "ms", "samples", len(res.Recoveries))
	add("recovery_p99_ms", ms(res.RecoveryP99), "ms", "samples", len(res.Recoveries))
	add("recovery_max_ms", ms(res.RecoveryMax), "ms", "samples", len(res.Recoveries))
	add("recovery_timeouts", float64(res.RecoveryTimeouts), "recoveries")
	add("recoveries_interrupted", float64(res.InterruptedRecoveries), "recoveries")
	if n := len(res.SlowedRecoveries); n > 0 {
		add("recovery_under_latency_p50_ms", ms(faultlab.Percentile(res.SlowedRecoveries, 50)), "ms", "samples", n)
		add("recovery_under_latency_max_ms", ms(faultlab.Percentile(res.SlowedRecoveries, 100)), "ms", "samples", n)
	}
	prog.step("chaos: %s", res)
	if err != nil {
		return err
	}
	if res.Broken() {
		return fmt.Errorf("chaos seed %d: broken invariant: %d lost, %d stale completions, %d completed twice", cfg.ChaosSeed, res.Lost, res.Stale, res.DoneTwice)
	}
	return nil
}
