package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// The backlog scenario: a pipeline that fell behind. N keyed batches are
// enqueued first; then runners claim and complete at full speed while a
// producer keeps adding new batches, half of them in a more urgent priority
// class than the backlog and half in the backlog's own class (those queue
// behind it, in id order).
const (
	backlogProducers  = 4       // fill producers
	backlogRunners    = 4       // skiplock runners; River gets one client with the same handler slots
	backlogClaimSize  = 100     // the best claim size of the throughput scenario
	backlogNewRate    = 500.0   // new batches per second during the drain, both classes together
	backlogNewCallers = 32      // goroutines the new-batch producer spreads its enqueue calls over
	backlogSpan       = 100     // source offsets per batch
	backlogWindowMax  = 100_000 // most backlog completions a depth mark's rate is measured over
	backlogSettle     = 2 * time.Minute
	backlogTopic      = "backlog"
	backlogNewTopic   = "new"
	backlogRiverKind  = "bench_backlog"
)

// BacklogMarksDefault are the depths (backlog batches still queued) at which
// the backlog scenario reports the claim+complete rate; those above
// Config.BacklogRows are left out.
var BacklogMarksDefault = []int{10_000_000, 1_000_000, 100_000, 10_000}

// Priority classes of the backlog and of the urgent new batches. Lower runs
// first in both systems. River's priorities are 1..4 (1, its default, first),
// so its backlog is at 2; skiplock's backlog is one class below its default 0.
var backlogClass = map[string]struct{ backlog, urgent int }{
	SystemSkiplock: {1, 0},
	SystemRiver:    {2, 1},
}

// New batches with odd sequence numbers are urgent, even ones are in the
// backlog's class.
func urgentSeq(seq int64) bool { return seq%2 == 1 }

func backlogSource(partition int, g int64) batch.Source {
	return batch.Source{Topic: backlogTopic, Partition: int32(partition), Start: g * backlogSpan, End: (g + 1) * backlogSpan}
}

func newSource(seq int64) batch.Source {
	return batch.Source{Topic: backlogNewTopic, Start: seq * backlogSpan, End: (seq + 1) * backlogSpan}
}

func sourceURI(s batch.Source) string {
	return fmt.Sprintf("s3://bench/%s/%d/%012d.ndjson", s.Topic, s.Partition, s.Start)
}

// backlogArgs is the River job of one batch: the same metadata skiplock's
// rows carry, unique by source range (River's UniqueOpts.ByArgs with these
// fields tagged), as skiplock's idempotency key derived from Meta.Source.
type backlogArgs struct {
	URI        string `json:"uri"`
	Topic      string `json:"topic" river:"unique"`
	Partition  int32  `json:"partition" river:"unique"`
	Start      int64  `json:"start" river:"unique"`
	End        int64  `json:"end" river:"unique"`
	EventCount int64  `json:"event_count"`
	ByteSize   int64  `json:"byte_size"`
}

func (backlogArgs) Kind() string { return backlogRiverKind }

func newBacklogArgs(s batch.Source) backlogArgs {
	return backlogArgs{URI: sourceURI(s), Topic: s.Topic, Partition: s.Partition, Start: s.Start, End: s.End, EventCount: 100, ByteSize: 4096}
}

// backlogRiverUnique makes River's inserts keyed: one job per source range
// and queue, among jobs of every state River keeps (completed included).
var backlogRiverUnique = river.UniqueOpts{ByArgs: true, ByQueue: true}

// depthWindow returns the backlog completions between which the rate at
// depth d (of n backlog batches, d still queued) is measured: from depth
// d+w/2 down to d-w/2, w = min(d/2, backlogWindowMax), moved down to start
// with the first batch when d is near n. Completion 1 is the first handler
// start (there is no time for completion 0).
func depthWindow(n, d int64) (from, to int64) {
	w := max(min(d/2, backlogWindowMax), 2)
	hi := min(d+w/2, n)
	lo := max(hi-w, 0)
	return max(n-hi, 1), n - lo
}

// backlogMarks returns the marks at most n, deepest first.
func backlogMarks(marks []int, n int) []int64 {
	var out []int64
	for _, m := range marks {
		if m >= 2 && m <= n && !slices.Contains(out, int64(m)) {
			out = append(out, int64(m))
		}
	}
	slices.Sort(out)
	slices.Reverse(out)
	return out
}

