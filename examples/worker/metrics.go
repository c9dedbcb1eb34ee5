package main

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/queue"
)

// This file is the worker's whole Prometheus wiring: swap metricsHandler
// for another (a fuller skiplock collector package, your own registry) and
// nothing else changes.

// failoverEvents counts the pool's events by kind. Its record method is the
// pool's OnEvent; it never blocks.
type failoverEvents struct {
	counts [failover.EventNoWriter + 1]atomic.Int64
}

func (f *failoverEvents) record(e failover.Event) {
	if e.Kind > 0 && int(e.Kind) < len(f.counts) {
		f.counts[e.Kind].Add(1)
	}
}

// metricsHandler serves /metrics: Go runtime and process metrics plus the
// runner's, the client's journal's and the pool's figures, read at every
// scrape (reading them never touches the database).
func metricsHandler(queueName string, concurrency int, runner *queue.Runner, client *queue.Client, pool *failover.Pool, events *failoverEvents) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newWorkerCollector(queueName, concurrency, runner, client, pool, events),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// workerCollector turns Runner.Stats, Client.JournalStats and the pool's
// state into metrics at scrape time.
type workerCollector struct {
	concurrency int
	runner      *queue.Runner
	client      *queue.Client
	pool        *failover.Pool
	events      *failoverEvents

	batches, handlerTrouble, roundTripErrors, reclaimed *prometheus.Desc
	running, slots, stuck                               *prometheus.Desc
	journalEntries, journalPending, journalReasserted   *prometheus.Desc
	generation, writerVerified, failoverEventsTotal     *prometheus.Desc
}

// The worker's metric names.
const (
	metricBatches           = "skiplock_runner_batches_total"
	metricHandlerTrouble    = "skiplock_runner_handler_trouble_total"
	metricRoundTripErrors   = "skiplock_runner_errors_total"
	metricReclaimed         = "skiplock_runner_reclaimed_total"
	metricRunning           = "skiplock_runner_running_handlers"
	metricSlots             = "skiplock_runner_handler_slots"
	metricStuck             = "skiplock_runner_stuck_handlers"
	metricJournalEntries    = "skiplock_journal_entries"
	metricJournalPending    = "skiplock_journal_pending"
	metricJournalReasserted = "skiplock_journal_reasserted_total"
	metricGeneration        = "skiplock_failover_generation"
	metricWriterVerified    = "skiplock_failover_writer_verified"
	metricFailoverEvents    = "skiplock_failover_events_total"
)

func newWorkerCollector(queueName string, concurrency int, runner *queue.Runner, client *queue.Client, pool *failover.Pool, events *failoverEvents) *workerCollector {
	q := prometheus.Labels{"queue": queueName}
	d := prometheus.NewDesc
	return &workerCollector{
		concurrency: concurrency, runner: runner, client: client, pool: pool, events: events,
		batches: d(metricBatches,
			"Batches by what happened to them in this worker: claimed, completed, retried, dead, released, lease_lost, finished_before (completed again without running: an earlier writer lost the completion).",
			[]string{"outcome"}, q),
		handlerTrouble: d(metricHandlerTrouble,
			"Misbehaving handlers by kind: panic, goexit, timed_out, abandoned.", []string{"kind"}, q),
		roundTripErrors: d(metricRoundTripErrors,
			"Failed database round trips of the runner (retried): heartbeat (lease renewals), round_trip (claims and acknowledgements).", []string{"kind"}, q),
		reclaimed: d(metricReclaimed, "Expired leases of the queue this worker made claimable again.", nil, q),
		running:   d(metricRunning, "Handlers running now.", nil, q),
		slots:     d(metricSlots, "Handler slots (the runner's concurrency).", nil, q),
		stuck:     d(metricStuck, "Abandoned handlers that have not returned yet.", nil, q),
		journalEntries: d(metricJournalEntries,
			"Acknowledged work the client remembers to re-assert after a failover, by kind: enqueue, completion.", []string{"kind"}, nil),
		journalPending: d(metricJournalPending,
			"Journaled work a writer change left to assert on the current writer and not yet asserted, by kind.", []string{"kind"}, nil),
		journalReasserted: d(metricJournalReasserted,
			"Journaled work a new writer was missing and got again, by kind.", []string{"kind"}, nil),
		generation:     d(metricGeneration, "Pool generations built so far (one more after each writer change).", nil, nil),
		writerVerified: d(metricWriterVerified, "1 while the pool serves a verified writer, 0 while it is rebuilding.", nil, nil),
		failoverEventsTotal: d(metricFailoverEvents,
			"Events of the failover pool by kind (generation_ready, stale_writer, drain_started, drain_done, probe_failed, no_writer).", []string{"kind"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *workerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.batches, c.handlerTrouble, c.roundTripErrors, c.reclaimed,
		c.running, c.slots, c.stuck, c.journalEntries, c.journalPending, c.journalReasserted,
		c.generation, c.writerVerified, c.failoverEventsTotal} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *workerCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}

	s := c.runner.Stats()
	counter(c.batches, s.Claimed, "claimed")
	counter(c.batches, s.Completed, "completed")
	counter(c.batches, s.Retried, "retried")
	counter(c.batches, s.Dead, "dead")
	counter(c.batches, s.Released, "released")
	counter(c.batches, s.LeaseLost, "lease_lost")
	counter(c.batches, s.FinishedBefore, "finished_before")
	counter(c.handlerTrouble, s.Panics, "panic")
	counter(c.handlerTrouble, s.Goexits, "goexit")
	counter(c.handlerTrouble, s.TimedOut, "timed_out")
	counter(c.handlerTrouble, s.Abandoned, "abandoned")
	counter(c.roundTripErrors, s.HeartbeatErrors, "heartbeat")
	counter(c.roundTripErrors, s.RoundTripErrors, "round_trip")
	counter(c.reclaimed, s.Reclaimed)
	gauge(c.running, int64(s.Running))
	gauge(c.slots, int64(c.concurrency))
	gauge(c.stuck, int64(s.Stuck))

	j := c.client.JournalStats()
	gauge(c.journalEntries, int64(j.Journaled), "enqueue")
	gauge(c.journalEntries, int64(j.Completions), "completion")
	gauge(c.journalPending, int64(j.Pending), "enqueue")
	gauge(c.journalPending, int64(j.PendingCompletions), "completion")
	counter(c.journalReasserted, j.Reasserted, "enqueue")
	counter(c.journalReasserted, j.ReassertedCompletions, "completion")

	gauge(c.generation, c.pool.Generation())
	verified := int64(0)
	if _, ok := c.pool.Writer(); ok {
		verified = 1
	}
	gauge(c.writerVerified, verified)
	for k := failover.EventGenerationReady; k <= failover.EventNoWriter; k++ {
		counter(c.failoverEventsTotal, c.events.counts[k].Load(), k.String())
	}
}
