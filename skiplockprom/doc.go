// Package skiplockprom exports skiplock's figures as Prometheus metrics.
//
// The core packages (queue, failover) do not import Prometheus; they offer
// hooks — queue.Config.OnEvent (typed lifecycle events, one per kind per
// round trip), queue.RunnerConfig.Middleware (wraps each handler call),
// failover.Config.OnEvent — and read-only figures (Client.Stats,
// Client.JournalStats, Client.EventStats, Runner.Stats, Pool.Generation,
// Pool.Writer). A Metrics plugs into all of them:
//
//	m, err := skiplockprom.New(nil)
//	fp, err := failover.New(ctx, &failover.Config{PoolConfig: pcfg, OnEvent: m.PoolEvents(nil)})
//	client, err := queue.New(fp, &queue.Config{OnEvent: m.QueueEvents(nil)})
//	runner, err := queue.NewRunner(client, &queue.RunnerConfig{
//		Queue: "clicks", Handler: deliver,
//		Middleware: []queue.MiddlewareFunc{m.Middleware},
//	})
//	m.SetPool(fp)
//	m.SetClient(client)
//	m.AddRunner(runner)
//	prometheus.MustRegister(m)
//
// The user's own hooks chain behind the collector's: m.QueueEvents(mine),
// m.PoolEvents(mine).
//
// # Metrics
//
// All names start with skiplock_ and use base units (seconds).
//
//	skiplock_queue_batches{queue,state}             gauge: available, scheduled, running, expired (⊂ running), dead
//	skiplock_queue_oldest_runnable_age_seconds{queue} gauge
//	skiplock_queue_stats_queries_total, _errors_total  the Stats queries behind the two above
//	skiplock_batches_{enqueued,claimed,completed,retried,dead_lettered,released,reclaimed}_total{queue}
//	skiplock_lease_extensions_total{queue}, skiplock_leases_lost_total{queue}
//	skiplock_reasserted_enqueues_total, skiplock_reasserted_completions_total
//	skiplock_handler_duration_seconds{queue,outcome}   histogram; outcome ok, error, aborted
//	skiplock_batch_completion_latency_seconds{queue}   histogram: created_at to accepted completion
//	skiplock_runner_slots_busy{queue}, skiplock_runner_slots{queue}
//	skiplock_pool_generation, skiplock_pool_rebuilds_total
//	skiplock_pool_writerless_seconds_total             time with no writer served, the current outage included
//	skiplock_writer_info{server} 1                     the writer now served
//	skiplock_journal_pending{kind}                     kind enqueues or completions
//	skiplock_events_dropped_total, skiplock_event_callback_panics_total
//
// Counters fed by events count what this process did since it started.
// Depth and age come from one Client.Stats query for all queues, run at
// most once per Config.StatsInterval whatever the scrape rate, and cached;
// everything else is read from memory at scrape time.
package skiplockprom
