package skiplockprom_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/queue"
	"github.com/skiplock/skiplock/skiplockprom"
)

// TestMetricsThroughFailover scrapes a real HTTP endpoint while a producer
// and a runner work through a planned failover of a real primary and
// streaming replica behind a proxy (the cluster endpoint): the old writer
// turns read-only, the replica is promoted, and the endpoint moves to it
// half a second later. Afterwards the pool's rebuild counter has risen, the
// time without a writer is above zero, the writer info names the promoted
// replica, the event counters agree with what the producer and the runner
// saw, and the depth and age figures match the same SQL run by the test.
func TestMetricsThroughFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a primary and a replica")
	}
	t.Parallel()
	ctx := testContext(t)
	rg := newRig(t, ctx, 8)
	primary, replica, proxy, m, fp, client := rg.primary, rg.replica, rg.proxy, rg.m, rg.fp, rg.client
	addr, schema := rigAddr, rigSchema
	r, err := queue.NewRunner(client, &queue.RunnerConfig{
		Queue: "load", Concurrency: 8, PollInterval: 20 * time.Millisecond,
		Middleware: []queue.MiddlewareFunc{m.Middleware},
		Handler: func(ctx context.Context, _ *batch.Batch) error {
			t := time.NewTimer(2 * time.Millisecond)
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
	})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	runnerStopped := false
	defer func() {
		if !runnerStopped {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = r.StopAndCancel(sctx)
			cancel()
		}
	}()
	m.AddRunner(r)
	url := rg.url

	// Load: one producer enqueueing keyed batches until told to stop.
	var enqueued atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			opCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			res, err := client.Enqueue(opCtx, queue.EnqueueParams{Queue: "load", Meta: batch.Meta{
				URI:    "s3://load/" + strconv.FormatInt(i, 10),
				Source: batch.Source{Topic: "load", Start: i * 10, End: i*10 + 10}, EventCount: 10,
			}})
			cancel()
			if err == nil && !res.Duplicate {
				enqueued.Add(1)
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	pgtest.WaitFor(t, 20*time.Second, "work before the failover", func() bool { return r.Stats().Completed >= 200 })
	before := scrapeOnce(t, url)
	require.Equal(t, 1.0, before.must(t, "skiplock_pool_generation"))
	require.Zero(t, before.must(t, "skiplock_pool_rebuilds_total"))
	require.Zero(t, before.must(t, "skiplock_pool_writerless_seconds_total"))
	require.Equal(t, 1.0, before.must(t, "skiplock_writer_info", "server", "127.0.0.1:"+strconv.Itoa(primary.Port())))

	// Planned failover: the replica catches up, the old writer turns
	// read-only, the replica is promoted, and the endpoint follows later.
	old, promoted := newPool(t, primary.ConnString("postgres")), newPool(t, replica.ConnString("postgres"))
	var lsn string
	require.NoError(t, old.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn))
	pgtest.WaitFor(t, 30*time.Second, "the replica to catch up", func() bool {
		var ok bool
		require.NoError(t, promoted.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&ok))
		return ok
	})
	require.NoError(t, primary.DemoteReadOnly(ctx))
	require.NoError(t, replica.Promote(ctx))
	pgtest.WaitFor(t, 10*time.Second, "the pool to notice the read-only writer", func() bool {
		_, ok := fp.Writer()
		return !ok
	})
	during := scrapeOnce(t, url)
	_, hasWriter := during.value("skiplock_writer_info", "server", "127.0.0.1:"+strconv.Itoa(primary.Port()))
	require.False(t, hasWriter, "no writer info while there is no writer")
	timer := time.NewTimer(500 * time.Millisecond) // the endpoint moves late, like DNS
	<-timer.C
	proxy.SetTarget(addr(replica))

	pgtest.WaitFor(t, 30*time.Second, "a new generation on the promoted replica", func() bool {
		w, ok := fp.Writer()
		return ok && w.Port == replica.Port()
	})
	doneAtSwitch := r.Stats().Completed
	pgtest.WaitFor(t, 30*time.Second, "work after the failover", func() bool { return r.Stats().Completed >= doneAtSwitch+200 })
	after := scrapeOnce(t, url)
	require.GreaterOrEqual(t, after.must(t, "skiplock_pool_rebuilds_total"), 1.0)
	require.Equal(t, float64(fp.Generation()), after.must(t, "skiplock_pool_generation"))
	writerless := after.must(t, "skiplock_pool_writerless_seconds_total")
	require.Greater(t, writerless, 0.4, "at least the half second the endpoint took to move")
	require.Less(t, writerless, 30.0)
	require.Equal(t, 1.0, after.must(t, "skiplock_writer_info", "server", "127.0.0.1:"+strconv.Itoa(replica.Port())))
	_, stale := after.value("skiplock_writer_info", "server", "127.0.0.1:"+strconv.Itoa(primary.Port()))
	require.False(t, stale, "only the current writer is reported")
	t.Logf("after the failover: rebuilds %v, without a writer %.3fs", after.must(t, "skiplock_pool_rebuilds_total"), writerless)

	// Quiet the load, then compare every counter with its source.
	close(stop)
	wg.Wait()
	pgtest.WaitFor(t, 30*time.Second, "the backlog drained", func() bool {
		var n int
		require.NoError(t, promoted.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "batch"}.Sanitize()).Scan(&n))
		return n == 0
	})
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, r.Stop(sctx))
	runnerStopped = true
	st, js := r.Stats(), client.JournalStats()
	var s scrape
	pgtest.WaitFor(t, 10*time.Second, "the counters to catch up with the last events", func() bool {
		s = scrapeOnce(t, url)
		v, _ := s.value("skiplock_batches_completed_total", "queue", "load")
		return v == float64(st.Completed)
	})
	require.Equal(t, float64(enqueued.Load()), s.must(t, "skiplock_batches_enqueued_total", "queue", "load"))
	require.Equal(t, float64(st.Claimed), s.must(t, "skiplock_batches_claimed_total", "queue", "load"))
	require.Equal(t, float64(st.Completed), s.must(t, "skiplock_batch_completion_latency_seconds", "queue", "load"))
	requireCounter(t, s, "skiplock_batches_released_total", st.Released, "queue", "load")
	requireCounter(t, s, "skiplock_leases_lost_total", st.LeaseLost, "queue", "load")
	requireCounter(t, s, "skiplock_reasserted_enqueues_total", js.Reasserted)
	requireCounter(t, s, "skiplock_reasserted_completions_total", js.ReassertedCompletions)
	require.Zero(t, s.must(t, "skiplock_events_dropped_total"))
	t.Logf("completed %d, released %d, lease lost %d, re-asserted enqueues %d, completions %d",
		st.Completed, st.Released, st.LeaseLost, js.Reasserted, js.ReassertedCompletions)

	// Depth and age against the same SQL: some batches in every state.
	checkDepth(t, ctx, client, promoted, schema, url)
}

