package skiplockprom

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/queue"
)

// Metrics is a prometheus.Collector for one process's skiplock: a
// queue.Client, its Runners and the failover.Pool under it. Create it with
// New, hand its hooks to the components as they are built (QueueEvents as
// queue.Config.OnEvent, Middleware in queue.RunnerConfig.Middleware,
// PoolEvents as failover.Config.OnEvent), tell it about them (SetClient,
// AddRunner, SetPool) and register it. Every part is optional: what is not
// wired is not reported. It is safe for concurrent use.
type Metrics struct {
	cfg *Config
	log *zap.Logger

	enqueued, claimed, completed, retried, dead *prometheus.CounterVec
	released, reclaimed, extended, leaseLost    *prometheus.CounterVec
	reassertedEnqueues, reassertedCompletions   prometheus.Counter
	handler, latency                            *prometheus.HistogramVec
	statsQueries, statsErrors                   prometheus.Counter
	handlerByQueue                              sync.Map // queue name -> *handlerObs

	depthDesc, ageDesc, slotsBusyDesc, slotsDesc         *prometheus.Desc
	generationDesc, rebuildsDesc, writerlessDesc         *prometheus.Desc
	writerInfoDesc, journalDesc, droppedDesc, panicsDesc *prometheus.Desc

	mu         sync.Mutex
	client     *queue.Client
	runners    []*queue.Runner
	pool       *failover.Pool
	poolEvents bool // PoolEvents was called

	outageMu    sync.Mutex
	outageTotal time.Duration
	outageSince time.Time // when the pool lost its writer; zero while it serves one

	statsMu sync.Mutex // held during the query: concurrent scrapes share it
	statsAt time.Time  // when the last query was started; zero before
	stats   []queue.QueueStats
}

// New returns Metrics configured by cfg (nil for defaults). It returns a
// *ConfigError naming a bad field.
func New(cfg *Config) (*Metrics, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "skiplock", Name: name, Help: help}, []string{"queue"})
	}
	m := &Metrics{
		cfg:       cfg,
		log:       cfg.Logger.Named("skiplockprom"),
		enqueued:  counter("batches_enqueued_total", "Batches written by Enqueue and EnqueueMany of this process (duplicates and enqueues in a caller's transaction not counted)."),
		claimed:   counter("batches_claimed_total", "Batches claimed by this process's runners."),
		completed: counter("batches_completed_total", "Completions of this process's runners accepted by the database."),
		retried:   counter("batches_retried_total", "Failed attempts scheduled for another attempt."),
		dead:      counter("batches_dead_lettered_total", "Failed attempts that dead-lettered their batch."),
		released:  counter("batches_released_total", "Batches given back without using up their attempt (shutdown, lease not renewed, lost claims)."),
		reclaimed: counter("batches_reclaimed_total", "Expired leases made claimable again (or dead-lettered) by this process's runners."),
		extended:  counter("lease_extensions_total", "Leases renewed by heartbeats and re-confirmations after a writer change."),
		leaseLost: counter("leases_lost_total", "Acknowledgements refused because the lease had been lost."),
		reassertedEnqueues: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "skiplock", Name: "reasserted_enqueues_total",
			Help: "Acknowledged enqueues a new writer was missing after a failover, written again."}),
		reassertedCompletions: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "skiplock", Name: "reasserted_completions_total",
			Help: "Acknowledged completions a new writer was missing after a failover, recorded again."}),
		handler: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "skiplock", Name: "handler_duration_seconds",
			Help:    "Time handlers took, by outcome: ok, error, or aborted (panic or runtime.Goexit).",
			Buckets: cfg.HandlerBuckets}, []string{"queue", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "skiplock", Name: "batch_completion_latency_seconds",
			Help:    "Time from a batch's enqueue (its created_at, database clock) to its accepted completion (local clock).",
			Buckets: cfg.LatencyBuckets}, []string{"queue"}),
		statsQueries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "skiplock", Name: "queue_stats_queries_total",
			Help: "Stats queries run for the depth and age figures (at most one per StatsInterval)."}),
		statsErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "skiplock", Name: "queue_stats_errors_total",
			Help: "Stats queries that failed; the previous figures were reported."}),

		depthDesc: prometheus.NewDesc("skiplock_queue_batches",
			"Batches in the hot table by state: available (runnable now), scheduled, running, expired (running with an expired lease, a subset of running), dead.",
			[]string{"queue", "state"}, nil),
		ageDesc: prometheus.NewDesc("skiplock_queue_oldest_runnable_age_seconds",
			"How long the oldest runnable batch has been runnable; 0 if none.", []string{"queue"}, nil),
		slotsBusyDesc: prometheus.NewDesc("skiplock_runner_slots_busy",
			"Handlers running now in this process's runners.", []string{"queue"}, nil),
		slotsDesc: prometheus.NewDesc("skiplock_runner_slots",
			"Handler slots (Concurrency) of this process's running runners.", []string{"queue"}, nil),
		generationDesc: prometheus.NewDesc("skiplock_pool_generation",
			"Generations the failover pool has built; the serving one is the latest.", nil, nil),
		rebuildsDesc: prometheus.NewDesc("skiplock_pool_rebuilds_total",
			"Generations the failover pool built after its first.", nil, nil),
		writerlessDesc: prometheus.NewDesc("skiplock_pool_writerless_seconds_total",
			"Time the failover pool served no writer: from a stale writer's detection to the next generation, the current outage included.", nil, nil),
		writerInfoDesc: prometheus.NewDesc("skiplock_writer_info",
			"The writer the failover pool serves (absent while it has none).", []string{"server"}, nil),
		journalDesc: prometheus.NewDesc("skiplock_journal_pending",
			"Acknowledged work a writer change left to assert on the current writer, by kind: enqueues, completions.", []string{"kind"}, nil),
		droppedDesc: prometheus.NewDesc("skiplock_events_dropped_total",
			"Events dropped because the OnEvent buffer was full.", nil, nil),
		panicsDesc: prometheus.NewDesc("skiplock_event_callback_panics_total",
			"OnEvent callback calls that panicked or called runtime.Goexit.", nil, nil),
	}
	return m, nil
}

