package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "skiplock-worker-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

const (
	testSchema = "skiplock_worker"
	testQueue  = "clicks"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// db is a test's own server with the tables installed, and a client on it
// for enqueueing and checking.
type db struct {
	srv    *pgtest.Server
	admin  *pgxpool.Pool // as the trusted "postgres" user
	client *queue.Client
}

func newDB(t *testing.T, opts *pgtest.Options) *db {
	t.Helper()
	ctx := testContext(t)
	srv := pgtest.NewPrimary(t, opts)
	admin, err := pgxpool.New(ctx, srv.ConnString("postgres"))
	require.NoError(t, err)
	t.Cleanup(admin.Close)
	m, err := migrations.New(admin, &migrations.Config{Schema: testSchema})
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)
	client, err := queue.New(admin, &queue.Config{Schema: testSchema})
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	return &db{srv: srv, admin: admin, client: client}
}

// enqueue enqueues n batches, each a range of 500 offsets of one of four
// partitions; their idempotency keys come from the ranges. It returns the ids.
func (d *db) enqueue(t *testing.T, n int) []int64 {
	t.Helper()
	ps := make([]queue.EnqueueParams, n)
	for i := range ps {
		src := batch.Source{Topic: "clicks", Partition: int32(i % 4), Start: int64(i/4) * 500, End: int64(i/4+1) * 500}
		ps[i] = queue.EnqueueParams{Queue: testQueue, Meta: batch.Meta{
			URI:        fmt.Sprintf("s3://events/clicks/%d/%08d.ndjson.gz", src.Partition, src.Start),
			Source:     src,
			EventCount: 500,
		}}
	}
	res, err := d.client.EnqueueMany(testContext(t), ps)
	require.NoError(t, err)
	ids := make([]int64, n)
	for i, r := range res {
		require.False(t, r.Duplicate)
		ids[i] = r.ID
	}
	return ids
}

func (d *db) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, d.admin.QueryRow(testContext(t), sql, args...).Scan(&n))
	return n
}

func table(name string) string { return pgx.Identifier{testSchema, name}.Sanitize() }

// runningOf counts batches running under owner's lease.
func (d *db) runningOf(t *testing.T, owner string) int {
	return d.count(t, "SELECT count(*) FROM "+table("batch")+" WHERE state = 'running' AND lease_owner = $1", owner)
}

func randomPassword(t *testing.T) string {
	b := make([]byte, 12)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return "pw" + hex.EncodeToString(b)
}

// processed counts, per batch id, the "processed batch" log lines of ps.
func processed(ps ...*proc) map[int64]int {
	out := map[int64]int{}
	for _, p := range ps {
		for _, e := range p.logs("processed batch") {
			if id, ok := e["batch_id"].(float64); ok {
				out[int64(id)]++
			}
		}
	}
	return out
}

