package main

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/skiplockprom"
)

// This file is the worker's Prometheus registry and what it holds; start
// (main.go) hands the collector's hooks to the pool, the client and the
// runner and tells it about them, a line each.

// metricFailoverEvents counts the pool's events by kind, which
// skiplockprom does not export one by one.
const metricFailoverEvents = "skiplock_failover_events_total"

// newMetrics returns skiplockprom's collector and the /metrics handler of
// a registry that holds it, Go runtime and process metrics, and a count of
// the pool's events by kind. The caller hands m.QueueEvents(nil) to the
// queue client and m.Middleware to the runner, onPoolEvent (which feeds
// both m and the count of events) to the pool, and then tells m about
// them with SetPool, SetClient and AddRunner. statsInterval is
// skiplockprom's Config.StatsInterval (0 for its default). Its errors are
// *skiplockprom.ConfigError.
func newMetrics(statsInterval time.Duration, log *zap.Logger) (m *skiplockprom.Metrics, onPoolEvent failover.OnEventFunc, h http.Handler, err error) {
	m, err = skiplockprom.New(&skiplockprom.Config{StatsInterval: statsInterval, Logger: log})
	if err != nil {
		return nil, nil, nil, err
	}
	events := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricFailoverEvents,
		Help: "Events of the failover pool by kind (generation_ready, stale_writer, drain_started, drain_done, probe_failed, no_writer)."},
		[]string{"kind"})
	for k := failover.EventGenerationReady; k <= failover.EventNoWriter; k++ {
		events.WithLabelValues(k.String()) // every kind shows, from 0
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m,
		events,
	)
	onPoolEvent = m.PoolEvents(func(e failover.Event) {
		if e.Kind >= failover.EventGenerationReady && e.Kind <= failover.EventNoWriter {
			events.WithLabelValues(e.Kind.String()).Inc()
		}
	})
	return m, onPoolEvent, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}), nil
}
