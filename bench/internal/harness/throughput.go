package harness

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/riverqueue/river"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// drainResult is one drain: how many batches were completed in how long.
type drainResult struct {
	completed int
	elapsed   time.Duration
	capped    bool   // the cap ended it before the queue was empty
	cpu       cpuUse // spent within elapsed
}

func (d drainResult) rate() float64 { return float64(d.completed) / d.elapsed.Seconds() }

// drainSkiplock runs workers runners (Concurrency 2×size, ClaimSize size,
// as the queue package's own benchmark does) with a no-op handler until n
// batches are completed or cap passes. The time includes stopping the
// runners, which acknowledges the last outcomes.
func (e *env) drainSkiplock(ctx context.Context, n, size, workers int, cap time.Duration) (drainResult, error) {
	var handled atomic.Int64
	done := make(chan struct{})
	runners := make([]*queue.Runner, workers)
	for w := range runners {
		r, err := queue.NewRunner(e.client, &queue.RunnerConfig{
			Queue: benchQueue, Concurrency: 2 * size, ClaimSize: size, PollInterval: 100 * time.Millisecond,
			Handler: func(context.Context, *batch.Batch) error {
				if handled.Add(1) == int64(n) {
					close(done)
				}
				return nil
			},
		})
		if err != nil {
			return drainResult{}, err
		}
		runners[w] = r
	}
	stopAll := func() (completed int64, err error) {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		for _, r := range runners {
			if serr := r.Stop(sctx); serr != nil && err == nil {
				err = serr
			}
			completed += r.Stats().Completed
		}
		return completed, err
	}
	c0, t0 := e.cpuNow(), time.Now()
	for _, r := range runners {
		if err := r.Start(ctx); err != nil {
			_, _ = stopAll()
			return drainResult{}, err
		}
	}
	timer := time.NewTimer(cap)
	defer timer.Stop()
	select {
	case <-done:
		completed, err := stopAll()
		elapsed, cpu := time.Since(t0), e.cpuNow().sub(c0)
		if err == nil && completed != int64(n) {
			err = fmt.Errorf("skiplock drain: %d completions for %d batches", completed, n)
		}
		return drainResult{completed: int(completed), elapsed: elapsed, cpu: cpu}, err
	case <-timer.C:
		var completed int64
		for _, r := range runners {
			completed += r.Stats().Completed
		}
		elapsed, cpu := time.Since(t0), e.cpuNow().sub(c0)
		_, err := stopAll()
		return drainResult{completed: int(completed), elapsed: elapsed, capped: true, cpu: cpu}, err
	case <-ctx.Done():
		_, _ = stopAll()
		return drainResult{}, ctx.Err()
	}
}

// River configurations for throughput. River has no claim size of its
// own: a client's fetch locks up to its free worker slots (MaxWorkers minus
// jobs still running). Both configurations give River the same handler
// slots as skiplock's runners (2×claim size per worker) and the fetch
// tuning of River's own benchmark; the harness measures both and reports
// River's best.
const (
	// riverPerWorker runs one client per worker, MaxWorkers = 2×claim
	// size each: the same shape as skiplock's runners, fetches bounded the
	// same way.
	riverPerWorker = "client per worker"
	// riverOneClient runs one client with MaxWorkers = 2×claim size×
	// workers (what River's own benchmark does, with 2,000): one fetch loop
	// and one batch completer, fetches of up to all free slots.
	riverOneClient = "one client"
)

