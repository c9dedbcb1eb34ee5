package harness

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// Soak shape: producers hold the backlog near soakBacklog while the
// runners work it off at full speed.
const (
	soakProducers = 2
	soakWorkers   = 4
	soakClaimSize = 100
	soakBacklog   = 20000
	soakPerCall   = 1000
)

// tableState is the hot table's size at one moment.
type tableState struct {
	tableBytes, indexBytes, dead, live int64
	vacuums, autovacuums               int64 // since the table was created
}

func (e *env) hotTableState(ctx context.Context) (tableState, error) {
	var s tableState
	err := e.pool.QueryRow(ctx, `
SELECT pg_relation_size(c.oid), pg_relation_size(i.oid), coalesce(pg_stat_get_dead_tuples(c.oid), 0), coalesce(pg_stat_get_live_tuples(c.oid), 0),
    coalesce(pg_stat_get_vacuum_count(c.oid), 0), coalesce(pg_stat_get_autovacuum_count(c.oid), 0)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class i ON i.relname = 'batch_claim_idx' AND i.relnamespace = n.oid
WHERE n.nspname = $1 AND c.relname = 'batch'`, skiplockSchema).Scan(&s.tableBytes, &s.indexBytes, &s.dead, &s.live, &s.vacuums, &s.autovacuums)
	return s, err
}

// runSoak runs producers and runners together for SoakDuration and
// reports throughput per window and the hot table's size and dead tuples.
func runSoak(ctx context.Context, cfg *Config, e *env, rep *Report, prog *progress) error {
	if err := e.prefill(ctx, SystemSkiplock, soakBacklog); err != nil {
		return err
	}
	st0, err := e.hotTableState(ctx)
	if err != nil {
		return err
	}
	var completed, enqueued atomic.Int64
	runners := make([]*queue.Runner, soakWorkers)
	for w := range runners {
		r, err := queue.NewRunner(e.client, &queue.RunnerConfig{
			Queue: benchQueue, Concurrency: 2 * soakClaimSize, ClaimSize: soakClaimSize, PollInterval: 100 * time.Millisecond,
			Handler: func(context.Context, *batch.Batch) error {
				completed.Add(1)
				return nil
			},
		})
		if err != nil {
			return err
		}
		runners[w] = r
	}
	pctx, stopProducers := context.WithCancel(ctx)
	defer stopProducers()
	var wg sync.WaitGroup
	var prodErr atomic.Value
	for p := range soakProducers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ps := make([]queue.EnqueueParams, soakPerCall)
			for i := 0; pctx.Err() == nil; i++ {
				if enqueued.Load()+soakBacklog-completed.Load() > soakBacklog {
					select { // backlog full: wait for the runners
					case <-pctx.Done():
					case <-time.After(time.Millisecond):
					}
					continue
				}
				for j := range ps {
					ps[j] = queue.EnqueueParams{Queue: benchQueue, Meta: skiplockMeta(p, i*soakPerCall+j)}
				}
				if _, err := e.client.EnqueueMany(pctx, ps); err != nil {
					if pctx.Err() == nil {
						prodErr.CompareAndSwap(nil, err)
					}
					continue
				}
				enqueued.Add(soakPerCall)
			}
		}()
	}
	t0 := time.Now()
	for _, r := range runners {
		if err := r.Start(ctx); err != nil {
			return err
		}
	}
	tick := time.NewTicker(cfg.SoakWindow)
	var rates []float64
	last, lastAt := int64(0), t0
	for i := 1; time.Since(t0) < cfg.SoakDuration-cfg.SoakWindow/2; i++ {
		select {
		case <-ctx.Done():
			tick.Stop()
			return ctx.Err()
		case <-tick.C:
		}
		now, at := completed.Load(), time.Now()
		rate := float64(now-last) / at.Sub(lastAt).Seconds()
		last, lastAt = now, at
		rates = append(rates, rate)
		st, err := e.hotTableState(ctx)
		if err != nil {
			return err
		}
		end := at.Sub(t0).Seconds()
		rep.add(ScenarioSoak, SystemSkiplock, "batches_per_s", rate, "batches/s", "window_end_s", round1(end))
		rep.add(ScenarioSoak, SystemSkiplock, "table_bytes", float64(st.tableBytes), "bytes", "window_end_s", round1(end))
		rep.add(ScenarioSoak, SystemSkiplock, "dead_tuples", float64(st.dead), "tuples", "window_end_s", round1(end))
		prog.step("soak %5.1fs: %8.0f batches/s, table %s, claim index %s, %d dead / %d live tuples, %d vacuums",
			end, rate, mib(st.tableBytes), mib(st.indexBytes), st.dead, st.live, st.vacuums+st.autovacuums-st0.vacuums-st0.autovacuums)
	}
	tick.Stop()
	elapsed := time.Since(t0)
	stopProducers()
	wg.Wait()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	for _, r := range runners {
		if err := r.Stop(sctx); err != nil {
			return err
		}
	}
	if err, _ := prodErr.Load().(error); err != nil {
		return fmt.Errorf("soak producer: %w", err)
	}
	st, err := e.hotTableState(ctx)
	if err != nil {
		return err
	}
	params := []any{"duration_s", round1(elapsed.Seconds()), "producers", soakProducers, "workers", soakWorkers, "claim_size", soakClaimSize, "backlog", soakBacklog}
	rep.add(ScenarioSoak, SystemSkiplock, "mean_batches_per_s", float64(completed.Load())/elapsed.Seconds(), "batches/s", params...)
	if len(rates) > 0 {
		rep.add(ScenarioSoak, SystemSkiplock, "first_window_batches_per_s", rates[0], "batches/s", params...)
		rep.add(ScenarioSoak, SystemSkiplock, "last_window_batches_per_s", rates[len(rates)-1], "batches/s", params...)
		rep.add(ScenarioSoak, SystemSkiplock, "last_over_first", ratio(rates[len(rates)-1], rates[0]), "x", params...)
	}
	rep.add(ScenarioSoak, SystemSkiplock, "end_table_bytes", float64(st.tableBytes), "bytes", params...)
	rep.add(ScenarioSoak, SystemSkiplock, "end_claim_index_bytes", float64(st.indexBytes), "bytes", params...)
	rep.add(ScenarioSoak, SystemSkiplock, "end_dead_tuples", float64(st.dead), "tuples", params...)
	rep.add(ScenarioSoak, SystemSkiplock, "end_live_tuples", float64(st.live), "tuples", params...)
	rep.add(ScenarioSoak, SystemSkiplock, "vacuums", float64(st.vacuums-st0.vacuums), "runs", params...)
	rep.add(ScenarioSoak, SystemSkiplock, "autovacuums", float64(st.autovacuums-st0.autovacuums), "runs", params...)
	prog.step("soak done: %d completed, %d enqueued in %s; table %s, claim index %s, %d dead tuples",
		completed.Load(), enqueued.Load(), elapsed.Round(time.Millisecond), mib(st.tableBytes), mib(st.indexBytes), st.dead)
	return e.reset(ctx)
}

func round1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