// backlogTracker counts handler starts: of backlog batches (with the time
// at which their count reached each window bound) and of new ones (into a
// latency recorder per class).
type backlogTracker struct {
	n       int64
	done    atomic.Int64 // backlog batches handled
	handled atomic.Int64 // every handler start
	index   map[int64]int
	at      []atomic.Int64 // unix ns when done reached the bound of the same index
	drained chan struct{}

	urgent, same *latencyRecorder
}

func newBacklogTracker(n int64, bounds []int64) *backlogTracker {
	t := &backlogTracker{n: n, index: map[int64]int{}, drained: make(chan struct{}), urgent: newLatencyRecorder(), same: newLatencyRecorder()}
	for _, b := range append(bounds, 1, n) {
		if _, ok := t.index[b]; !ok {
			t.index[b] = len(t.index)
		}
	}
	t.at = make([]atomic.Int64, len(t.index))
	return t
}

func (t *backlogTracker) backlog() {
	t.handled.Add(1)
	c := t.done.Add(1)
	if i, ok := t.index[c]; ok {
		t.at[i].Store(time.Now().UnixNano())
	}
	if c == t.n {
		close(t.drained)
	}
}

func (t *backlogTracker) fresh(seq int64) {
	t.handled.Add(1)
	t.recorder(seq).handle(seq)
}

func (t *backlogTracker) recorder(seq int64) *latencyRecorder {
	if urgentSeq(seq) {
		return t.urgent
	}
	return t.same
}

// when returns the time at which the backlog count reached bound b.
func (t *backlogTracker) when(b int64) time.Time { return time.Unix(0, t.at[t.index[b]].Load()) }

// backlogSystem is what the scenario needs of one system.
type backlogSystem struct {
	name   string
	config string   // how it was configured, for people and the JSON
	tables []string // quoted tables whose size counts, the first holding the queued rows
	// fill enqueues the backlog rows lo..hi-1 of producer p in one call.
	fill func(ctx context.Context, p int, lo, hi int64) error
	// start starts working the queue with every handler start reported to t,
	// and returns the function that stops it (acknowledging what ran).
	start func(ctx context.Context, t *backlogTracker) (stop func() error, err error)
	// enqueueNew adds new batch seq, keyed, in class prio (after start).
	enqueueNew func(ctx context.Context, seq int64, prio int) (id int64, err error)
	// doneLatency selects enqueue → completion in seconds, by the database's
	// records, of the completed batches with ids $1. skiplock: done_at -
	// created_at (both now() of the completing and the enqueueing
	// transaction); River: finalized_at (the worker's clock when the job
	// finished) - created_at.
	doneLatency string
	// counts selects the batches completed, the rows left, and the
	// completions recorded more than once or after more than one attempt.
	counts string
	// pick is the system's claim without its update: the head of its
	// claim order, backlogClaimSize rows, locked ($1 is the queue).
	pick string
}

