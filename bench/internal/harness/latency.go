package harness

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/riverqueue/river"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// latencyRecorder matches handler starts to enqueue calls by sequence
// number. For each enqueue it keeps when the call started, when it
// returned (committed) and when a handler started, so the total splits
// into the enqueue call (commit included) and the wake-up after it.
type latencyRecorder struct {
	mu       sync.Mutex
	started  map[int64]time.Time
	returned map[int64]time.Time
	handled  map[int64]time.Time
	warmup   int64 // sequence numbers up to this are not measured
	all      chan struct{}
	want     int64 // closes all when this many were handled; 0 while producing
}

func newLatencyRecorder() *latencyRecorder {
	return &latencyRecorder{started: map[int64]time.Time{}, returned: map[int64]time.Time{}, handled: map[int64]time.Time{}, all: make(chan struct{})}
}

func (l *latencyRecorder) begin(seq int64) {
	l.mu.Lock()
	l.started[seq] = time.Now()
	l.mu.Unlock()
}

func (l *latencyRecorder) end(seq int64) {
	now := time.Now()
	l.mu.Lock()
	l.returned[seq] = now
	l.mu.Unlock()
}

// handle records a handler start of seq (the first one counts).
func (l *latencyRecorder) handle(seq int64) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.started[seq]; !ok {
		return
	}
	if _, dup := l.handled[seq]; dup {
		return
	}
	l.handled[seq] = now
	if l.want > 0 && int64(len(l.handled)) == l.want {
		close(l.all)
	}
}

// samples returns, for the measured enqueues, the total (call start →
// handler start), the call (start → return) and the wake-up (return →
// handler start; negative when the handler started before the call
// returned).
func (l *latencyRecorder) samples() (total, call, wake []time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for seq, h := range l.handled {
		if seq <= l.warmup {
			continue
		}
		s, r := l.started[seq], l.returned[seq]
		total = append(total, h.Sub(s))
		call = append(call, r.Sub(s))
		wake = append(wake, h.Sub(r))
	}
	return total, call, wake
}

// finish says how many enqueues there were in all, and waits until they
// were all handled (at most d).
func (l *latencyRecorder) finish(total int64, d time.Duration) error {
	l.mu.Lock()
	l.want = total
	if int64(len(l.handled)) >= total {
		l.mu.Unlock()
		return nil
	}
	l.mu.Unlock()
	select {
	case <-l.all:
		return nil
	case <-time.After(d):
		l.mu.Lock()
		defer l.mu.Unlock()
		return fmt.Errorf("only %d of %d enqueued batches reached a handler within %s", len(l.handled), total, d)
	}
}

// produce enqueues one batch every 1/rate seconds for window, after a
// warm-up of its own, and returns how many it enqueued.
func produceAt(ctx context.Context, l *latencyRecorder, rate float64, warmup, window time.Duration, enqueue func(ctx context.Context, seq int64) error) (int64, error) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	t0 := time.Now()
	var seq int64
	warm := true
	for {
		if warm && time.Since(t0) >= warmup {
			l.mu.Lock()
			l.warmup = seq
			l.mu.Unlock()
			warm = false
		}
		if time.Since(t0) >= warmup+window {
			return seq, nil
		}
		select {
		case <-ctx.Done():
			return seq, ctx.Err()
		case <-tick.C:
		}
		seq++
		l.begin(seq)
		if err := enqueue(ctx, seq); err != nil {
			return seq, err
		}
		l.end(seq)
	}
}

// latencyCase is one configuration measured for latency.
type latencyCase struct {
	system string
	config string // for people and the JSON
	// run starts the system, produces at the rate, and waits until every
	// enqueued batch reached a handler; it returns how many it enqueued.
	run func(ctx context.Context, l *latencyRecorder) (int64, error)
}

const (
	latencyWarmup = 500 * time.Millisecond // enqueues before this are not measured
	latencyDrain  = 10 * time.Second       // for the last enqueues to reach a handler
)

func seqFromURI(uri string) int64 {
	n, _ := strconv.ParseInt(uri[strings.LastIndexByte(uri, '/')+1:], 10, 64)
	return n
}