// SetClient makes the collector report c's queue depths and ages (one
// Stats query per StatsInterval), journal backlog and event counters.
func (m *Metrics) SetClient(c *queue.Client) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.client = c
}

// AddRunner makes the collector report r's handler slots while it runs.
func (m *Metrics) AddRunner(r *queue.Runner) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.runners = append(m.runners, r)
}

// SetPool makes the collector report p's generation, rebuilds and writer.
// The time without a writer needs PoolEvents as well.
func (m *Metrics) SetPool(p *failover.Pool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pool = p
}

func (m *Metrics) vecs() []prometheus.Collector {
	return []prometheus.Collector{m.enqueued, m.claimed, m.completed, m.retried, m.dead, m.released, m.reclaimed,
		m.extended, m.leaseLost, m.reassertedEnqueues, m.reassertedCompletions, m.handler, m.latency,
		m.statsQueries, m.statsErrors}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.vecs() {
		c.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{m.depthDesc, m.ageDesc, m.slotsBusyDesc, m.slotsDesc, m.generationDesc,
		m.rebuildsDesc, m.writerlessDesc, m.writerInfoDesc, m.journalDesc, m.droppedDesc, m.panicsDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. It may run the Stats query
// (bounded by StatsTimeout) when the cached figures are older than
// StatsInterval; everything else is read from memory.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.vecs() {
		c.Collect(ch)
	}
	m.mu.Lock()
	client, pool, poolEvents := m.client, m.pool, m.poolEvents
	runners := append([]*queue.Runner(nil), m.runners...)
	m.mu.Unlock()

	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	if client != nil {
		for _, s := range m.queueStats(client) {
			gauge(m.depthDesc, float64(s.Available), s.Queue, "available")
			gauge(m.depthDesc, float64(s.Scheduled), s.Queue, "scheduled")
			gauge(m.depthDesc, float64(s.Running), s.Queue, "running")
			gauge(m.depthDesc, float64(s.Expired), s.Queue, "expired")
			gauge(m.depthDesc, float64(s.Dead), s.Queue, "dead")
			gauge(m.ageDesc, s.OldestAge.Seconds(), s.Queue)
		}
		js := client.JournalStats()
		gauge(m.journalDesc, float64(js.Pending), "enqueues")
		gauge(m.journalDesc, float64(js.PendingCompletions), "completions")
		es := client.EventStats()
		counter(m.droppedDesc, float64(es.Dropped))
		counter(m.panicsDesc, float64(es.Panics))
	}
	m.collectRunners(runners, gauge)
	if pool != nil {
		g := pool.Generation()
		gauge(m.generationDesc, float64(g))
		counter(m.rebuildsDesc, float64(max(g-1, 0)))
		if w, ok := pool.Writer(); ok {
			gauge(m.writerInfoDesc, 1, serverLabel(w))
		}
	}
	if poolEvents {
		counter(m.writerlessDesc, m.writerless(time.Now()).Seconds())
	}
}

// collectRunners reports the slots of the running runners, summed per
// queue.
func (m *Metrics) collectRunners(runners []*queue.Runner, gauge func(*prometheus.Desc, float64, ...string)) {
	type slots struct{ busy, total int }
	per := map[string]*slots{}
	var order []string
	for _, r := range runners {
		select {
		case <-r.Stopped():
			continue
		default:
		}
		st := r.Stats()
		s := per[r.Queue()]
		if s == nil {
			s = &slots{}
			per[r.Queue()] = s
			order = append(order, r.Queue())
		}
		s.busy += st.Running
		s.total += st.Slots
	}
	for _, q := range order {
		gauge(m.slotsBusyDesc, float64(per[q].busy), q)
		gauge(m.slotsDesc, float64(per[q].total), q)
	}
}

// serverLabel names a writer: its Aurora instance identifier where there
// is one, else address:port.
func serverLabel(w failover.Identity) string {
	if w.Instance != "" {
		return w.Instance
	}
	return w.Addr + ":" + strconv.Itoa(w.Port)
}
