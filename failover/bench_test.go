package failover_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/benchsql"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

// BenchmarkOverhead drains the same claim+complete workload (claim size
// 100, four runners, no-op handler) through a plain pgxpool and through the
// failover pool on one server (fsync on), alternating the two in each op so
// both see the same machine, and reports both rates and their ratio.
//
//	go test ./failover -run '^$' -bench Overhead -benchtime 5x -count 3
func BenchmarkOverhead(b *testing.B) {
	srv := pgtest.NewPrimary(b, &pgtest.Options{Fsync: true, Settings: map[string]string{"shared_buffers": "256MB", "max_wal_size": "4GB"}})
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(srv.ConnString("postgres"))
	require.NoError(b, err)
	cfg.MaxConns = 16
	plain, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(b, err)
	defer plain.Close()
	fp, err := failover.New(ctx, &failover.Config{PoolConfig: cfg.Copy()})
	require.NoError(b, err)
	defer fp.Close()
	m, err := migrations.New(plain, &migrations.Config{Schema: testSchema})
	require.NoError(b, err)
	_, err = m.Up(ctx)
	require.NoError(b, err)

	const n, size, workers = 100000, 100, 4
	drain := func(db queue.DB) time.Duration {
		client, err := queue.New(db, &queue.Config{Schema: testSchema})
		require.NoError(b, err)
		defer client.Close()
		_, err = plain.Exec(ctx, "TRUNCATE skiplock.batch, skiplock.batch_done")
		require.NoError(b, err)
		_, err = plain.Exec(ctx, benchsql.Prefill(testSchema), "bench", n)
		require.NoError(b, err)
		_, err = plain.Exec(ctx, "VACUUM ANALYZE skiplock.batch", pgx.QueryExecModeSimpleProtocol)
		require.NoError(b, err)
		var handled atomic.Int64
		done := make(chan struct{})
		var runners []*queue.Runner
		for w := 0; w < workers; w++ {
			r, err := queue.NewRunner(client, &queue.RunnerConfig{Queue: "bench", Concurrency: 2 * size, ClaimSize: size,
				Handler: func(context.Context, *batch.Batch) error {
					if handled.Add(1) == n {
						close(done)
					}
					return nil
				}})
			require.NoError(b, err)
			runners = append(runners, r)
		}
		t0 := time.Now()
		for _, r := range runners {
			require.NoError(b, r.Start(ctx))
		}
		<-done
		for _, r := range runners {
			require.NoError(b, r.Stop(ctx))
		}
		return time.Since(t0)
	}
	var tPlain, tFailover time.Duration
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			tPlain += drain(plain)
			tFailover += drain(fp)
		} else {
			tFailover += drain(fp)
			tPlain += drain(plain)
		}
	}
	plainRate := float64(n*b.N) / tPlain.Seconds()
	failoverRate := float64(n*b.N) / tFailover.Seconds()
	b.ReportMetric(plainRate, "plain-batches/s")
	b.ReportMetric(failoverRate, "failover-batches/s")
	b.ReportMetric(failoverRate/plainRate, "failover/plain")
	b.ReportMetric(0, "ns/op")
}