// drainRiver runs River with a no-op worker until n jobs are completed (as
// River's completion events report: the completion is in the database) or
// cap passes. Stopping the clients is not timed.
func (e *env) drainRiver(ctx context.Context, config string, n, size, workers int, cap time.Duration) (drainResult, error) {
	var completed atomic.Int64
	done := make(chan struct{})
	nClients, perClient := workers, 2*size
	if config == riverOneClient {
		nClients, perClient = 1, 2*size*workers
	}
	clients := make([]*river.Client[pgxTx], nClients)
	for w := range clients {
		c, err := e.newRiverClient(perClient, riverFast, func(context.Context, *river.Job[riverArgs]) error { return nil })
		if err != nil {
			return drainResult{}, err
		}
		clients[w] = c
	}
	var cancels []func()
	counted := make(chan struct{})
	var pending atomic.Int64
	pending.Store(int64(nClients))
	for _, c := range clients {
		events, cancel := c.SubscribeConfig(&river.SubscribeConfig{ChanSize: n + 1000, Kinds: []river.EventKind{river.EventKindJobCompleted}})
		cancels = append(cancels, cancel)
		go func() {
			defer func() {
				if pending.Add(-1) == 0 {
					close(counted)
				}
			}()
			for ev := range events {
				if ev == nil {
					return
				}
				if completed.Add(1) == int64(n) {
					close(done)
				}
			}
		}()
	}
	stopAll := func() error {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		var first error
		for _, c := range clients {
			if err := c.Stop(sctx); err != nil && first == nil {
				first = err
			}
		}
		for _, cancel := range cancels {
			cancel()
		}
		<-counted
		return first
	}
	c0, t0 := e.cpuNow(), time.Now()
	for _, c := range clients {
		if err := c.Start(ctx); err != nil {
			_ = stopAll()
			return drainResult{}, err
		}
	}
	timer := time.NewTimer(cap)
	defer timer.Stop()
	select {
	case <-done:
		elapsed, cpu := time.Since(t0), e.cpuNow().sub(c0)
		return drainResult{completed: n, elapsed: elapsed, cpu: cpu}, stopAll()
	case <-timer.C:
		got := completed.Load()
		elapsed, cpu := time.Since(t0), e.cpuNow().sub(c0)
		return drainResult{completed: int(got), elapsed: elapsed, capped: true, cpu: cpu}, stopAll()
	case <-ctx.Done():
		_ = stopAll()
		return drainResult{}, ctx.Err()
	}
}

// variant is one system in one configuration.
type variant struct {
	system string
	config string // River's configuration; "" for skiplock
}

func (v variant) String() string {
	if v.config == "" {
		return v.system
	}
	return v.system + " (" + v.config + ")"
}