// TestDrainTwoWorkers runs two copies of the worker on one queue of 2,000
// batches, stops one with SIGTERM in the middle of the load, and checks
// that it exits 0 within its drain deadline leaving no lease behind, that
// the other finishes the queue, and that every batch was completed exactly
// once.
func TestDrainTwoWorkers(t *testing.T) {
	const (
		n            = 2000
		drainTimeout = 15 * time.Second
	)
	d := newDB(t, &pgtest.Options{PasswordRoles: []string{"worker"}})
	ctx := testContext(t)
	password := randomPassword(t)
	require.NoError(t, d.srv.SetRolePassword(ctx, "worker", password))
	dsn := d.srv.ConnStringAs("worker", password, "postgres")
	ids := d.enqueue(t, n)

	// Both copies migrate (nothing left to do, and safe at once); one gets
	// its settings from the environment, the other from flags.
	a := startWorker(t, "worker-a", map[string]string{
		"DATABASE_URL":              dsn,
		"SKIPLOCK_QUEUE":            testQueue,
		"SKIPLOCK_SCHEMA":           testSchema,
		"SKIPLOCK_CONCURRENCY":      "16",
		"SKIPLOCK_DRAIN_TIMEOUT":    drainTimeout.String(),
		"SKIPLOCK_HTTP_ADDR":        "127.0.0.1:0",
		"SKIPLOCK_OWNER":            "worker-a",
		"SKIPLOCK_HANDLER_DURATION": "100ms",
		"SKIPLOCK_MIGRATE":          "true",
	})
	b := startWorker(t, "worker-b", map[string]string{"DATABASE_URL": dsn},
		"-queue", testQueue, "-schema", testSchema, "-concurrency", "16", "-drain-timeout", drainTimeout.String(),
		"-http-addr", "127.0.0.1:0", "-owner", "worker-b", "-handler-duration", "100ms", "-migrate")
	waitStatus(t, a.baseURL()+"/readyz", 200, time.Minute)
	waitStatus(t, b.baseURL()+"/readyz", 200, time.Minute)

	// Mid-load: A has processed a few hundred and holds batches right now.
	pgtest.WaitFor(t, time.Minute, "worker-a to process 300 batches while holding others", func() bool {
		return len(a.logs("processed batch")) >= 300 && d.runningOf(t, "worker-a") > 0
	})
	require.Less(t, len(processed(a, b)), n-300, "the load must not be nearly over when A is stopped")
	t0 := time.Now()
	a.signal(syscall.SIGTERM)
	require.Equal(t, 0, a.wait(drainTimeout+10*time.Second), "worker-a's exit status")
	took := time.Since(t0)
	require.Less(t, took, drainTimeout, "worker-a must exit within its drain deadline")
	require.Zero(t, d.runningOf(t, "worker-a"), "worker-a left batches running under its lease")
	require.Len(t, a.logs("runner drained"), 1)
	require.Len(t, a.logs("worker stopped cleanly"), 1)
	t.Logf("worker-a exited %s after SIGTERM (its runner drained in %vs) after processing %d batches",
		took.Round(time.Millisecond), a.logs("runner drained")[0]["took"], len(a.logs("processed batch")))

	// B finishes the queue on its own.
	pgtest.WaitFor(t, 2*time.Minute, "worker-b to finish the queue", func() bool {
		return d.count(t, "SELECT count(*) FROM "+table("batch")+" WHERE queue = $1", testQueue) == 0
	})
	b.signal(syscall.SIGTERM)
	require.Equal(t, 0, b.wait(drainTimeout+10*time.Second), "worker-b's exit status")

	// Every batch completed exactly once, nothing running, nothing lost.
	var done, distinct int
	require.NoError(t, d.admin.QueryRow(ctx, "SELECT count(*), count(DISTINCT id) FROM "+table("batch_done")+" WHERE queue = $1",
		testQueue).Scan(&done, &distinct))
	require.Equal(t, n, done, "completion records")
	require.Equal(t, n, distinct, "batches completed")
	require.Zero(t, d.count(t, "SELECT count(*) FROM unnest($1::bigint[]) AS e(id) WHERE NOT EXISTS (SELECT 1 FROM "+
		table("batch_done")+" d WHERE d.id = e.id)", ids), "enqueued batches without a completion")
	require.Zero(t, d.count(t, "SELECT count(*) FROM "+table("batch")), "batches left in the hot table (running, queued or dead)")
	for _, id := range ids {
		ok, err := d.client.Completed(ctx, id)
		require.NoError(t, err)
		require.True(t, ok, "batch %d not completed", id)
	}
	// And every batch reached a handler exactly once: the drain cut no
	// handler short, so no batch ran twice.
	seen := processed(a, b)
	require.Len(t, seen, n)
	for _, id := range ids {
		require.Equal(t, 1, seen[id], "batch %d processed %d times", id, seen[id])
	}
	require.NotEmpty(t, b.logs("processed batch"))

	for _, p := range []*proc{a, b} {
		require.NotContains(t, p.output(), password, "%s printed the database password", p.name)
	}
}