func (e *env) skiplockBacklog() *backlogSystem {
	cls := backlogClass[SystemSkiplock]
	return &backlogSystem{
		name: SystemSkiplock,
		config: fmt.Sprintf("EnqueueMany keyed by Meta.Source, %d per call; %d runners, ClaimSize %d, Concurrency %d, PollInterval 100ms, NOTIFY on; backlog priority %d, urgent new %d",
			perCall, backlogRunners, backlogClaimSize, 2*backlogClaimSize, cls.backlog, cls.urgent),
		tables: []string{qs("batch"), qs("batch_key_digest"), qs("batch_key")},
		fill: func(ctx context.Context, p int, lo, hi int64) error {
			ps := make([]queue.EnqueueParams, 0, hi-lo)
			for g := lo; g < hi; g++ {
				s := backlogSource(p, g)
				ps = append(ps, queue.EnqueueParams{Queue: benchQueue, Priority: int16(cls.backlog),
					Meta: batch.Meta{URI: sourceURI(s), Source: s, EventCount: 100, ByteSize: 4096}})
			}
			res, err := e.client.EnqueueMany(ctx, ps)
			if err != nil {
				return err
			}
			for _, r := range res {
				if r.Duplicate {
					return fmt.Errorf("backlog batch %d reported as a duplicate", r.ID)
				}
			}
			return nil
		},
		start: func(ctx context.Context, t *backlogTracker) (func() error, error) {
			runners := make([]*queue.Runner, backlogRunners)
			for w := range runners {
				r, err := queue.NewRunner(e.client, &queue.RunnerConfig{
					Queue: benchQueue, Concurrency: 2 * backlogClaimSize, ClaimSize: backlogClaimSize, PollInterval: 100 * time.Millisecond,
					Handler: func(_ context.Context, b *batch.Batch) error {
						if b.Source.Topic == backlogNewTopic {
							t.fresh(b.Source.Start / backlogSpan)
						} else {
							t.backlog()
						}
						return nil
					},
				})
				if err != nil {
					return nil, err
				}
				runners[w] = r
			}
			stop := func() error {
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
				defer cancel()
				var first error
				for _, r := range runners {
					if err := r.Stop(sctx); err != nil && first == nil {
						first = err
					}
				}
				return first
			}
			for _, r := range runners {
				if err := r.Start(ctx); err != nil {
					_ = stop()
					return nil, err
				}
			}
			return stop, nil
		},
		enqueueNew: func(ctx context.Context, seq int64, prio int) (int64, error) {
			s := newSource(seq)
			r, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: benchQueue, Priority: int16(prio),
				Meta: batch.Meta{URI: sourceURI(s), Source: s, EventCount: 100, ByteSize: 4096}})
			if err == nil && r.Duplicate {
				err = fmt.Errorf("new batch %d reported as a duplicate", seq)
			}
			return r.ID, err
		},
		doneLatency: `SELECT extract(epoch FROM done_at - created_at)::float8 FROM ` + qs("batch_done") + ` WHERE id = ANY ($1)`,
		counts: `SELECT (SELECT count(DISTINCT id) FROM ` + qs("batch_done") + `), (SELECT count(*) FROM ` + qs("batch") + `),
    (SELECT count(*) - count(DISTINCT id) + count(*) FILTER (WHERE attempt > 1) FROM ` + qs("batch_done") + `)`,
		pick: `SELECT id FROM ` + qs("batch") + ` WHERE queue = $1 AND state = 'available' AND run_at <= now()
ORDER BY priority, run_at, id LIMIT ` + fmt.Sprint(backlogClaimSize) + ` FOR UPDATE SKIP LOCKED`,
	}
}

// riverBacklog fills through inserter, a River client without workers.
func (e *env) riverBacklog(inserter *river.Client[pgxTx]) *backlogSystem {
	cls := backlogClass[SystemRiver]
	slots := 2 * backlogClaimSize * backlogRunners
	var working *river.Client[pgxTx] // set by start, used by enqueueNew
	opts := func(prio int) *river.InsertOpts {
		return &river.InsertOpts{Queue: benchQueue, Priority: prio, UniqueOpts: backlogRiverUnique}
	}
	return &backlogSystem{
		name: SystemRiver,
		config: fmt.Sprintf("InsertMany with UniqueOpts{ByArgs (source range), ByQueue}, %d per call (InsertManyFast takes no unique opts); one client, MaxWorkers %d, FetchCooldown 2ms, FetchPollInterval 20ms; backlog priority %d, urgent new %d",
			perCall, slots, cls.backlog, cls.urgent),
		tables: []string{qr("river_job")},
		fill: func(ctx context.Context, p int, lo, hi int64) error {
			ps := make([]river.InsertManyParams, 0, hi-lo)
			for g := lo; g < hi; g++ {
				ps = append(ps, river.InsertManyParams{Args: newBacklogArgs(backlogSource(p, g)), InsertOpts: opts(cls.backlog)})
			}
			res, err := inserter.InsertMany(ctx, ps)
			if err != nil {
				return err
			}
			for _, r := range res {
				if r.UniqueSkippedAsDuplicate {
					return fmt.Errorf("backlog job %d skipped as a duplicate", r.Job.ID)
				}
			}
			return nil
		},
		start: func(ctx context.Context, t *backlogTracker) (func() error, error) {
			workers := river.NewWorkers()
			river.AddWorker(workers, river.WorkFunc(func(_ context.Context, j *river.Job[backlogArgs]) error {
				if j.Args.Topic == backlogNewTopic {
					t.fresh(j.Args.Start / backlogSpan)
				} else {
					t.backlog()
				}
				return nil
			}))
			c, err := river.NewClient(riverpgxv5.New(e.rpool), &river.Config{
				Schema: riverSchema, Logger: quietLogger(), FetchCooldown: riverFast.cooldown, FetchPollInterval: riverFast.poll,
				Workers: workers, Queues: map[string]river.QueueConfig{benchQueue: {MaxWorkers: slots}},
			})
			if err != nil {
				return nil, err
			}
			if err := c.Start(ctx); err != nil {
				return nil, err
			}
			working = c
			return func() error {
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
				defer cancel()
				return c.Stop(sctx)
			}, nil
		},
		enqueueNew: func(ctx context.Context, seq int64, prio int) (int64, error) {
			r, err := working.Insert(ctx, newBacklogArgs(newSource(seq)), opts(prio))
			if err != nil {
				return 0, err
			}
			if r.UniqueSkippedAsDuplicate {
				return 0, fmt.Errorf("new job %d skipped as a duplicate", seq)
			}
			return r.Job.ID, nil
		},
		doneLatency: `SELECT extract(epoch FROM finalized_at - created_at)::float8 FROM ` + qr("river_job") + ` WHERE id = ANY ($1) AND state = 'completed'`,
		counts: `SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FILTER (WHERE state <> 'completed'),
    count(*) FILTER (WHERE attempt > 1) FROM ` + qr("river_job"),
		pick: `SELECT id FROM ` + qr("river_job") + ` WHERE state = 'available' AND queue = $1 AND scheduled_at <= now()
ORDER BY priority, scheduled_at, id LIMIT ` + fmt.Sprint(backlogClaimSize) + ` FOR UPDATE SKIP LOCKED`,
	}
}

