package skiplockprom_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/queue"
	"github.com/skiplock/skiplock/skiplockprom"
)

// wired is a Metrics wired to a client, a runner and a failover pool on
// the shared server, registered and served over HTTP.
type wired struct {
	m      *skiplockprom.Metrics
	reg    *prometheus.Registry
	url    string
	client *queue.Client
	runner *queue.Runner
	schema string
	user   *atomic.Int64 // events the user's own hook, chained behind the collector's, received
	direct interface {
		QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	}
}

func newWired(t *testing.T, cfg *skiplockprom.Config, handler queue.HandlerFunc) *wired {
	t.Helper()
	ctx := testContext(t)
	url := pgtest.SharedURL(t)
	schema := pgtest.NewSchema(t, url)
	direct := newPool(t, url)
	migrate(t, direct, schema)
	m, err := skiplockprom.New(cfg)
	require.NoError(t, err)
	userEvents := new(atomic.Int64)
	pcfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	fp, err := failover.New(ctx, &failover.Config{PoolConfig: pcfg, OnEvent: m.PoolEvents(nil)})
	require.NoError(t, err)
	t.Cleanup(fp.Close)
	client, err := queue.New(fp, &queue.Config{Schema: schema, MaxAttempts: 1,
		OnEvent: m.QueueEvents(func(queue.Event) { userEvents.Add(1) })})
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	r, err := queue.NewRunner(client, &queue.RunnerConfig{Queue: "prom", Concurrency: 4, PollInterval: 20 * time.Millisecond,
		Middleware: []queue.MiddlewareFunc{m.Middleware}, Handler: handler})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.StopAndCancel(sctx)
	})
	m.SetPool(fp)
	m.SetClient(client)
	m.AddRunner(r)
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(m))
	return &wired{m: m, reg: reg, url: endpoint(t, reg), client: client, runner: r, schema: schema, user: userEvents, direct: direct}
}

// Every metric follows Prometheus's conventions (promlint finds nothing),
// and each one is there once its source has something to say.
func TestMetricsLint(t *testing.T) {
	t.Parallel()
	w := newWired(t, nil, func(_ context.Context, b *batch.Batch) error {
		if b.PartitionKey == "bad" {
			return errors.New("bad batch")
		}
		return nil
	})
	ctx := testContext(t)
	for i := 0; i < 5; i++ {
		key := ""
		if i == 0 {
			key = "bad"
		}
		_, err := w.client.Enqueue(ctx, queue.EnqueueParams{Queue: "prom", Meta: batch.Meta{URI: "s3://p/x", PartitionKey: key}})
		require.NoError(t, err)
	}
	pgtest.WaitFor(t, 20*time.Second, "the batches settled", func() bool {
		st := w.runner.Stats()
		return st.Completed == 4 && st.Dead == 1
	})
	pgtest.WaitFor(t, 10*time.Second, "the events counted", func() bool {
		v, _ := scrapeOnce(t, w.url).value("skiplock_batches_completed_total", "queue", "prom")
		return v == 4
	})
	require.Positive(t, w.user.Load(), "the user's own hook is chained")
	problems, err := testutil.GatherAndLint(w.reg)
	require.NoError(t, err)
	require.Empty(t, problems)

	s := scrapeOnce(t, w.url)
	for _, name := range []string{
		"skiplock_queue_batches", "skiplock_queue_oldest_runnable_age_seconds", "skiplock_queue_stats_queries_total",
		"skiplock_batches_enqueued_total", "skiplock_batches_claimed_total", "skiplock_batches_completed_total",
		"skiplock_batches_dead_lettered_total", "skiplock_handler_duration_seconds", "skiplock_batch_completion_latency_seconds",
		"skiplock_runner_slots_busy", "skiplock_runner_slots", "skiplock_pool_generation", "skiplock_pool_rebuilds_total",
		"skiplock_pool_writerless_seconds_total", "skiplock_writer_info", "skiplock_journal_pending",
		"skiplock_events_dropped_total", "skiplock_event_callback_panics_total",
	} {
		require.Contains(t, s, name)
	}
	require.Equal(t, 5.0, s.must(t, "skiplock_batches_enqueued_total", "queue", "prom"))
	require.Equal(t, 5.0, s.must(t, "skiplock_batches_claimed_total", "queue", "prom"))
	require.Equal(t, 1.0, s.must(t, "skiplock_batches_dead_lettered_total", "queue", "prom"))
	require.Equal(t, 4.0, s.must(t, "skiplock_handler_duration_seconds", "queue", "prom", "outcome", "ok"))
	require.Equal(t, 1.0, s.must(t, "skiplock_handler_duration_seconds", "queue", "prom", "outcome", "error"))
	require.Equal(t, 4.0, s.must(t, "skiplock_batch_completion_latency_seconds", "queue", "prom"))
	require.Equal(t, 4.0, s.must(t, "skiplock_runner_slots", "queue", "prom"))
	require.Equal(t, 1.0, s.must(t, "skiplock_pool_generation"))
	require.Zero(t, s.must(t, "skiplock_pool_rebuilds_total"))
	require.Zero(t, s.must(t, "skiplock_pool_writerless_seconds_total"))
	require.Zero(t, s.must(t, "skiplock_events_dropped_total"))
	require.Equal(t, 1.0, s.must(t, "skiplock_queue_batches", "queue", "prom", "state", "dead"))
}

// Depth and age come from one Stats query per StatsInterval, whatever the
// number of scrapes.
func TestStatsQueriedOncePerInterval(t *testing.T) {
	t.Parallel()
	w := newWired(t, &skiplockprom.Config{StatsInterval: time.Hour}, func(context.Context, *batch.Batch) error { return nil })
	for i := 0; i < 10; i++ {
		s := scrapeOnce(t, w.url)
		n := s.must(t, "skiplock_queue_stats_queries_total")
		if i == 0 && n == 0 {
			// The registry gathers collectors concurrently: the first
			// scrape may read the counter before its own query counts.
			continue
		}
		require.Equal(t, 1.0, n)
	}
}

// New names the field it refuses.
func TestConfigValidation(t *testing.T) {
	t.Parallel()
	for field, cfg := range map[string]*skiplockprom.Config{
		"StatsInterval":  {StatsInterval: -time.Second},
		"StatsTimeout":   {StatsTimeout: -time.Second},
		"HandlerBuckets": {HandlerBuckets: []float64{1, 1}},
		"LatencyBuckets": {LatencyBuckets: []float64{2, 1}},
	} {
		_, err := skiplockprom.New(cfg)
		var ce *skiplockprom.ConfigError
		require.ErrorAs(t, err, &ce, field)
		require.Equal(t, field, ce.Field)
	}
	m, err := skiplockprom.New(nil)
	require.NoError(t, err)
	require.NotNil(t, m)
}