// TestDrainDeadlineReleases stops a worker whose handlers outlast its drain
// deadline: it must cancel them, release their batches (claimable at once,
// attempt given back), and exit non-zero.
func TestDrainDeadlineReleases(t *testing.T) {
	d := newDB(t, nil)
	ids := d.enqueue(t, 10)
	w := startWorker(t, "worker-slow", map[string]string{"DATABASE_URL": d.srv.ConnString("postgres")},
		"-schema", testSchema, "-queue", testQueue, "-concurrency", "4", "-handler-duration", "1h",
		"-drain-timeout", "1s", "-lease", "10s", "-owner", "worker-slow", "-http-addr", "127.0.0.1:0",
		"-stats-interval", "1ms")
	waitStatus(t, w.baseURL()+"/readyz", 200, time.Minute)
	pgtest.WaitFor(t, time.Minute, "4 batches held", func() bool { return d.runningOf(t, "worker-slow") == 4 })

	// The queue's depth on /metrics; with -stats-interval 1ms (the default
	// is 15s) every scrape runs the depth query again.
	code, body := get(w.baseURL() + "/metrics")
	require.Equal(t, 200, code)
	require.Equal(t, 4.0, metricValue(t, body, `skiplock_queue_batches{queue="clicks",state="running"}`))
	require.Equal(t, 6.0, metricValue(t, body, `skiplock_queue_batches{queue="clicks",state="available"}`))
	queries := metricValue(t, body, "skiplock_queue_stats_queries_total")
	time.Sleep(5 * time.Millisecond) // outlast -stats-interval
	_, body = get(w.baseURL() + "/metrics")
	require.Equal(t, queries+1, metricValue(t, body, "skiplock_queue_stats_queries_total"), "a depth query per scrape")

	t0 := time.Now()
	w.signal(syscall.SIGTERM)
	require.Equal(t, 1, w.wait(30*time.Second), "exit status after a drain cut short")
	// The drain deadline, then at most the fence margin (lease/5) and one
	// acknowledgement round trip.
	require.Less(t, time.Since(t0), 10*time.Second)
	require.Zero(t, d.count(t, "SELECT count(*) FROM "+table("batch")+" WHERE state = 'running'"))
	require.Equal(t, len(ids), d.count(t, "SELECT count(*) FROM "+table("batch")+" WHERE state = 'available' AND attempt = 0 AND run_at <= now()"),
		"every batch available again at once, attempts given back")
	require.Zero(t, d.count(t, "SELECT count(*) FROM "+table("batch_done")))
	require.Len(t, w.logs("batch cut short; it will be released"), 4)
	require.Len(t, w.logs("drain not clean: handlers were cut short and their batches released, or outcomes were left to lease expiry"), 1)
}

// TestSecondSignalHurries: a second SIGTERM during a long drain cancels the
// running handlers at once.
func TestSecondSignalHurries(t *testing.T) {
	d := newDB(t, nil)
	d.enqueue(t, 3)
	w := startWorker(t, "worker-hurried", map[string]string{"DATABASE_URL": d.srv.ConnString("postgres")},
		"-schema", testSchema, "-queue", testQueue, "-concurrency", "3", "-handler-duration", "1h",
		"-drain-timeout", "10m", "-owner", "worker-hurried", "-http-addr", "127.0.0.1:0")
	url := w.baseURL()
	waitStatus(t, url+"/readyz", 200, time.Minute)
	pgtest.WaitFor(t, time.Minute, "3 batches held", func() bool { return d.runningOf(t, "worker-hurried") == 3 })

	w.signal(syscall.SIGTERM)
	body := waitStatus(t, url+"/readyz", 503, 10*time.Second)
	require.Contains(t, body, "draining")
	code, _ := get(url + "/healthz")
	require.Equal(t, 200, code, "live while draining")
	require.Equal(t, 3, d.runningOf(t, "worker-hurried"), "handlers keep their batches while draining")

	w.signal(syscall.SIGTERM)
	require.Equal(t, 1, w.wait(30*time.Second))
	require.Len(t, w.logs("second signal: cancelling running handlers now"), 1)
	require.Zero(t, d.count(t, "SELECT count(*) FROM "+table("batch")+" WHERE state = 'running'"))
	require.Equal(t, 3, d.count(t, "SELECT count(*) FROM "+table("batch")+" WHERE state = 'available' AND attempt = 0"))
}