// rigSchema is the schema the rig migrates and its client uses.
const rigSchema = "skiplock"

// rig is a real primary and streaming replica behind a proxy (the cluster
// endpoint), a failover pool on the proxy, a client, and a Metrics wired to
// both and served over HTTP at url.
type rig struct {
	primary, replica *pgtest.Server
	proxy            *pgtest.Proxy
	m                *skiplockprom.Metrics
	fp               *failover.Pool
	client           *queue.Client
	url              string
}

func rigAddr(s *pgtest.Server) string { return net.JoinHostPort(s.Host(), strconv.Itoa(s.Port())) }

func newRig(t *testing.T, ctx context.Context, maxConns int32) *rig {
	t.Helper()
	rg := &rig{}
	rg.primary, rg.replica = pgtest.NewPair(t, nil)
	rg.proxy = pgtest.NewTestProxy(t, rigAddr(rg.primary))
	migrate(t, newPool(t, rg.primary.ConnString("postgres")), rigSchema)

	var err error
	rg.m, err = skiplockprom.New(&skiplockprom.Config{StatsInterval: 100 * time.Millisecond})
	require.NoError(t, err)
	pcfg, err := pgxpool.ParseConfig(rg.proxy.ConnString("postgres"))
	require.NoError(t, err)
	pcfg.MaxConns = maxConns
	rg.fp, err = failover.New(ctx, &failover.Config{
		PoolConfig: pcfg, ProbeInterval: 100 * time.Millisecond, RebuildBackoff: 50 * time.Millisecond,
		WriterWait: time.Second, OnEvent: rg.m.PoolEvents(nil),
	})
	require.NoError(t, err)
	t.Cleanup(rg.fp.Close)
	rg.client, err = queue.New(rg.fp, &queue.Config{Schema: rigSchema, OnEvent: rg.m.QueueEvents(nil)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = rg.client.Close() })
	rg.m.SetPool(rg.fp)
	rg.m.SetClient(rg.client)
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(rg.m))
	rg.url = endpoint(t, reg)
	return rg
}

