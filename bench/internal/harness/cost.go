package harness

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// The cost scenario follows CostBatches batches (River: jobs) through their
// whole life and measures what each phase costs per batch: WAL bytes,
// server CPU and client CPU. Phases, in order:
//
//   - enqueue: bulk enqueue, CostPerCall rows per call, costProducers
//     producers;
//   - claim+complete: costWorkers runners (River: one client with the same
//     handler slots) with a no-op handler, claims of costClaimSize;
//   - vacuum: VACUUM of every table the two phases wrote (autovacuum is off
//     on them while the scenario runs, so vacuum work lands here and not at
//     random in another phase);
//   - prune: the system's own removal of what a finished batch leaves
//     behind — skiplock's Client.Prune (completion records after
//     DoneRetention, keys after KeyRetention), River's job cleaner (completed
//     jobs after CompletedJobRetentionPeriod, run by a started client's
//     leader). The records are first made a day (keys: eight days) old with
//     an UPDATE, vacuumed, and a CHECKPOINT follows: in production these
//     rows are pruned long after every page they sit on was last written,
//     so each page's first change pays a full-page image;
//   - prune vacuum: VACUUM of the pruned tables.
//
// Before the measured lifecycle a warm-up lifecycle (enqueue,
// claim+complete, vacuum; a quarter of the batches) runs right after a
// CHECKPOINT, so that the measured enqueue, claim+complete and vacuum run
// in steady state: every page they touch was already changed since the
// last checkpoint, or is a new page (which needs no full-page image).
const (
	costProducers = 2
	costWorkers   = 2
	costClaimSize = 100
	// costDrainCap bounds one claim+complete phase.
	costDrainCap = 2 * time.Minute
	// costCleanerWait bounds the wait for River's job cleaner.
	costCleanerWait = time.Minute
)

// Variants of the cost scenario.
const (
	costKeyless = "keyless" // skiplock without idempotency keys
	costKeyed   = "keyed"   // skiplock, every batch with an idempotency key
	costPlain   = "plain"   // River, InsertManyFast, no unique options
	costUnique  = "unique"  // River, InsertMany with UniqueOpts{ByArgs: true}
)

// Phases of a batch's life, in order, and their sum.
const (
	phaseEnqueue      = "enqueue"
	phaseWork         = "claim+complete"
	phaseVacuum       = "vacuum"
	phasePrune        = "prune"
	phasePruneVacuum  = "prune vacuum"
	phaseTotal        = "total"
	costPhaseFigures  = "wal_bytes_per_batch"
	costWalByRecord   = "wal_bytes_per_batch_by_record"
	costBreakdownMin  = 0.01 // record types below this share of a phase's WAL are left out
	costBreakdownKeep = 8    // at most this many record types per phase
)

var costPhases = []string{phaseEnqueue, phaseWork, phaseVacuum, phasePrune, phasePruneVacuum}

// costVariant is one system in one configuration, with what each phase does.
type costVariant struct {
	system, variant string
	tables          []string // every table the lifecycle writes, quoted
	enqueue         func(ctx context.Context, round, n int) error
	work            func(ctx context.Context, n int) error
	// maxID returns the highest id of finished records so far: records of
	// the warm-up are left alone by the prune phase.
	maxID func(ctx context.Context) (int64, error)
	// age makes the finished records above id look old enough to prune,
	// and returns the tables to vacuum after pruning.
	age func(ctx context.Context, above int64) ([]string, error)
	// prune removes what finished batches left behind and returns how many
	// records of each kind it deleted.
	prune func(ctx context.Context, n int) (map[string]int64, error)
}

