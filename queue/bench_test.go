package queue_test

// Benchmarks against a dedicated PostgreSQL started with fsync on (or the
// server in SKIPLOCK_BENCH_DATABASE_URL). Each benchmark op processes a
// fixed number of batches and reports rows/s or batches/s; run several
// counts and compare medians, e.g.
//
//	go test ./queue -run '^$' -bench . -benchtime 3x -count 3 | tee bench.txt
//
// BenchmarkPgbenchCeiling runs the same claim+complete cycle as a pgbench
// custom script on the same server: the database's own ceiling for it.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/internal/benchsql"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

var bench struct {
	once sync.Once
	srv  *pgtest.Server
	url  string
	err  error
}

// benchURL returns the benchmark server, starting it on first use.
func benchURL(b *testing.B) string {
	b.Helper()
	bench.once.Do(func() {
		if url := os.Getenv("SKIPLOCK_BENCH_DATABASE_URL"); url != "" {
			bench.url = url
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		bench.srv, bench.err = pgtest.StartPrimary(ctx, &pgtest.Options{
			Fsync: true,
			Settings: map[string]string{
				"shared_buffers": "256MB",
				"max_wal_size":   "4GB",
			},
		})
		if bench.err == nil {
			bench.url = bench.srv.ConnString("postgres")
		}
	})
	require.NoError(b, bench.err)
	return bench.url
}

func stopBenchServer() {
	if bench.srv != nil {
		_ = bench.srv.Close()
	}
}

func newBenchEnv(b *testing.B) *env {
	b.Helper()
	url := benchURL(b)
	schema := pgtest.NewSchema(b, url)
	pool := newPool(b, url, 40)
	m, err := migrations.New(pool, &migrations.Config{Schema: schema})
	require.NoError(b, err)
	_, err = m.Up(context.Background())
	require.NoError(b, err)
	return &env{t: b, url: url, schema: schema, pool: pool, client: newClient(b, pool, schema, nil)}
}

// prefill inserts n available batches directly and vacuums, so every
// measured run starts from the same clean table.
func (e *env) prefill(queueName string, n int) {
	e.t.Helper()
	e.exec("TRUNCATE " + e.q("batch") + ", " + e.q("batch_done"))
	e.exec(benchsql.Prefill(e.schema), queueName, n)
	e.exec("VACUUM ANALYZE " + e.q("batch"))
	e.exec("VACUUM ANALYZE " + e.q("batch_done"))
}

func BenchmarkEnqueueMany(b *testing.B) {
	e := newBenchEnv(b)
	ctx := context.Background()
	const rows, perCall = 50000, 5000
	ps := make([]queue.EnqueueParams, perCall)
	for i := range ps {
		ps[i] = queue.EnqueueParams{Queue: "bench", Meta: batch.Meta{
			URI: fmt.Sprintf("s3://bench/%08d.ndjson", i), EventCount: 100, ByteSize: 4096,
		}}
	}
	for _, producers := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("producers=%d", producers), func(b *testing.B) {
			var elapsed time.Duration
			for i := 0; i < b.N; i++ {
				e.exec("TRUNCATE " + e.q("batch"))
				t0 := time.Now()
				var wg sync.WaitGroup
				errs := make(chan error, producers)
				for p := 0; p < producers; p++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for n := 0; n < rows/producers/perCall; n++ {
							if _, err := e.client.EnqueueMany(ctx, ps); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				elapsed += time.Since(t0)
				close(errs)
				require.NoError(b, <-errs)
			}
			b.ReportMetric(float64(rows*b.N)/elapsed.Seconds(), "rows/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// claimWork is how many batches one op drains for a claim size.
func claimWork(size int) int {
	switch {
	case size >= 100:
		return 100000
	case size >= 10:
		return 40000
	}
	return 10000
}

func BenchmarkClaimComplete(b *testing.B) {
	e := newBenchEnv(b)
	for _, size := range []int{1, 10, 100} {
		for _, workers := range []int{1, 2, 4, 8} {
			b.Run(fmt.Sprintf("claim=%d/workers=%d", size, workers), func(b *testing.B) {
				n := claimWork(size)
				var elapsed time.Duration
				for i := 0; i < b.N; i++ {
					e.prefill("bench", n)
					elapsed += drain(b, e, n, size, workers)
				}
				b.ReportMetric(float64(n*b.N)/elapsed.Seconds(), "batches/s")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

// drain runs workers runners with a no-op handler until n batches are
// completed, and returns how long that took.
func drain(b *testing.B, e *env, n, size, workers int) time.Duration {
	return drainClient(b, e.client, n, size, workers, nil, nil)
}

var tpsLine = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// BenchmarkPgbenchCeiling runs pgbenchScript with 8 clients on the same
// server and reports rows/s (transactions of the claim+complete pair times
// the claim size).
func BenchmarkPgbenchCeiling(b *testing.B) {
	e := newBenchEnv(b)
	bin := pgbenchBinary(b)
	cfg, err := pgconn.ParseConfig(e.url)
	require.NoError(b, err)
	script := filepath.Join(b.TempDir(), "cycle.sql")
	require.NoError(b, os.WriteFile(script, []byte(benchsql.Script(e.schema)), 0o644))
	const clients = 8
	for _, size := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("claim=%d/clients=%d", size, clients), func(b *testing.B) {
			n := claimWork(size)
			perClient := n / size / clients
			var rowsPerSec []float64
			for i := 0; i < b.N; i++ {
				e.prefill("bench", n)
				cmd := exec.Command(bin, "-n", "-M", "prepared", "-c", strconv.Itoa(clients), "-j", "2",
					"-t", strconv.Itoa(perClient), "-D", "size="+strconv.Itoa(size), "-D", "queue=bench", "-f", script,
					"-h", cfg.Host, "-p", strconv.Itoa(int(cfg.Port)), "-U", cfg.User, cfg.Database)
				out, err := cmd.CombinedOutput()
				require.NoError(b, err, "%s", out)
				m := tpsLine.FindSubmatch(out)
				require.NotNil(b, m, "%s", out)
				tps, err := strconv.ParseFloat(string(m[1]), 64)
				require.NoError(b, err)
				rowsPerSec = append(rowsPerSec, tps*float64(size))
				var left int
				require.NoError(b, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+e.q("batch")).Scan(&left))
				require.Zero(b, left, "pgbench must drain the table: its figure would be meaningless otherwise")
			}
			var sum float64
			for _, r := range rowsPerSec {
				sum += r
			}
			b.ReportMetric(sum/float64(len(rowsPerSec)), "batches/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func pgbenchBinary(b *testing.B) string {
	b.Helper()
	if dir, err := pgtest.BinDir(); err == nil {
		if p := filepath.Join(dir, "pgbench"); fileExists(p) {
			return p
		}
	}
	p, err := exec.LookPath("pgbench")
	require.NoError(b, err, "pgbench not found: install the PostgreSQL client/contrib package")
	return p
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