// requireCounter checks a counter that is absent until its first event.
func requireCounter(t *testing.T, s scrape, name string, want int64, labels ...string) {
	t.Helper()
	got, ok := s.value(name, labels...)
	if want == 0 && !ok {
		return
	}
	require.Equal(t, float64(want), got, name)
}

// checkDepth puts batches in every state on the queue "depth" and checks
// the scraped depth and age against SQL run on the writer directly.
func checkDepth(t *testing.T, ctx context.Context, client *queue.Client, db *pgxpool.Pool, schema, url string) {
	t.Helper()
	enq := func(n int, p queue.EnqueueParams) {
		for i := 0; i < n; i++ {
			_, err := client.Enqueue(ctx, p)
			require.NoError(t, err)
		}
	}
	depth := queue.EnqueueParams{Queue: "depth", Meta: batch.Meta{URI: "s3://depth"}}
	enq(2, queue.EnqueueParams{Queue: "depth", Meta: batch.Meta{URI: "s3://depth/dead"}, MaxAttempts: 1})
	bs, err := client.Claim(ctx, queue.ClaimParams{Queue: "depth", Limit: 2, Lease: time.Minute, Owner: "test"})
	require.NoError(t, err)
	require.Len(t, bs, 2)
	_, err = client.Fail(ctx, queue.RefOf(&bs[0]), errors.New("dead"))
	require.NoError(t, err)
	enq(3, depth) // running, one expired soon
	bs, err = client.Claim(ctx, queue.ClaimParams{Queue: "depth", Limit: 3, Lease: queue.MinLeaseDuration, Owner: "test"})
	require.NoError(t, err)
	require.Len(t, bs, 3)
	enq(4, depth) // available
	sched := depth
	sched.Delay = time.Hour
	enq(5, sched)
	tbl := pgx.Identifier{schema, "batch"}.Sanitize()
	pgtest.WaitFor(t, 10*time.Second, "the short leases to expire", func() bool {
		var n int
		require.NoError(t, db.QueryRow(ctx, "SELECT count(*) FROM "+tbl+" WHERE queue = 'depth' AND lease_expires_at < now()").Scan(&n))
		return n == 3
	})

	var want [5]int64
	var age float64
	require.NoError(t, db.QueryRow(ctx, `SELECT
		count(*) FILTER (WHERE state = 'available' AND run_at <= now()),
		count(*) FILTER (WHERE state = 'available' AND run_at > now()),
		count(*) FILTER (WHERE state = 'running'),
		count(*) FILTER (WHERE state = 'running' AND lease_expires_at < now()),
		count(*) FILTER (WHERE state = 'dead'),
		coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE state = 'available' AND run_at <= now())), 0)::float8
		FROM `+tbl+` WHERE queue = 'depth'`).Scan(&want[0], &want[1], &want[2], &want[3], &want[4], &age))
	require.Equal(t, [5]int64{4, 5, 4, 3, 1}, want, "the SQL sees what the test made")
	measured := time.Now()

	// A scrape after the cache's interval runs a fresh query.
	var s scrape
	q0 := scrapeOnce(t, url).must(t, "skiplock_queue_stats_queries_total")
	pgtest.WaitFor(t, 10*time.Second, "a fresh stats query", func() bool {
		s = scrapeOnce(t, url)
		return s.must(t, "skiplock_queue_stats_queries_total") > q0
	})
	for i, state := range []string{"available", "scheduled", "running", "expired", "dead"} {
		require.Equal(t, float64(want[i]), s.must(t, "skiplock_queue_batches", "queue", "depth", "state", state), state)
	}
	got := s.must(t, "skiplock_queue_oldest_runnable_age_seconds", "queue", "depth")
	require.InDelta(t, age+time.Since(measured).Seconds()/2, got, time.Since(measured).Seconds()/2+0.05,
		"the age the SQL measured, plus at most the time since")
}