// runThroughput measures claim+complete for every claim size and worker
// count, interleaving the systems (their order alternates between
// repetitions) and running the pgbench ceiling in the same repetition.
func runThroughput(ctx context.Context, cfg *Config, e *env, rep *Report, prog *progress, systems []string, ceiling bool) error {
	var variants []variant
	for _, sys := range systems {
		if sys == SystemRiver {
			variants = append(variants, variant{SystemRiver, riverOneClient}, variant{SystemRiver, riverPerWorker})
		} else {
			variants = append(variants, variant{system: sys})
		}
	}
	type key struct {
		v             variant
		size, workers int
	}
	rates := map[key][]float64{}
	cpuClient, cpuServer := map[key][]float64{}, map[key][]float64{}
	var ceil = map[int][]float64{}
	ceilClient, ceilServer := map[int][]float64{}, map[int][]float64{}
	cappedAny := map[string]bool{}
	for _, size := range cfg.ClaimSizes {
		n := cfg.DrainRows[size]
		for r := 0; r < cfg.Reps; r++ {
			order := slices.Clone(variants)
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, w := range cfg.Workers {
				for _, v := range order {
					if err := e.prefill(ctx, v.system, n); err != nil {
						return err
					}
					var d drainResult
					var err error
					if v.system == SystemSkiplock {
						d, err = e.drainSkiplock(ctx, n, size, w, cfg.DrainCap)
					} else {
						d, err = e.drainRiver(ctx, v.config, n, size, w, cfg.DrainCap)
					}
					if err != nil {
						return fmt.Errorf("%s claim=%d workers=%d: %w", v, size, w, err)
					}
					if d.capped {
						cappedAny[v.String()] = true
					}
					k := key{v, size, w}
					rates[k] = append(rates[k], d.rate())
					cc, cs := d.cpu.perRow(d.completed)
					cpuClient[k] = append(cpuClient[k], cc)
					cpuServer[k] = append(cpuServer[k], cs)
					prog.step("throughput %-28s claim=%-3d workers=%-2d rep %d/%d: %8.0f batches/s (%d in %s%s)",
						v, size, w, r+1, cfg.Reps, d.rate(), d.completed, d.elapsed.Round(time.Millisecond), cappedMark(d.capped))
				}
			}
			if ceiling {
				if err := e.prefill(ctx, SystemPgbench, n); err != nil {
					return err
				}
				res, err := e.pgbench(ctx, size, n, cfg.PgbenchClients)
				if err != nil {
					return fmt.Errorf("pgbench claim=%d: %w", size, err)
				}
				ceil[size] = append(ceil[size], res.rate)
				cc, cs := res.cpu.perRow(res.done)
				ceilClient[size] = append(ceilClient[size], cc)
				ceilServer[size] = append(ceilServer[size], cs)
				prog.step("throughput %-28s claim=%-3d clients=%d  rep %d/%d: %8.0f batches/s%s",
					SystemPgbench, size, cfg.PgbenchClients, r+1, cfg.Reps, res.rate, leftMark(res.left))
			}
		}
	}
	for _, size := range cfg.ClaimSizes {
		type best struct {
			rate    float64
			workers int
			config  string
		}
		bests := map[string]*best{}
		for _, v := range variants {
			if bests[v.system] == nil {
				bests[v.system] = &best{}
			}
			b := bests[v.system]
			for _, w := range cfg.Workers {
				m := median(rates[key{v, size, w}])
				params := []any{"claim_size", size, "workers", w, "reps", cfg.Reps}
				if v.config != "" {
					params = append(params, "config", v.config)
				}
				rep.add(ScenarioThroughput, v.system, "batches_per_s", m, "batches/s", params...)
				k := key{v, size, w}
				rep.add(ScenarioThroughput, v.system, "client_cpu_us_per_batch", median(cpuClient[k]), "µs", params...)
				if cs := median(cpuServer[k]); cs >= 0 {
					rep.add(ScenarioThroughput, v.system, "server_cpu_us_per_batch", cs, "µs", params...)
				}
				if m > b.rate {
					*b = best{m, w, v.config}
				}
			}
		}
		for _, sys := range systems {
			b := bests[sys]
			params := []any{"claim_size", size, "workers", b.workers}
			if b.config != "" {
				params = append(params, "config", b.config)
			}
			rep.add(ScenarioThroughput, sys, "best_batches_per_s", b.rate, "batches/s", params...)
		}
		if ceiling {
			params := []any{"claim_size", size, "clients", cfg.PgbenchClients, "reps", cfg.Reps}
			rep.add(ScenarioThroughput, SystemPgbench, "best_batches_per_s", median(ceil[size]), "batches/s", params...)
			rep.add(ScenarioThroughput, SystemPgbench, "client_cpu_us_per_batch", median(ceilClient[size]), "µs", params...)
			if cs := median(ceilServer[size]); cs >= 0 {
				rep.add(ScenarioThroughput, SystemPgbench, "server_cpu_us_per_batch", cs, "µs", params...)
			}
		}
	}
	for v := range cappedAny {
		rep.note("throughput: some %s drains hit the %s cap before the queue was empty; their rate is what was completed within the cap", v, cfg.DrainCap)
	}
	return nil
}

func cappedMark(c bool) string {
	if c {
		return ", capped"
	}
	return ""
}

func leftMark(left int) string {
	if left > 0 {
		return fmt.Sprintf(" (%d rows left)", left)
	}
	return ""
}