// backlogResult is what one system's run measured.
type backlogResult struct {
	fillRate                    float64
	heap, index, total          int64
	rates                       map[int64]float64 // depth mark -> batches/s
	windows                     map[int64]int64   // depth mark -> completions in its window
	drain                       time.Duration
	newRate                     float64
	newCount                    int64
	urgent, same                backlogLatency
	completed, left, duplicates int64
	cpuClient, cpuServer        float64
	explains                    map[int64]planCost // depth mark -> the pick's cost there
	tables                      []tableSize
}

// tableSize is one table's main fork and indexes, after the fill.
type tableSize struct {
	name        string
	heap, index int64
}

// planCost is what EXPLAIN (ANALYZE, BUFFERS) reported of one statement.
type planCost struct {
	ms      float64 // execution time
	buffers int64   // shared buffers hit and read
}

// explainPick runs EXPLAIN (ANALYZE, BUFFERS) of s.pick in a transaction
// it rolls back (the rows it locked are skipped by claimers meanwhile).
func (e *env) explainPick(ctx context.Context, s *backlogSystem) (planCost, error) {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return planCost{}, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var out string
	if err := tx.QueryRow(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+s.pick, benchQueue).Scan(&out); err != nil {
		return planCost{}, fmt.Errorf("explain: %w", err)
	}
	var plans []struct {
		Plan struct {
			Hit  int64 `json:"Shared Hit Blocks"`
			Read int64 `json:"Shared Read Blocks"`
		} `json:"Plan"`
		Execution float64 `json:"Execution Time"`
	}
	if err := json.Unmarshal([]byte(out), &plans); err != nil || len(plans) != 1 {
		return planCost{}, fmt.Errorf("explain output: %v (%d plans)", err, len(plans))
	}
	return planCost{ms: plans[0].Execution, buffers: plans[0].Plan.Hit + plans[0].Plan.Read}, nil
}

type backlogLatency struct {
	start []time.Duration // enqueue call → handler start (client clock)
	done  []time.Duration // enqueue → completion (database records)
}