func (e *env) costVariants(rc *river.Client[pgxTx]) []costVariant {
	keyed := func(round, i int) string {
		// A source range per batch: 32 partitions, each read in order.
		return batch.Source{Topic: "bench", Partition: int32(i % 32), Start: int64(round)<<32 + int64(i/32)*1000, End: int64(round)<<32 + int64(i/32)*1000 + 999}.Key()
	}
	skEnqueue := func(withKey bool) func(ctx context.Context, round, n int) error {
		return func(ctx context.Context, round, n int) error {
			return inCalls(ctx, n, func(ctx context.Context, from, to int) error {
				ps := make([]queue.EnqueueParams, 0, to-from)
				for i := from; i < to; i++ {
					p := queue.EnqueueParams{Queue: benchQueue, Meta: skiplockMeta(round, i)}
					if withKey {
						p.IdempotencyKey = keyed(round, i)
					}
					ps = append(ps, p)
				}
				res, err := e.client.EnqueueMany(ctx, ps)
				for _, r := range res {
					if r.Duplicate {
						return fmt.Errorf("batch %d is a duplicate", r.ID)
					}
				}
				return err
			})
		}
	}
	rvEnqueue := func(unique bool) func(ctx context.Context, round, n int) error {
		return func(ctx context.Context, round, n int) error {
			return inCalls(ctx, n, func(ctx context.Context, from, to int) error {
				ps := make([]river.InsertManyParams, 0, to-from)
				for i := from; i < to; i++ {
					opts := &river.InsertOpts{Queue: benchQueue}
					if unique {
						opts.UniqueOpts = river.UniqueOpts{ByArgs: true}
					}
					ps = append(ps, river.InsertManyParams{Args: riverJob(round, i), InsertOpts: opts})
				}
				if !unique {
					_, err := rc.InsertManyFast(ctx, ps)
					return err
				}
				res, err := rc.InsertMany(ctx, ps)
				for _, r := range res {
					if r.UniqueSkippedAsDuplicate {
						return fmt.Errorf("job %d is a duplicate", r.Job.ID)
					}
				}
				return err
			})
		}
	}
	skWork := func(ctx context.Context, n int) error {
		d, err := e.drainSkiplock(ctx, n, costClaimSize, costWorkers, costDrainCap)
		if err == nil && d.capped {
			err = fmt.Errorf("%d of %d batches completed within %s", d.completed, n, costDrainCap)
		}
		return err
	}
	rvWork := func(ctx context.Context, n int) error {
		d, err := e.drainRiver(ctx, riverOneClient, n, costClaimSize, costWorkers, costDrainCap)
		if err == nil && d.capped {
			err = fmt.Errorf("%d of %d jobs completed within %s", d.completed, n, costDrainCap)
		}
		return err
	}
	skMaxID := func(ctx context.Context) (int64, error) {
		var id int64
		err := e.pool.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM `+qs("batch_done")).Scan(&id)
		return id, err
	}
	skAge := func(withKey bool) func(ctx context.Context, above int64) ([]string, error) {
		return func(ctx context.Context, above int64) ([]string, error) {
			// Past DoneRetention and KeyRetention (their defaults: a day, a week).
			if err := e.exec(ctx, `UPDATE `+qs("batch_done")+` SET done_at = done_at - interval '2 days' WHERE id > $1`, above); err != nil {
				return nil, err
			}
			if !withKey {
				return []string{qs("batch_done")}, nil
			}
			if err := e.exec(ctx, `UPDATE `+qs("batch_key_digest")+` SET created_at = created_at - interval '8 days' WHERE batch_id > $1`, above); err != nil {
				return nil, err
			}
			return []string{qs("batch_done"), qs("batch_key_digest")}, nil
		}
	}
	skPrune := func(ctx context.Context, _ int) (map[string]int64, error) {
		done, keys, err := e.client.Prune(ctx)
		return map[string]int64{"completion_records": done, "keys": keys}, err
	}
	rvMaxID := func(ctx context.Context) (int64, error) {
		var id int64
		err := e.pool.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM `+qr("river_job")).Scan(&id)
		return id, err
	}
	rvAge := func(ctx context.Context, above int64) ([]string, error) {
		// Past River's CompletedJobRetentionPeriod (default a day).
		err := e.exec(ctx, `UPDATE `+qr("river_job")+` SET finalized_at = finalized_at - interval '2 days' WHERE id > $1 AND state = 'completed'`, above)
		return []string{qr("river_job")}, err
	}
	skTables := []string{qs("batch"), qs("batch_done"), qs("batch_key_digest")}
	rvTables := []string{qr("river_job")}
	return []costVariant{
		{SystemSkiplock, costKeyless, skTables, skEnqueue(false), skWork, skMaxID, skAge(false), skPrune},
		{SystemSkiplock, costKeyed, skTables, skEnqueue(true), skWork, skMaxID, skAge(true), skPrune},
		{SystemRiver, costPlain, rvTables, rvEnqueue(false), rvWork, rvMaxID, rvAge, e.riverClean},
		{SystemRiver, costUnique, rvTables, rvEnqueue(true), rvWork, rvMaxID, rvAge, e.riverClean},
	}
}

