package harness

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/riverqueue/river"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// enqueueCall is what one producer does for one call: it adds rows rows or
// fails.
type enqueueCall func(ctx context.Context, producer, call int) (rows int, err error)

const perCall = 5000 // rows per bulk call, both systems

func skiplockMeta(p, i int) batch.Meta {
	return batch.Meta{URI: fmt.Sprintf("s3://bench/%d/%08d.ndjson", p, i), EventCount: 100, ByteSize: 4096}
}

func riverJob(p, i int) riverArgs {
	return riverArgs{URI: fmt.Sprintf("s3://bench/%d/%08d.ndjson", p, i), EventCount: 100, ByteSize: 4096}
}

// runBulk runs producers goroutines making calls until rows rows are in,
// and returns rows/s and how many rows it added.
func runBulk(ctx context.Context, producers, rows int, call enqueueCall) (float64, int, error) {
	calls := rows / perCall / producers
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	t0 := time.Now()
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				if _, err := call(ctx, p, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	return float64(calls*producers*perCall) / elapsed.Seconds(), calls * producers * perCall, nil
}

// runSingle runs producers goroutines making calls for window, and returns
// rows/s and how many rows it added.
func runSingle(ctx context.Context, producers int, window time.Duration, call enqueueCall) (float64, int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var rows atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	stop := make(chan struct{})
	t0 := time.Now()
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n, err := call(ctx, p, i)
				if err != nil {
					errs <- err
					return
				}
				rows.Add(int64(n))
			}
		}()
	}
	<-time.After(window)
	close(stop)
	wg.Wait()
	elapsed := time.Since(t0)
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	return float64(rows.Load()) / elapsed.Seconds(), int(rows.Load()), nil
}

// runEnqueue measures bulk enqueue (5,000 rows per call: EnqueueMany and
// River's InsertManyFast) with each producer count, and single enqueue
// (Enqueue, River's Insert) with SingleProducers producers, interleaving the
// systems; each measurement starts from empty tables.
func runEnqueue(ctx context.Context, cfg *Config, e *env, rep *Report, prog *progress, systems []string) error {
	rc, err := e.newRiverClient(0, riverTuning{}, nil)
	if err != nil {
		return err
	}
	bulkParams := make([]queue.EnqueueParams, perCall)
	for i := range bulkParams {
		bulkParams[i] = queue.EnqueueParams{Queue: benchQueue, Meta: skiplockMeta(0, i)}
	}
	riverBulk := make([]river.InsertManyParams, perCall)
	for i := range riverBulk {
		riverBulk[i] = river.InsertManyParams{Args: riverJob(0, i), InsertOpts: &river.InsertOpts{Queue: benchQueue}}
	}
	bulk := map[string]enqueueCall{
		SystemSkiplock: func(ctx context.Context, _, _ int) (int, error) {
			res, err := e.client.EnqueueMany(ctx, bulkParams)
			return len(res), err
		},
		SystemRiver: func(ctx context.Context, _, _ int) (int, error) {
			return rc.InsertManyFast(ctx, riverBulk)
		},
	}
	single := map[string]enqueueCall{
		SystemSkiplock: func(ctx context.Context, p, i int) (int, error) {
			_, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: benchQueue, Meta: skiplockMeta(p, i)})
			return 1, err
		},
		SystemRiver: func(ctx context.Context, p, i int) (int, error) {
			_, err := rc.Insert(ctx, riverJob(p, i), &river.InsertOpts{Queue: benchQueue})
			return 1, err
		},
	}
	type key struct {
		system string
		mode   string
		prods  int
	}
	rates := map[key][]float64{}
	cpuClient, cpuServer := map[key][]float64{}, map[key][]float64{}
	measure := func(k key, f func() (float64, int, error)) error {
		if err := e.reset(ctx); err != nil {
			return err
		}
		if err := e.vacuum(ctx); err != nil {
			return err
		}
		c0 := e.cpuNow()
		r, rows, err := f()
		if err != nil {
			return fmt.Errorf("enqueue %s %s producers=%d: %w", k.system, k.mode, k.prods, err)
		}
		cc, cs := e.cpuNow().sub(c0).perRow(rows)
		rates[k] = append(rates[k], r)
		cpuClient[k] = append(cpuClient[k], cc)
		cpuServer[k] = append(cpuServer[k], cs)
		prog.step("enqueue %-8s %-6s producers=%d: %9.0f rows/s", k.system, k.mode, k.prods, r)
		return nil
	}
	for r := 0; r < cfg.Reps; r++ {
		prog.step("enqueue: repetition %d/%d", r+1, cfg.Reps)
		order := systems
		if r%2 == 1 {
			order = reversed(systems)
		}
		for _, prods := range cfg.EnqueueProducers {
			for _, sys := range order {
				if err := measure(key{sys, "bulk", prods}, func() (float64, int, error) {
					return runBulk(ctx, prods, cfg.EnqueueRows, bulk[sys])
				}); err != nil {
					return err
				}
			}
		}
		for _, sys := range order {
			if err := measure(key{sys, "single", cfg.SingleProducers}, func() (float64, int, error) {
				return runSingle(ctx, cfg.SingleProducers, cfg.SingleWindow, single[sys])
			}); err != nil {
				return err
			}
		}
	}
	cpuFigures := func(sys, mode string, k key, params ...any) {
		rep.add(ScenarioEnqueue, sys, mode+"_client_cpu_us_per_row", median(cpuClient[k]), "µs", params...)
		if cs := median(cpuServer[k]); cs >= 0 {
			rep.add(ScenarioEnqueue, sys, mode+"_server_cpu_us_per_row", cs, "µs", params...)
		}
	}
	for _, sys := range systems {
		for _, prods := range cfg.EnqueueProducers {
			k := key{sys, "bulk", prods}
			params := []any{"producers", prods, "rows_per_call", perCall, "reps", cfg.Reps}
			rep.add(ScenarioEnqueue, sys, "bulk_rows_per_s", median(rates[k]), "rows/s", params...)
			cpuFigures(sys, "bulk", k, params...)
		}
		k := key{sys, "single", cfg.SingleProducers}
		params := []any{"producers", cfg.SingleProducers, "reps", cfg.Reps}
		rep.add(ScenarioEnqueue, sys, "single_rows_per_s", median(rates[k]), "rows/s", params...)
		cpuFigures(sys, "single", k, params...)
	}
	return e.reset(ctx)
}

func reversed(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}