// TestHTTPEndpoints checks /healthz, /readyz and /metrics, with /readyz
// following the database: 503 while the node is read-only or down, 200
// again when a writer is back, while /healthz stays 200. The metrics are
// skiplockprom's, fed by the hooks the worker hands to the pool, the client
// and the runner.
func TestHTTPEndpoints(t *testing.T) {
	d := newDB(t, nil)
	ctx := testContext(t)
	// -stats-interval 1h: the depth query runs at the first scrape only, so
	// later scrapes never wait on a database in trouble (TestDrainDeadlineReleases
	// checks a short interval).
	w := startWorker(t, "worker-http", map[string]string{"DATABASE_URL": d.srv.ConnString("postgres")},
		"-schema", testSchema, "-queue", testQueue, "-http-addr", "127.0.0.1:0", "-probe-interval", "200ms",
		"-stats-interval", "1h")
	url := w.baseURL()
	require.Equal(t, "ready\n", waitStatus(t, url+"/readyz", 200, time.Minute))
	code, body := get(url + "/healthz")
	require.Equal(t, 200, code)
	require.Equal(t, "ok\n", body)
	writerInfo := fmt.Sprintf(`skiplock_writer_info{server="%s:%d"}`, d.srv.Host(), d.srv.Port())

	d.enqueue(t, 20)
	pgtest.WaitFor(t, time.Minute, "20 batches processed", func() bool { return len(w.logs("processed batch")) == 20 })
	// The handlers log before their completions are acknowledged and the
	// events counted: wait for the last figure the completions feed.
	pgtest.WaitFor(t, 10*time.Second, "20 completions counted", func() bool {
		code, body = get(url + "/metrics")
		return code == 200 && strings.Contains(body, "\n"+`skiplock_batch_completion_latency_seconds_count{queue="clicks"} 20`+"\n")
	})
	for _, name := range []string{"skiplock_batches_claimed_total", "skiplock_batches_completed_total",
		"skiplock_handler_duration_seconds", "skiplock_batch_completion_latency_seconds", "skiplock_runner_slots",
		"skiplock_runner_slots_busy", "skiplock_pool_generation", "skiplock_pool_rebuilds_total",
		"skiplock_pool_writerless_seconds_total", "skiplock_writer_info", "skiplock_journal_pending",
		"skiplock_reasserted_completions_total", "skiplock_queue_stats_queries_total", "skiplock_events_dropped_total",
		metricFailoverEvents, "go_goroutines", "process_cpu_seconds_total"} {
		require.Contains(t, body, "\n# TYPE "+name+" ", "metric %s", name)
	}
	for _, m := range []struct {
		series string
		want   float64
	}{
		{`skiplock_batches_claimed_total{queue="clicks"}`, 20},
		{`skiplock_batches_completed_total{queue="clicks"}`, 20},
		{`skiplock_handler_duration_seconds_count{outcome="ok",queue="clicks"}`, 20},
		{`skiplock_runner_slots{queue="clicks"}`, 16},
		{`skiplock_runner_slots_busy{queue="clicks"}`, 0},
		{"skiplock_pool_generation", 1},
		{"skiplock_pool_rebuilds_total", 0},
		{"skiplock_pool_writerless_seconds_total", 0},
		{writerInfo, 1},
		{metricFailoverEvents + `{kind="generation_ready"}`, 1},
		{metricFailoverEvents + `{kind="stale_writer"}`, 0},
		{"skiplock_queue_stats_queries_total", 1},
		{"skiplock_events_dropped_total", 0},
	} {
		require.Equal(t, m.want, metricValue(t, body, m.series), m.series)
	}

	// The node turns read-only (ALTER SYSTEM SET default_transaction_read_only
	// = on and a reload): /readyz says so at once, and once the pool's probe
	// has retired the generation, because there is no verified writer.
	require.NoError(t, d.srv.DemoteReadOnly(ctx))
	waitStatus(t, url+"/readyz", 503, 15*time.Second)
	pgtest.WaitFor(t, 15*time.Second, "the pool to retire the read-only writer", func() bool {
		code, body := get(url + "/metrics")
		return code == 200 && strings.Contains(body, "\n# TYPE skiplock_pool_generation ") &&
			!strings.Contains(body, "\nskiplock_writer_info{")
	})
	code, body = get(url + "/readyz")
	require.Equal(t, 503, code)
	require.Contains(t, body, "no verified writer")
	code, _ = get(url + "/healthz")
	require.Equal(t, 200, code, "live while the database is read-only")
	// Writable again: a new generation on the same server.
	require.NoError(t, d.srv.UndoReadOnly(ctx))
	waitStatus(t, url+"/readyz", 200, 30*time.Second)
	_, body = get(url + "/metrics")
	require.Equal(t, 2.0, metricValue(t, body, "skiplock_pool_generation"))
	require.Equal(t, 1.0, metricValue(t, body, "skiplock_pool_rebuilds_total"))
	require.Equal(t, 1.0, metricValue(t, body, writerInfo))
	// The pool's events arrive on their own goroutine: wait for the second
	// generation_ready, which closes the time without a writer.
	pgtest.WaitFor(t, 10*time.Second, "the pool's events of the read-only stretch to be counted", func() bool {
		_, body = get(url + "/metrics")
		return metricValue(t, body, metricFailoverEvents+`{kind="generation_ready"}`) == 2
	})
	require.GreaterOrEqual(t, metricValue(t, body, metricFailoverEvents+`{kind="stale_writer"}`), 1.0)
	require.Greater(t, metricValue(t, body, "skiplock_pool_writerless_seconds_total"), 0.0,
		"time without a writer, from PoolEvents")

	// The server goes down, then comes back.
	require.NoError(t, d.srv.Stop(ctx))
	waitStatus(t, url+"/readyz", 503, 15*time.Second)
	code, _ = get(url + "/healthz")
	require.Equal(t, 200, code)
	require.NoError(t, d.srv.Restart(ctx))
	waitStatus(t, url+"/readyz", 200, 30*time.Second)
	_, body = get(url + "/metrics")
	require.GreaterOrEqual(t, metricValue(t, body, "skiplock_pool_generation"), 3.0, "a new generation on the restarted server")
	require.Equal(t, 1.0, metricValue(t, body, writerInfo))
	require.Equal(t, 16.0, metricValue(t, body, `skiplock_runner_slots{queue="clicks"}`))
	require.Equal(t, 1.0, metricValue(t, body, "skiplock_queue_stats_queries_total"), "one depth query per -stats-interval")

	// Work still flows after all that.
	d.enqueue2(t, 5)
	pgtest.WaitFor(t, time.Minute, "5 more batches processed", func() bool { return len(w.logs("processed batch")) == 25 })

	w.signal(syscall.SIGTERM)
	require.Equal(t, 0, w.wait(30*time.Second))
}