// inCalls enqueues rows 0..n-1 in calls of perCall rows from costProducers
// producers.
func inCalls(ctx context.Context, n int, call func(ctx context.Context, from, to int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, costProducers)
	for range costProducers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				from := int(next.Add(costPerCall)) - costPerCall
				if from >= n || ctx.Err() != nil {
					return
				}
				if err := call(ctx, from, min(from+costPerCall, n)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// costPerCall is the rows per enqueue call of the cost scenario, both systems.
const costPerCall = 100

// riverClean runs River's own job cleaner: a client started with a worker
// becomes leader, and its cleaner deletes the completed jobs older than
// CompletedJobRetentionPeriod (a day), 10,000 per statement, as soon as it
// starts. The cleaner logs how many it deleted once it has deleted all it
// could; the client stops after that log line.
func (e *env) riverClean(ctx context.Context, n int) (map[string]int64, error) {
	logged := &cleanerLog{next: quietLogger().Handler(), deleted: make(chan int64, 16)}
	workers := river.NewWorkers()
	river.AddWorker(workers, river.WorkFunc(func(context.Context, *river.Job[riverArgs]) error { return nil }))
	c, err := river.NewClient(riverpgxv5.New(e.rpool), &river.Config{
		Schema:  riverSchema,
		Logger:  slog.New(logged),
		Workers: workers,
		Queues:  map[string]river.QueueConfig{benchQueue: {MaxWorkers: 1}},
	})
	if err != nil {
		return nil, err
	}
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_ = c.Stop(sctx)
	}()
	timeout := time.NewTimer(costCleanerWait)
	defer timeout.Stop()
	var total int64
	for total < int64(n) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timeout.C:
			return nil, fmt.Errorf("River's job cleaner deleted %d of %d completed jobs within %s", total, n, costCleanerWait)
		case d := <-logged.deleted:
			total += d
		}
	}
	return map[string]int64{"jobs": total}, nil
}

// cleanerLog passes River's errors on to next and reports the deletions
// River's job cleaner logs ("JobCleaner: Ran successfully",
// num_jobs_deleted) on deleted.
type cleanerLog struct {
	next    slog.Handler
	deleted chan int64
}

func (h *cleanerLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *cleanerLog) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasSuffix(r.Message, "Ran successfully") { // only the job cleaner adds num_jobs_deleted

		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "num_jobs_deleted" {
				select {
				case h.deleted <- a.Value.Int64():
				default:
				}
			}
			return true
		})
	}
	if r.Level >= slog.LevelError {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *cleanerLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &cleanerLog{next: h.next.WithAttrs(as), deleted: h.deleted}
}

func (h *cleanerLog) WithGroup(name string) slog.Handler {
	return &cleanerLog{next: h.next.WithGroup(name), deleted: h.deleted}
}

// setAutovacuum turns autovacuum on or off for tables.
func (e *env) setAutovacuum(ctx context.Context, tables []string, on bool) error {
	for _, t := range tables {
		sql := `ALTER TABLE ` + t + ` SET (autovacuum_enabled = false)`
		if on {
			sql = `ALTER TABLE ` + t + ` RESET (autovacuum_enabled)`
		}
		if err := e.exec(ctx, sql); err != nil {
			return fmt.Errorf("autovacuum on %s: %w", t, err)
		}
	}
	return nil
}