// runBacklog runs the backlog scenario for skiplock and then River, each
// from empty tables.
func runBacklog(ctx context.Context, cfg *Config, e *env, rep *Report, prog *progress) error {
	n := int64(cfg.BacklogRows)
	marks := backlogMarks(cfg.BacklogMarks, cfg.BacklogRows)
	rc, err := e.newRiverClient(0, riverTuning{}, nil) // insert only
	if err != nil {
		return err
	}
	sk, rv := e.skiplockBacklog(), e.riverBacklog(rc)
	checkpointNoted := false
	for _, s := range []*backlogSystem{sk, rv} {
		if err := e.reset(ctx); err != nil {
			return err
		}
		if err := e.exec(ctx, `CHECKPOINT`); err != nil && !checkpointNoted {
			checkpointNoted = true
			rep.note("backlog: CHECKPOINT before each system failed (%v)", err)
		}
		res, err := e.backlogOne(ctx, s, n, marks, prog)
		if res != nil {
			res.report(rep, s, n, marks)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return e.reset(ctx)
}

// backlogOne fills and drains one system. It returns what it measured, and
// an error for a measurement that failed; when the final count finds a batch
// completed other than once, both (the figures show what was found).
func (e *env) backlogOne(ctx context.Context, s *backlogSystem, n int64, marks []int64, prog *progress) (*backlogResult, error) {
	res := &backlogResult{rates: map[int64]float64{}, windows: map[int64]int64{}, explains: map[int64]planCost{}}

	// Fill.
	prog.step("backlog %s: enqueueing %d keyed batches (%d producers, %d per call)", s.name, n, backlogProducers, perCall)
	t0 := time.Now()
	if err := fillBacklog(ctx, n, s.fill); err != nil {
		return nil, fmt.Errorf("fill: %w", err)
	}
	res.fillRate = float64(n) / time.Since(t0).Seconds()
	prog.step("backlog %s: filled at %.0f rows/s", s.name, res.fillRate)
	for _, t := range s.tables {
		if err := e.exec(ctx, `VACUUM ANALYZE `+t); err != nil {
			return nil, fmt.Errorf("vacuum %s: %w", t, err)
		}
	}
	var queued int64
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM `+s.tables[0]).Scan(&queued); err != nil {
		return nil, err
	}
	if queued != n {
		return nil, fmt.Errorf("fill left %d rows, want %d", queued, n)
	}
	if err := e.pool.QueryRow(ctx, `SELECT coalesce(sum(pg_relation_size(t)), 0)::int8, coalesce(sum(pg_indexes_size(t)), 0)::int8,
    coalesce(sum(pg_total_relation_size(t)), 0)::int8 FROM unnest($1::text[]::regclass[]) t`, s.tables).Scan(&res.heap, &res.index, &res.total); err != nil {
		return nil, fmt.Errorf("sizes: %w", err)
	}
	rows, err := e.pool.Query(ctx, `SELECT t, pg_relation_size(t::regclass), pg_indexes_size(t::regclass) FROM unnest($1::text[]) t`, s.tables)
	if err != nil {
		return nil, fmt.Errorf("sizes: %w", err)
	}
	for rows.Next() {
		var ts tableSize
		if err := rows.Scan(&ts.name, &ts.heap, &ts.index); err != nil {
			rows.Close()
			return nil, err
		}
		res.tables = append(res.tables, ts)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sizes: %w", err)
	}
	prog.step("backlog %s: %s heap + %s indexes (%.0f bytes per queued batch)", s.name, mib(res.heap), mib(res.index), float64(res.total)/float64(n))

	// Drain, with new batches arriving.
	var bounds []int64
	for _, m := range marks {
		from, to := depthWindow(n, m)
		bounds = append(bounds, from, to)
	}
	tr := newBacklogTracker(n, bounds)
	// The pick's cost at each mark: at the full depth before the drain
	// starts, at the others just after the mark's window (so as not to
	// slow the window down).
	nextExplain := 0
	explainDue := func(depth int64) error {
		for ; nextExplain < len(marks); nextExplain++ {
			if m := marks[nextExplain]; m < n {
				if _, to := depthWindow(n, m); depth > n-to {
					return nil
				}
			}
			c, err := e.explainPick(ctx, s)
			if err != nil {
				return err
			}
			res.explains[marks[nextExplain]] = c
		}
		return nil
	}
	if err := explainDue(n); err != nil {
		return nil, err
	}
	c0, start := e.cpuNow(), time.Now()
	stop, err := s.start(ctx, tr)
	if err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = stop()
		}
	}()
	pctx, stopProducing := context.WithCancel(ctx)
	defer stopProducing()
	type produced struct {
		ids   map[bool][]int64
		count int64
		took  time.Duration
		err   error
	}
	prodDone := make(chan produced, 1)
	go func() {
		ids, count, took, err := produceNew(pctx, tr, s, backlogNewRate)
		prodDone <- produced{ids, count, took, err}
	}()
	tick := time.NewTicker(5 * time.Second)
	look := time.NewTicker(20 * time.Millisecond)
	defer look.Stop()
	last, lastAt := int64(0), start
	prodEnded := prodDone // nil once the producer ended early
wait:
	for {
		select {
		case <-tr.drained:
			break wait
		case p := <-prodEnded:
			if p.err != nil {
				tick.Stop()
				return nil, fmt.Errorf("new batches: %w", p.err)
			}
			prodEnded = nil
			prodDone <- p
		case <-ctx.Done():
			tick.Stop()
			return nil, ctx.Err()
		case <-look.C:
			if err := explainDue(n - tr.done.Load()); err != nil {
				tick.Stop()
				return nil, err
			}
		case now := <-tick.C:
			d := tr.done.Load()
			prog.step("backlog %s: depth %d, %.0f batches/s", s.name, n-d, float64(d-last)/now.Sub(lastAt).Seconds())
			last, lastAt = d, now
		}
	}
	tick.Stop()
	res.drain = tr.when(n).Sub(start)
	stopProducing()
	p := <-prodDone
	if p.err != nil && !errors.Is(p.err, context.Canceled) {
		return nil, fmt.Errorf("new batches: %w", p.err)
	}
	res.newRate, res.newCount = float64(p.count)/p.took.Seconds(), p.count
	urgentN, sameN := int64(len(p.ids[true])), int64(len(p.ids[false]))
	if err := tr.urgent.finish(urgentN, backlogSettle); err != nil {
		return nil, fmt.Errorf("urgent new batches: %w", err)
	}
	if err := tr.same.finish(sameN, backlogSettle); err != nil {
		return nil, fmt.Errorf("new batches of the backlog's class: %w", err)
	}
	stopped = true
	if err := stop(); err != nil {
		return nil, fmt.Errorf("stop: %w", err)
	}
	res.cpuClient, res.cpuServer = e.cpuNow().sub(c0).perRow(int(n + p.count))
	for _, m := range marks {
		from, to := depthWindow(n, m)
		res.windows[m] = to - from
		res.rates[m] = float64(to-from) / tr.when(to).Sub(tr.when(from)).Seconds()
	}
	prog.step("backlog %s: drained in %s; %d new batches at %.0f/s", s.name, res.drain.Round(time.Millisecond), p.count, res.newRate)

	// Every batch completed once, and nothing else ran.
	if err := e.pool.QueryRow(ctx, s.counts).Scan(&res.completed, &res.left, &res.duplicates); err != nil {
		return nil, fmt.Errorf("counts: %w", err)
	}
	want := n + p.count
	if res.completed != want || res.left != 0 || res.duplicates != 0 || tr.handled.Load() != want {
		return res, fmt.Errorf("%d completed, %d left, %d completed more than once or retried, %d handler starts; want %d completed once",
			res.completed, res.left, res.duplicates, tr.handled.Load(), want)
	}
	res.urgent.start, _, _ = tr.urgent.samples()
	res.same.start, _, _ = tr.same.samples()
	for urgent, l := range map[bool]*backlogLatency{true: &res.urgent, false: &res.same} {
		ids := p.ids[urgent]
		rows, err := e.pool.Query(ctx, s.doneLatency, ids)
		if err != nil {
			return nil, fmt.Errorf("completion times: %w", err)
		}
		for rows.Next() {
			var sec float64
			if err := rows.Scan(&sec); err != nil {
				rows.Close()
				return nil, err
			}
			l.done = append(l.done, time.Duration(sec*float64(time.Second)))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		if len(l.done) != len(ids) {
			return nil, fmt.Errorf("%d completion records for %d new batches", len(l.done), len(ids))
		}
	}
	return res, nil
}

// fillBacklog splits rows 0..n-1 among backlogProducers producers, each
// enqueueing its share in calls of perCall rows.
func fillBacklog(ctx context.Context, n int64, fill func(ctx context.Context, p int, lo, hi int64) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, backlogProducers)
	share := (n + backlogProducers - 1) / backlogProducers
	for p := range backlogProducers {
		lo, hi := int64(p)*share, min(int64(p+1)*share, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for at := lo; at < hi; at += perCall {
				if err := fill(ctx, p, at, min(at+perCall, hi)); err != nil {
					errs <- err
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// produceNew enqueues new batches at rate until ctx ends, spreading the
// calls over backlogNewCallers goroutines so that a slow call does not
// hold the next one back. It returns the ids by class (true: urgent), how
// many it enqueued, and for how long it produced.
func produceNew(ctx context.Context, tr *backlogTracker, s *backlogSystem, rate float64) (map[bool][]int64, int64, time.Duration, error) {
	cls := backlogClass[s.name]
	seqs := make(chan int64)
	var mu sync.Mutex
	ids := map[bool][]int64{}
	var firstErr error
	var wg sync.WaitGroup
	for range backlogNewCallers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range seqs {
				prio := cls.backlog
				if urgentSeq(seq) {
					prio = cls.urgent
				}
				rec := tr.recorder(seq)
				rec.begin(seq)
				id, err := s.enqueueNew(context.WithoutCancel(ctx), seq, prio)
				rec.end(seq)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
				} else {
					ids[urgentSeq(seq)] = append(ids[urgentSeq(seq)], id)
				}
				mu.Unlock()
			}
		}()
	}
	t0 := time.Now()
	// Each wake-up hands out every batch due by then, so the rate holds on
	// average even when the scheduler or busy callers delay some.
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	var seq int64
produce:
	for {
		select {
		case <-ctx.Done():
			break produce
		case <-tick.C:
		}
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed {
			break
		}
		for due := int64(time.Since(t0).Seconds() * rate); seq < due; {
			select {
			case seqs <- seq + 1:
				seq++
			case <-ctx.Done():
				break produce
			}
		}
	}
	tick.Stop()
	took := time.Since(t0)
	close(seqs)
	wg.Wait()
	if firstErr != nil {
		return nil, 0, took, firstErr
	}
	return ids, int64(len(ids[true]) + len(ids[false])), took, nil
}

// report adds one system's figures.
func (r *backlogResult) report(rep *Report, s *backlogSystem, n int64, marks []int64) {
	add := func(metric string, v float64, unit string, params ...any) {
		rep.add(ScenarioBacklog, s.name, metric, v, unit, append([]any{"rows", n}, params...)...)
	}
	add("fill_rows_per_s", r.fillRate, "rows/s", "producers", backlogProducers, "rows_per_call", perCall, "config", s.config)
	add("heap_bytes", float64(r.heap), "bytes")
	add("index_bytes", float64(r.index), "bytes")
	add("total_bytes", float64(r.total), "bytes")
	add("bytes_per_batch", float64(r.total)/float64(n), "bytes")
	for _, t := range r.tables {
		add("table_heap_bytes", float64(t.heap), "bytes", "table", t.name)
		add("table_index_bytes", float64(t.index), "bytes", "table", t.name)
	}
	for _, m := range marks {
		add("batches_per_s", r.rates[m], "batches/s", "depth", m, "window_batches", r.windows[m])
		if c, ok := r.explains[m]; ok {
			add("pick_ms", c.ms, "ms", "depth", m, "limit", backlogClaimSize)
			add("pick_buffers", float64(c.buffers), "buffers", "depth", m, "limit", backlogClaimSize)
		}
	}
	if len(marks) >= 2 {
		deep, shallow := marks[0], marks[len(marks)-1]
		add("deep_over_shallow", ratio(r.rates[deep], r.rates[shallow]), "x", "deep", deep, "shallow", shallow)
	}
	add("drain_s", r.drain.Seconds(), "s")
	add("drain_batches_per_s", float64(n)/r.drain.Seconds(), "batches/s")
	add("new_batches", float64(r.newCount), "batches")
	add("new_batches_per_s", r.newRate, "batches/s")
	for _, c := range []struct {
		name string
		l    backlogLatency
	}{{"urgent", r.urgent}, {"same", r.same}} {
		p := []any{"class", c.name, "samples", len(c.l.done)}
		add("new_done_p50_ms", ms(percentile(c.l.done, 50)), "ms", p...)
		add("new_done_p99_ms", ms(percentile(c.l.done, 99)), "ms", p...)
		add("new_start_p50_ms", ms(percentile(c.l.start, 50)), "ms", p...)
		add("new_start_p99_ms", ms(percentile(c.l.start, 99)), "ms", p...)
		add("new_start_samples", float64(len(c.l.start)), "batches", "class", c.name)
	}
	add("completed", float64(r.completed), "batches")
	add("left", float64(r.left), "batches")
	add("duplicates", float64(r.duplicates), "batches")
	add("client_cpu_us_per_batch", r.cpuClient, "µs")
	if r.cpuServer >= 0 {
		add("server_cpu_us_per_batch", r.cpuServer, "µs")
	}
}

// backlogTargets adds the backlog scenario's ratio and checks its goals.
func backlogTargets(rep *Report) {
	check := func(name, want string, got float64, unit string, met bool) {
		rep.Targets = append(rep.Targets, Target{Name: name, Want: want, Got: got, Unit: unit, Met: met})
	}
	sk, ok := rep.get(ScenarioBacklog, SystemSkiplock, "bytes_per_batch")
	if rv, rok := rep.get(ScenarioBacklog, SystemRiver, "bytes_per_batch"); ok && rok && rv > 0 {
		rep.add(ScenarioBacklog, SystemSkiplock, "bytes_ratio_over_river", sk/rv, "x")
		check("backlog: bytes per queued batch, skiplock / River", "<= 0.5", sk/rv, "x", sk/rv <= 0.5)
	}
	rep.mu.Lock()
	var deep []Figure
	for _, f := range rep.Figures {
		if f.Scenario == ScenarioBacklog && f.System == SystemSkiplock && f.Metric == "deep_over_shallow" {
			deep = append(deep, f)
		}
	}
	rep.mu.Unlock()
	for _, f := range deep {
		check(fmt.Sprintf("backlog: claim+complete at depth %v / at depth %v, skiplock", f.Params["deep"], f.Params["shallow"]), ">= 0.9", f.Value, "x", f.Value >= 0.9)
	}
	if p99, ok := rep.get(ScenarioBacklog, SystemSkiplock, "new_done_p99_ms", "class", "urgent"); ok {
		check("backlog: new (urgent class) batches' enqueue → completion p99 while draining, skiplock", "< 1000", p99, "ms", p99 < 1000)
	}
}

// backlogTable writes the backlog scenario's figures side by side.
func (r *Report) backlogTable(w io.Writer) {
	if _, ok := r.get(ScenarioBacklog, SystemSkiplock, "fill_rows_per_s"); !ok {
		if _, ok := r.get(ScenarioBacklog, SystemRiver, "fill_rows_per_s"); !ok {
			return
		}
	}
	var n any
	r.mu.Lock()
	for _, f := range r.Figures {
		if f.Scenario == ScenarioBacklog && f.Metric == "fill_rows_per_s" {
			n = f.Params["rows"]
			break
		}
	}
	r.mu.Unlock()
	fmt.Fprintf(w, "\nBacklog: %s keyed batches enqueued, then drained while %.0f new batches/s arrive (half urgent, half in the backlog's class)\n", num(toFloat(n)), backlogNewRate)
	fmt.Fprintln(w, "\tskiplock\tRiver\t")
	line := func(label string, cell func(sys string) string) {
		fmt.Fprintf(w, "%s\t%s\t%s\t\n", label, cell(SystemSkiplock), cell(SystemRiver))
	}
	metric := func(m string, params ...any) func(string) string {
		return func(sys string) string { return r.cell(ScenarioBacklog, sys, m, params...) }
	}
	pair := func(a, b string, params ...any) func(string) string {
		return func(sys string) string {
			return r.cell(ScenarioBacklog, sys, a, params...) + " / " + r.cell(ScenarioBacklog, sys, b, params...)
		}
	}
	line("fill, keyed bulk enqueue (rows/s)", metric("fill_rows_per_s"))
	line("bytes per queued batch (heap + indexes)", metric("bytes_per_batch"))
	line("heap / index bytes", pair("heap_bytes", "index_bytes"))
	for _, d := range paramValues(r, ScenarioBacklog, SystemSkiplock, "batches_per_s", "depth") {
		line(fmt.Sprintf("claim+complete at depth %s (batches/s)", num(toFloat(d))), metric("batches_per_s", "depth", d))
	}
	line("deepest / shallowest mark", metric("deep_over_shallow"))
	for _, d := range paramValues(r, ScenarioBacklog, SystemSkiplock, "pick_ms", "depth") {
		line(fmt.Sprintf("head pick of %d at depth %s: ms / buffers", backlogClaimSize, num(toFloat(d))), pair("pick_ms", "pick_buffers", "depth", d))
	}
	line("time to drain the backlog (s)", metric("drain_s"))
	line("new batches arrived (per s)", metric("new_batches_per_s"))
	line("new, urgent: enqueue → completion p50 / p99 (ms)", pair("new_done_p50_ms", "new_done_p99_ms", "class", "urgent"))
	line("new, urgent: enqueue → handler start p50 / p99 (ms)", pair("new_start_p50_ms", "new_start_p99_ms", "class", "urgent"))
	line("new, backlog's class: enqueue → completion p50 / p99 (ms)", pair("new_done_p50_ms", "new_done_p99_ms", "class", "same"))
	line("completed / left / completed twice or retried", func(sys string) string {
		return r.cell(ScenarioBacklog, sys, "completed") + " / " + r.cell(ScenarioBacklog, sys, "left") + " / " + r.cell(ScenarioBacklog, sys, "duplicates")
	})
	line("CPU µs per batch over the drain, client + server", func(sys string) string {
		return r.cell(ScenarioBacklog, sys, "client_cpu_us_per_batch") + " + " + r.cell(ScenarioBacklog, sys, "server_cpu_us_per_batch")
	})
}

func toFloat(v any) float64 {
	switch x := v.(type) {
	case int64:
		return float64(x)
	case int:
		return float64(x)
	case float64:
		return x
	}
	return 0
}