// enqueue2 enqueues n more batches, with ranges after those of enqueue.
func (d *db) enqueue2(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		_, err := d.client.Enqueue(testContext(t), queue.EnqueueParams{Queue: testQueue, Meta: batch.Meta{
			Source: batch.Source{Topic: "late", Partition: 0, Start: int64(i) * 10, End: int64(i+1) * 10}, EventCount: 10}})
		require.NoError(t, err)
	}
}

// metricValue returns the value of one series in a scrape: a metric's
// name, followed by its labels (in name order) if it has any.
func metricValue(t *testing.T, scrape, series string) float64 {
	t.Helper()
	for _, l := range strings.Split(scrape, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f
		}
	}
	t.Fatalf("series %s not in the scrape", series)
	return 0
}

// TestBadConfig: configuration errors exit non-zero with a message that
// says what to fix, and never print the password.
func TestBadConfig(t *testing.T) {
	const secret = "s3cretPW-do-not-print"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedPort := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close()) // nothing listens there any more

	cases := []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string
	}{
		{name: "no database", code: exitUsage, want: "no database: set DATABASE_URL"},
		{name: "blank database", env: map[string]string{"DATABASE_URL": "  "}, code: exitUsage, want: "no database: set DATABASE_URL"},
		{name: "malformed URL", env: map[string]string{"DATABASE_URL": "postgres://app:" + secret + "@db.example:notaport/app"},
			code: exitUsage, want: "DATABASE_URL (or -database-url) is not a valid PostgreSQL connection string"},
		{name: "malformed flag", args: []string{"-database-url", "postgres://app:" + secret + "@db:99999999/app"},
			code: exitUsage, want: "not a valid PostgreSQL connection string"},
		{name: "bad number in the environment", env: map[string]string{"DATABASE_URL": "postgres://app:" + secret + "@127.0.0.1/app", "SKIPLOCK_CONCURRENCY": "lots"},
			code: exitUsage, want: "SKIPLOCK_CONCURRENCY=lots"},
		{name: "concurrency out of range", env: map[string]string{"DATABASE_URL": "postgres://app:" + secret + "@127.0.0.1/app"}, args: []string{"-concurrency", "0"},
			code: exitUsage, want: "-concurrency (SKIPLOCK_CONCURRENCY) 0 is outside"},
		{name: "unknown flag", args: []string{"-colour", "blue"}, code: exitUsage, want: "flag provided but not defined: -colour"},
		{name: "unreachable database", env: map[string]string{"DATABASE_URL": fmt.Sprintf("postgres://app:%s@127.0.0.1:%d/app?sslmode=disable", secret, closedPort)},
			args: []string{"-start-timeout", "2s", "-http-addr", ""}, code: exitFailure, want: "no writer reachable through the database endpoint"},
		{name: "help", args: []string{"-h"}, code: exitOK, want: "-drain-timeout (SKIPLOCK_DRAIN_TIMEOUT)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := runWorker(t, tc.env, tc.args...)
			require.Equal(t, tc.code, code, out)
			require.Contains(t, out, tc.want)
			require.NotContains(t, out, secret)
		})
	}
}