func (e *env) vacuumTables(ctx context.Context, tables []string) error {
	if err := e.exec(ctx, `VACUUM `+strings.Join(tables, ", ")); err != nil {
		return fmt.Errorf("vacuum: %w", err)
	}
	return nil
}

// runCost measures the cost of CostBatches batch lifecycles of each
// variant, one variant after the other on emptied tables.
func runCost(ctx context.Context, cfg *Config, e *env, rep *Report, prog *progress) (err error) {
	rc, err := e.newRiverClient(0, riverTuning{}, nil)
	if err != nil {
		return err
	}
	variants := e.costVariants(rc)
	all := append(append([]string{}, variants[0].tables...), variants[2].tables...)
	if err := e.setAutovacuum(ctx, all, false); err != nil {
		return err
	}
	defer func() {
		if aerr := e.setAutovacuum(context.WithoutCancel(ctx), all, true); err == nil {
			err = aerr
		}
	}()
	inspect, ierr := e.walinspect(ctx)
	if ierr != nil {
		rep.note("cost: no WAL breakdown by record type: %v", ierr)
	}
	n, warm := cfg.CostBatches, max(cfg.CostBatches/4, costPerCall)
	for _, v := range variants {
		if err := e.costLifecycle(ctx, v, n, warm, inspect, rep, prog); err != nil {
			return fmt.Errorf("%s %s: %w", v.system, v.variant, err)
		}
	}
	return e.reset(ctx)
}

func (e *env) costLifecycle(ctx context.Context, v costVariant, n, warm int, inspect string, rep *Report, prog *progress) error {
	if err := e.reset(ctx); err != nil {
		return err
	}
	if err := e.checkpoint(ctx); err != nil {
		return err
	}
	if err := v.enqueue(ctx, 0, warm); err != nil {
		return fmt.Errorf("warm-up enqueue: %w", err)
	}
	if err := v.work(ctx, warm); err != nil {
		return fmt.Errorf("warm-up claim+complete: %w", err)
	}
	if err := e.vacuumTables(ctx, v.tables); err != nil {
		return err
	}
	warmMax, err := v.maxID(ctx)
	if err != nil {
		return err
	}
	var total usage
	var pruned map[string]int64
	var pruneTables []string
	for _, phase := range costPhases {
		var run func() error
		switch phase {
		case phaseEnqueue:
			run = func() error { return v.enqueue(ctx, 1, n) }
		case phaseWork:
			run = func() error { return v.work(ctx, n) }
		case phaseVacuum:
			run = func() error { return e.vacuumTables(ctx, v.tables) }
		case phasePrune:
			// Not measured: age the records, clean up the update's dead
			// versions, and start a checkpoint cycle.
			if pruneTables, err = v.age(ctx, warmMax); err != nil {
				return fmt.Errorf("age records: %w", err)
			}
			if err := e.vacuumTables(ctx, pruneTables); err != nil {
				return err
			}
			if err := e.checkpoint(ctx); err != nil {
				return err
			}
			run = func() (err error) { pruned, err = v.prune(ctx, n); return err }
		case phasePruneVacuum:
			run = func() error { return e.vacuumTables(ctx, pruneTables) }
		}
		m, err := e.startMeter(ctx)
		if err != nil {
			return err
		}
		if err := run(); err != nil {
			return fmt.Errorf("%s: %w", phase, err)
		}
		u, err := e.stopMeter(ctx, m)
		if err != nil {
			return err
		}
		e.costFigures(rep, v, phase, n, u)
		if u.checkpoints > 0 {
			rep.note("cost: %s %s: %d checkpoint(s) began during the %s phase; its WAL includes their full-page images", v.system, v.variant, u.checkpoints, phase)
		}
		total.walBytes += u.walBytes
		total.elapsed += u.elapsed
		total.cpu = cpuUse{client: total.cpu.client + u.cpu.client, server: total.cpu.server + u.cpu.server, serverKnown: u.cpu.serverKnown}
		prog.step("cost %-8s %-7s %-14s %7.0f B/batch, CPU %6.1f + %6.1f µs/batch, %s", v.system, v.variant, phase,
			float64(u.walBytes)/float64(n), us(u.cpu.client, n), us(u.cpu.server, n), u.elapsed.Round(time.Millisecond))
		if inspect != "" && phase != phaseVacuum {
			if err := e.costBreakdown(ctx, rep, v, phase, n, inspect, u); err != nil {
				rep.note("cost: WAL breakdown of %s %s %s: %v", v.system, v.variant, phase, err)
			}
		}
	}
	e.costFigures(rep, v, phaseTotal, n, total)
	for kind, d := range pruned {
		rep.add(ScenarioCost, v.system, "pruned_"+kind, float64(d), "rows", "variant", v.variant, "batches", n)
	}
	prog.step("cost %-8s %-7s %-14s %7.0f B/batch, CPU %6.1f + %6.1f µs/batch; pruned %v", v.system, v.variant, phaseTotal,
		float64(total.walBytes)/float64(n), us(total.cpu.client, n), us(total.cpu.server, n), pruned)
	return nil
}