// runLatency measures enqueue-call start → handler start on an idle system
// at a modest rate, for each configuration of each system.
func runLatency(ctx context.Context, cfg *Config, e *env, rep *Report, prog *progress, systems []string) error {
	window, rate := cfg.LatencyWindow, cfg.LatencyRate
	skiplockCase := func(name string, disableNotify bool, poll time.Duration) latencyCase {
		return latencyCase{system: SystemSkiplock, config: name, run: func(ctx context.Context, l *latencyRecorder) (int64, error) {
			client, err := queue.New(e.pool, &queue.Config{Schema: skiplockSchema, DisableNotify: disableNotify})
			if err != nil {
				return 0, err
			}
			defer client.Close()
			r, err := queue.NewRunner(client, &queue.RunnerConfig{Queue: benchQueue, PollInterval: poll,
				Handler: func(_ context.Context, b *batch.Batch) error {
					l.handle(seqFromURI(b.URI))
					return nil
				}})
			if err != nil {
				return 0, err
			}
			if err := r.Start(ctx); err != nil {
				return 0, err
			}
			defer r.Stop(context.WithoutCancel(ctx))
			total, err := produceAt(ctx, l, rate, latencyWarmup, window, func(ctx context.Context, seq int64) error {
				_, err := client.Enqueue(ctx, queue.EnqueueParams{Queue: benchQueue,
					Meta: batch.Meta{URI: "s3://latency/" + strconv.FormatInt(seq, 10), EventCount: 100, ByteSize: 4096}})
				return err
			})
			if err != nil {
				return total, err
			}
			return total, l.finish(total, latencyDrain)
		}}
	}
	riverCase := func(name string, t riverTuning) latencyCase {
		return latencyCase{system: SystemRiver, config: name, run: func(ctx context.Context, l *latencyRecorder) (int64, error) {
			c, err := e.newRiverClient(queue.ConcurrencyDefault, t, func(_ context.Context, j *river.Job[riverArgs]) error {
				l.handle(j.Args.Seq)
				return nil
			})
			if err != nil {
				return 0, err
			}
			if err := c.Start(ctx); err != nil {
				return 0, err
			}
			defer c.Stop(context.WithoutCancel(ctx))
			total, err := produceAt(ctx, l, rate, latencyWarmup, window, func(ctx context.Context, seq int64) error {
				_, err := c.Insert(ctx, riverArgs{URI: "s3://latency/" + strconv.FormatInt(seq, 10), EventCount: 100, ByteSize: 4096, Seq: seq},
					&river.InsertOpts{Queue: benchQueue})
				return err
			})
			if err != nil {
				return total, err
			}
			return total, l.finish(total, latencyDrain)
		}}
	}
	pollName := fmt.Sprintf("poll only, %s", cfg.PollInterval)
	var cases []latencyCase
	for _, sys := range systems {
		switch sys {
		case SystemSkiplock:
			cases = append(cases,
				skiplockCase("notify", false, 0),
				skiplockCase(pollName, true, cfg.PollInterval))
		case SystemRiver:
			cases = append(cases,
				riverCase("notify (defaults)", riverTuning{}),
				riverCase("notify, FetchCooldown 2ms", riverTuning{cooldown: 2 * time.Millisecond}),
				riverCase(pollName, riverTuning{pollOnly: true, poll: cfg.PollInterval, cooldown: min(cfg.PollInterval, 100*time.Millisecond)}))
		}
	}
	checkpointNoted := false
	for _, c := range cases {
		if err := e.reset(ctx); err != nil {
			return err
		}
		if err := e.vacuum(ctx); err != nil {
			return err
		}
		// Each configuration starts with no dirty buffers left by what ran
		// before, so background writes do not slow only the first one's
		// commits. A role without the right to checkpoint skips it.
		if err := e.exec(ctx, `CHECKPOINT`); err != nil && !checkpointNoted {
			checkpointNoted = true
			rep.note("latency: CHECKPOINT before each configuration failed (%v); the first configuration may see slower commits", err)
		}
		l := newLatencyRecorder()
		if _, err := c.run(ctx, l); err != nil {
			return fmt.Errorf("latency %s (%s): %w", c.system, c.config, err)
		}
		s, call, wake := l.samples()
		p50, p95, p99 := percentile(s, 50), percentile(s, 95), percentile(s, 99)
		prog.step("latency %-8s %-26s p50 %7.2f ms  p95 %7.2f ms  p99 %7.2f ms  (%d samples at %.0f/s; enqueue call p50/p99 %.2f/%.2f ms, wake-up after it p50/p99 %.2f/%.2f ms)",
			c.system, c.config, ms(p50), ms(p95), ms(p99), len(s), rate,
			ms(percentile(call, 50)), ms(percentile(call, 99)), ms(percentile(wake, 50)), ms(percentile(wake, 99)))
		params := []any{"config", c.config, "rate_per_s", rate, "samples", len(s)}
		rep.add(ScenarioLatency, c.system, "p50_ms", ms(p50), "ms", params...)
		rep.add(ScenarioLatency, c.system, "p95_ms", ms(p95), "ms", params...)
		rep.add(ScenarioLatency, c.system, "p99_ms", ms(p99), "ms", params...)
		rep.add(ScenarioLatency, c.system, "max_ms", ms(percentile(s, 100)), "ms", params...)
		rep.add(ScenarioLatency, c.system, "enqueue_call_p50_ms", ms(percentile(call, 50)), "ms", params...)
		rep.add(ScenarioLatency, c.system, "enqueue_call_p99_ms", ms(percentile(call, 99)), "ms", params...)
		rep.add(ScenarioLatency, c.system, "wakeup_p50_ms", ms(percentile(wake, 50)), "ms", params...)
		rep.add(ScenarioLatency, c.system, "wakeup_p99_ms", ms(percentile(wake, 99)), "ms", params...)
	}
	return e.reset(ctx)
}
