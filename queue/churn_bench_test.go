package queue_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// BenchmarkSustainedChurn runs producers and runners together for a fixed
// time (SKIPLOCK_CHURN_DURATION, default 30s) with the backlog held near a
// target (with SKIPLOCK_CHURN_SNAPSHOT set, while a REPEATABLE READ
// transaction holds one snapshot all along), and reports completed
// batches/s in the first and the last third
// of the run, their ratio (a hot table that collects dead tuples at the head
// of the claim index shows up as a ratio well below 1), and the hot table's
// size and dead tuples at the end.
func BenchmarkSustainedChurn(b *testing.B) {
	d := 30 * time.Second
	if s := os.Getenv("SKIPLOCK_CHURN_DURATION"); s != "" {
		var err error
		d, err = time.ParseDuration(s)
		require.NoError(b, err)
	}
	const (
		producers = 2
		workers   = 4
		backlog   = 20000
		perCall   = 1000
	)
	e := newBenchEnv(b)
	for i := 0; i < b.N; i++ {
		e.prefill("bench", backlog)
		if os.Getenv("SKIPLOCK_CHURN_SNAPSHOT") != "" {
			// What a pg_dump or a long analytics query does: one snapshot,
			// held for the whole run, keeps every dead row visible.
			e.holdSnapshot(context.Background())
		}
		var completed atomic.Int64
		runners := make([]*queue.Runner, workers)
		for w := range runners {
			r, err := queue.NewRunner(e.client, &queue.RunnerConfig{
				Queue: "bench", Concurrency: 100, ClaimSize: 100, PollInterval: 100 * time.Millisecond,
				Handler: func(ctx context.Context, bt *batch.Batch) error {
					completed.Add(1)
					return nil
				},
			})
			require.NoError(b, err)
			runners[w] = r
		}
		ctx, cancel := context.WithTimeout(context.Background(), d)
		var enqueued atomic.Int64
		var wg sync.WaitGroup
		for p := 0; p < producers; p++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ps := make([]queue.EnqueueParams, perCall)
				for j := range ps {
					ps[j] = queue.EnqueueParams{Queue: "bench", Meta: batch.Meta{URI: fmt.Sprint("s3://churn/", p, "/", j), EventCount: 100}}
				}
				for ctx.Err() == nil {
					// Hold the backlog near its target: enqueue only when below.
					if enqueued.Load()+backlog-completed.Load() > backlog {
						select {
						case <-ctx.Done():
						case <-time.After(time.Millisecond):
						}
						continue
					}
					if _, err := e.client.EnqueueMany(ctx, ps); err == nil {
						enqueued.Add(perCall)
					}
				}
			}()
		}
		scans0, read0 := e.claimIndexReads()
		for _, r := range runners {
			require.NoError(b, r.Start(context.Background()))
		}
		third := d / 3
		t0 := time.Now()
		<-time.After(third)
		first := completed.Load()
		<-time.After(third)
		mid := completed.Load()
		<-ctx.Done()
		last := completed.Load() - mid
		elapsed := time.Since(t0)
		cancel()
		wg.Wait()
		for _, r := range runners {
			require.NoError(b, r.Stop(context.Background()))
		}
		scans1, read1 := e.claimIndexReads()
		var size, idxSize, dead, live int64
		require.NoError(b, e.pool.QueryRow(context.Background(), `
			SELECT pg_relation_size(c.oid), pg_relation_size(i.oid), coalesce(s.n_dead_tup, 0), coalesce(s.n_live_tup, 0)
			FROM pg_class c
			JOIN pg_namespace n ON n.oid = c.relnamespace
			JOIN pg_class i ON i.relname = 'batch_claim_idx' AND i.relnamespace = n.oid
			LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
			WHERE n.nspname = $1 AND c.relname = 'batch'`, e.schema).Scan(&size, &idxSize, &dead, &live))
		rate1 := float64(first) / third.Seconds()
		rate3 := float64(last) / (elapsed - 2*third).Seconds()
		b.ReportMetric(float64(completed.Load())/elapsed.Seconds(), "batches/s")
		b.ReportMetric(rate1, "first-third/s")
		b.ReportMetric(rate3, "last-third/s")
		b.ReportMetric(rate3/rate1, "last/first")
		b.ReportMetric(float64(size)/(1<<20), "table-MiB")
		b.ReportMetric(float64(idxSize)/(1<<20), "claim-idx-MiB")
		b.ReportMetric(float64(dead), "dead-tuples")
		if scans1 > scans0 {
			b.ReportMetric(float64(read1-read0)/float64(scans1-scans0), "claim-idx-entries/scan")
		}
		b.ReportMetric(0, "ns/op")
	}
}

// claimIndexReads returns the scans of the claim index and the entries they
// read (dead ones included) as the statistics system has them; backends
// report within a second or so, so only differences over a longer run mean
// much.
func (e *env) claimIndexReads() (scans, read int64) {
	e.t.Helper()
	require.NoError(e.t, e.pool.QueryRow(context.Background(), `
		SELECT coalesce(sum(idx_scan), 0)::int8, coalesce(sum(idx_tup_read), 0)::int8 FROM pg_stat_user_indexes
		WHERE schemaname = $1 AND indexrelname = 'batch_claim_idx'`, e.schema).Scan(&scans, &read))
	return scans, read
}