func us(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(n) }

func (e *env) costFigures(rep *Report, v costVariant, phase string, n int, u usage) {
	params := []any{"variant", v.variant, "phase", phase, "batches", n}
	rep.add(ScenarioCost, v.system, costPhaseFigures, float64(u.walBytes)/float64(n), "B", params...)
	cc, cs := u.cpu.perRow(n)
	rep.add(ScenarioCost, v.system, "client_cpu_us_per_batch", cc, "µs", params...)
	if cs >= 0 {
		rep.add(ScenarioCost, v.system, "server_cpu_us_per_batch", cs, "µs", params...)
	}
	rep.add(ScenarioCost, v.system, "seconds", round3(u.elapsed.Seconds()), "s", params...)
}

func round3(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }

// costBreakdown records the phase's WAL per batch by record type (the
// largest, at least costBreakdownMin of the phase each).
func (e *env) costBreakdown(ctx context.Context, rep *Report, v costVariant, phase string, n int, inspect string, u usage) error {
	stats, err := e.walStats(ctx, inspect, u.from, u.to)
	if err != nil {
		return err
	}
	var sum int64
	for _, s := range stats {
		sum += s.bytes
	}
	for i, s := range stats {
		if i >= costBreakdownKeep || float64(s.bytes) < costBreakdownMin*float64(sum) {
			break
		}
		rep.add(ScenarioCost, v.system, costWalByRecord, float64(s.bytes)/float64(n), "B",
			"variant", v.variant, "phase", phase, "record", s.record, "records_per_batch", round3(float64(s.count)/float64(n)),
			"fpi_bytes_per_batch", round3(float64(s.fpi)/float64(n)))
	}
	return nil
}

// costPairs pairs each skiplock variant with the River variant it is held
// against.
var costPairs = [][2]string{{costKeyless, costPlain}, {costKeyed, costUnique}}

// deriveCost adds the skiplock/River ratios of the cost scenario and checks
// the WAL target on the whole lifecycle.
func deriveCost(rep *Report, check func(name, want string, got float64, unit string, met bool)) {
	for _, pair := range costPairs {
		for _, phase := range append(append([]string{}, costPhases...), phaseTotal) {
			sk, ok1 := rep.get(ScenarioCost, SystemSkiplock, costPhaseFigures, "variant", pair[0], "phase", phase)
			rv, ok2 := rep.get(ScenarioCost, SystemRiver, costPhaseFigures, "variant", pair[1], "phase", phase)
			if !ok1 || !ok2 || rv <= 0 {
				continue
			}
			r := sk / rv
			rep.add(ScenarioCost, SystemSkiplock, "wal_ratio_over_river", r, "x", "variant", pair[0], "river_variant", pair[1], "phase", phase)
			if phase == phaseTotal {
				check(fmt.Sprintf("cost: WAL per batch lifecycle, skiplock %s / River %s", pair[0], pair[1]), "<= 0.5", r, "x", r <= 0.5)
			}
			cpu := func(sys, variant string) (float64, bool) {
				c, ok := rep.get(ScenarioCost, sys, "client_cpu_us_per_batch", "variant", variant, "phase", phase)
				s, ok2 := rep.get(ScenarioCost, sys, "server_cpu_us_per_batch", "variant", variant, "phase", phase)
				return c + s, ok && ok2
			}
			if skc, ok := cpu(SystemSkiplock, pair[0]); ok {
				if rvc, ok := cpu(SystemRiver, pair[1]); ok && rvc > 0 {
					rep.add(ScenarioCost, SystemSkiplock, "cpu_ratio_over_river", skc/rvc, "x", "variant", pair[0], "river_variant", pair[1], "phase", phase)
				}
			}
		}
	}
}

// costTable writes the cost scenario's section.
func (r *Report) costTable(w io.Writer) {
	if _, ok := r.get(ScenarioCost, SystemSkiplock, costPhaseFigures, "phase", phaseTotal); !ok {
		if _, ok := r.get(ScenarioCost, SystemRiver, costPhaseFigures, "phase", phaseTotal); !ok {
			return
		}
	}
	var batches any
	r.mu.Lock()
	for _, f := range r.Figures {
		if f.Scenario == ScenarioCost && f.Metric == costPhaseFigures {
			batches = f.Params["batches"]
			break
		}
	}
	r.mu.Unlock()
	fmt.Fprintf(w, "\nCost per batch lifecycle (skiplock per batch, River per job; %v of each; enqueue, claim+complete and vacuum in steady state, prune phases after a CHECKPOINT)\n", batches)
	fmt.Fprintln(w, "system\tvariant\tphase\tWAL B\tserver CPU µs\tclient CPU µs\ttime s\tWAL / River\tCPU / River\t")
	rivalOf := map[string]string{}
	for _, p := range costPairs {
		rivalOf[p[0]] = p[1]
	}
	for _, v := range []struct{ sys, variant string }{{SystemSkiplock, costKeyless}, {SystemSkiplock, costKeyed}, {SystemRiver, costPlain}, {SystemRiver, costUnique}} {
		if _, ok := r.get(ScenarioCost, v.sys, costPhaseFigures, "variant", v.variant, "phase", phaseTotal); !ok {
			continue
		}
		for _, phase := range append(append([]string{}, costPhases...), phaseTotal) {
			p := []any{"variant", v.variant, "phase", phase}
			ratio, cpuRatio := "", ""
			if v.sys == SystemSkiplock {
				ratio = r.cell(ScenarioCost, v.sys, "wal_ratio_over_river", p...)
				cpuRatio = r.cell(ScenarioCost, v.sys, "cpu_ratio_over_river", p...)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", v.sys, v.variant, phase,
				r.cell(ScenarioCost, v.sys, costPhaseFigures, p...),
				r.cell(ScenarioCost, v.sys, "server_cpu_us_per_batch", p...),
				r.cell(ScenarioCost, v.sys, "client_cpu_us_per_batch", p...),
				r.cell(ScenarioCost, v.sys, "seconds", p...), ratio, cpuRatio)
		}
	}
	// The WAL breakdown, one line per system, variant and phase.
	type key struct{ sys, variant, phase string }
	var order []key
	parts := map[key][]string{}
	r.mu.Lock()
	for _, f := range r.Figures {
		if f.Scenario != ScenarioCost || f.Metric != costWalByRecord {
			continue
		}
		k := key{f.System, fmt.Sprint(f.Params["variant"]), fmt.Sprint(f.Params["phase"])}
		if parts[k] == nil {
			order = append(order, k)
		}
		parts[k] = append(parts[k], fmt.Sprintf("%s %s", f.Params["record"], num(f.Value)))
	}
	r.mu.Unlock()
	if len(order) > 0 {
		fmt.Fprintln(w, "\nWAL per batch by record type (pg_walinspect; B, record and full-page images)")
		for _, k := range order {
			fmt.Fprintf(w, "  %s %s, %s: %s\n", k.sys, k.variant, k.phase, strings.Join(parts[k], ", "))
		}
	}
}
