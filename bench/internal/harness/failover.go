package harness

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

// The failover load: producers enqueue keyed batches (one offset range
// each) every few milliseconds and runners handle them with a little work,
// all through one failover.Pool on the proxy standing in for the cluster
// endpoint.
const (
	foSchema       = "skiplock"
	foQueue        = "events"
	foProducers    = 2
	foWorkers      = 4
	foEnqueueEvery = 5 * time.Millisecond
	foWork         = 2 * time.Millisecond
	foSteady       = time.Second // load before and after each fault
	foRecoverLimit = 15 * time.Second
)

// foCluster is a primary and a streaming replica behind a proxy.
type foCluster struct {
	nodes  [2]*pgtest.Server
	proxy  *pgtest.Proxy
	direct [2]*pgxpool.Pool
	pool   *failover.Pool

	mu     sync.Mutex
	events []failover.Event
}

func (c *foCluster) addr(i int) string {
	return net.JoinHostPort(c.nodes[i].Host(), strconv.Itoa(c.nodes[i].Port()))
}

func startCluster(ctx context.Context) (_ *foCluster, err error) {
	c := &foCluster{}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	if c.nodes[0], err = pgtest.StartPrimary(ctx, nil); err != nil {
		return nil, err
	}
	if c.nodes[1], err = c.nodes[0].StartReplica(ctx, nil); err != nil {
		return nil, err
	}
	if c.proxy, err = pgtest.NewProxy(c.addr(0)); err != nil {
		return nil, err
	}
	for i := range c.nodes {
		cfg, err := pgxpool.ParseConfig(c.nodes[i].ConnString("postgres"))
		if err != nil {
			return nil, err
		}
		cfg.MaxConns = 4
		if c.direct[i], err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
			return nil, err
		}
	}
	m, err := migrations.New(c.direct[0], &migrations.Config{Schema: foSchema})
	if err != nil {
		return nil, err
	}
	if _, err := m.Up(ctx); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(c.proxy.ConnString("postgres"))
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 16
	c.pool, err = failover.New(ctx, &failover.Config{
		PoolConfig:     cfg,
		ProbeInterval:  250 * time.Millisecond,
		RebuildBackoff: 200 * time.Millisecond,
		OnEvent: func(e failover.Event) {
			c.mu.Lock()
			c.events = append(c.events, e)
			c.mu.Unlock()
		},
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (c *foCluster) close() {
	if c.pool != nil {
		c.pool.Close()
	}
	for _, p := range c.direct {
		if p != nil {
			p.Close()
		}
	}
	if c.proxy != nil {
		_ = c.proxy.Close()
	}
	for i := len(c.nodes) - 1; i >= 0; i-- {
		if c.nodes[i] != nil {
			_ = c.nodes[i].Close()
		}
	}
}

// staleDetectedAfter returns when the pool first reported node i's
// generation stale at or after t0.
func (c *foCluster) staleDetectedAfter(i int, t0 time.Time) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.events {
		if e.Kind == failover.EventStaleWriter && e.From.Port == c.nodes[i].Port() && !e.At.Before(t0) {
			return e.At, true
		}
	}
	return time.Time{}, false
}

// waitCaughtUp waits until node r has replayed what node p has written.
func (c *foCluster) waitCaughtUp(ctx context.Context, p, r int) error {
	var lsn string
	if err := c.direct[p].QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		return err
	}
	return pollUntil(ctx, 30*time.Second, "replica catch-up", func() (bool, error) {
		var ok bool
		err := c.direct[r].QueryRow(ctx, `SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn`, lsn).Scan(&ok)
		return ok, err
	})
}

// pollUntil checks cond every 10ms until it holds, fails, or d passes.
func pollUntil(ctx context.Context, d time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("timed out after %s waiting for %s", d, what)
		case <-tick.C:
		}
	}
}

// batchID names a batch across writers: after a failover that lost
// commits, a new writer can reuse an old batch's id.
type batchID struct {
	id      int64
	created int64 // Unix microseconds
}

// execution is one handler start of a batch.
type execution struct {
	token int64
	at    time.Time
	key   string // idempotency key: the batch's identity across writers
}

// foLoad is the producers and runners of one failover run, and what they
// saw: acknowledged enqueues and every handler start.
type foLoad struct {
	client  *queue.Client
	runners []*queue.Runner

	mu       sync.Mutex
	acked    map[string]bool
	execs    map[batchID][]execution
	waiters  []*execWaiter
	prodErrs int

	stopProd  context.CancelFunc
	producers sync.WaitGroup
}

type execWaiter struct {
	after time.Time
	ch    chan time.Time
}

func startLoad(ctx context.Context, db queue.DB) (*foLoad, error) {
	client, err := queue.New(db, &queue.Config{Schema: foSchema})
	if err != nil {
		return nil, err
	}
	l := &foLoad{client: client, acked: map[string]bool{}, execs: map[batchID][]execution{}}
	for w := range foWorkers {
		r, err := queue.NewRunner(client, &queue.RunnerConfig{
			Queue: foQueue, Concurrency: 4, ClaimSize: 4, LeaseDuration: 10 * time.Second,
			PollInterval: 100 * time.Millisecond, ReclaimInterval: 200 * time.Millisecond, Owner: fmt.Sprintf("bench-worker-%d", w),
			Handler: func(ctx context.Context, b *batch.Batch) error {
				l.record(batchID{b.ID, b.CreatedAt.UnixMicro()}, execution{token: b.Lease.Token, at: time.Now(), key: b.IdempotencyKey})
				select {
				case <-time.After(foWork): // a little work, so batches are in flight when faults hit
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			},
		})
		if err == nil {
			err = r.Start(ctx)
		}
		if err != nil {
			l.stop()
			return nil, err
		}
		l.runners = append(l.runners, r)
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.stopProd = cancel
	for p := range foProducers {
		l.producers.Add(1)
		go l.produce(pctx, int32(p))
	}
	return l, nil
}

func (l *foLoad) record(id batchID, e execution) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.execs[id] = append(l.execs[id], e)
	l.waiters = slices.DeleteFunc(l.waiters, func(w *execWaiter) bool {
		if e.at.After(w.after) {
			w.ch <- e.at
			return true
		}
		return false
	})
}

func (l *foLoad) produce(ctx context.Context, part int32) {
	defer l.producers.Done()
	tick := time.NewTicker(foEnqueueEvery)
	defer tick.Stop()
	for i := int64(0); ctx.Err() == nil; i++ {
		src := batch.Source{Topic: "orders", Partition: part, Start: i * 100, End: (i + 1) * 100}
		_, err := l.client.Enqueue(ctx, queue.EnqueueParams{Queue: foQueue,
			Meta: batch.Meta{Source: src, URI: fmt.Sprintf("s3://events/orders/%d/%d", part, i), EventCount: 100}})
		l.mu.Lock()
		if err == nil {
			l.acked[src.Key()] = true
		} else if ctx.Err() == nil {
			l.prodErrs++
		}
		l.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// firstStartAfter waits for the first handler start after t0 and returns
// how long after t0 it was: the recovery time when t0 is the moment a
// writer became reachable through the endpoint.
func (l *foLoad) firstStartAfter(ctx context.Context, t0 time.Time) (time.Duration, error) {
	w := &execWaiter{after: t0, ch: make(chan time.Time, 1)}
	l.mu.Lock()
	l.waiters = append(l.waiters, w)
	l.mu.Unlock()
	select {
	case at := <-w.ch:
		return at.Sub(t0), nil
	case <-time.After(foRecoverLimit):
		return 0, fmt.Errorf("no handler started within %s of a writer becoming reachable", foRecoverLimit)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (l *foLoad) stopProducers() {
	if l.stopProd != nil {
		l.stopProd()
	}
	l.producers.Wait()
}

func (l *foLoad) stop() {
	l.stopProducers()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range l.runners {
		_ = r.StopAndCancel(ctx)
	}
	_ = l.client.Close()
}

// foOutcome is the invariant check of one run.
type foOutcome struct {
	acked, completed, queued      int
	lost, staleCompletions, dupes int
	executions                    int
	generations                   int64
	version                       string // the servers' PostgreSQL version
}

// finish stops the producers, lets the runners drain every acknowledged
// batch on the final writer, stops them, and checks there: every
// acknowledged enqueue ended completed exactly once or is still queued;
// every completion on record carries the token of the batch's latest claim;
// batches handled more than once (by idempotency key) are counted.
func (l *foLoad) finish(ctx context.Context, final *pgxpool.Pool) (foOutcome, error) {
	l.stopProducers()
	var out foOutcome
	err := pollUntil(ctx, 60*time.Second, "the drain of acknowledged batches", func() (bool, error) {
		var queued int
		err := final.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{foSchema, "batch"}.Sanitize()+` WHERE queue = $1 AND state <> 'dead'`, foQueue).Scan(&queued)
		return queued == 0, err
	})
	if err != nil {
		return out, err
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	for _, r := range l.runners {
		if err := r.Stop(sctx); err != nil {
			return out, fmt.Errorf("stop runner: %w", err)
		}
	}
	l.mu.Lock()
	keys := make([]string, 0, len(l.acked))
	for k := range l.acked {
		keys = append(keys, k)
	}
	execs := l.execs
	l.mu.Unlock()
	out.acked = len(keys)
	s := func(t string) string { return pgx.Identifier{foSchema, t}.Sanitize() }
	rows, err := final.Query(ctx, `
SELECT k.batch_id,
    (SELECT count(*) FROM `+s("batch_done")+` d WHERE d.id = k.batch_id),
    EXISTS (SELECT 1 FROM `+s("batch")+` b WHERE b.id = k.batch_id)
FROM unnest($2::text[]) AS u(key)
LEFT JOIN `+s("batch_key")+` k ON k.queue = $1 AND k.idempotency_key = u.key`, foQueue, keys)
	if err != nil {
		return out, err
	}
	var (
		id     *int64
		done   int
		queued bool
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &done, &queued}, func() error {
		switch {
		case id == nil, done == 0 && !queued, done > 1:
			out.lost++ // missing, or completed more than once: a broken invariant either way
		case done == 1:
			out.completed++
		default:
			out.queued++
		}
		return nil
	})
	if err != nil {
		return out, err
	}
	rows, err = final.Query(ctx, `SELECT id, lease_token, created_at FROM `+s("batch_done"))
	if err != nil {
		return out, err
	}
	var (
		doneID, doneTok int64
		doneCreated     time.Time
	)
	_, err = pgx.ForEachRow(rows, []any{&doneID, &doneTok, &doneCreated}, func() error {
		es := execs[batchID{doneID, doneCreated.UnixMicro()}]
		if len(es) == 0 {
			out.staleCompletions++
			return nil
		}
		latest := slices.MaxFunc(es, func(a, b execution) int { return a.at.Compare(b.at) })
		if latest.token != doneTok {
			out.staleCompletions++
		}
		return nil
	})
	if err != nil {
		return out, err
	}
	perKey := map[string]int{}
	for _, es := range execs {
		out.executions += len(es)
		for _, e := range es {
			perKey[e.key]++
		}
	}
	for _, n := range perKey {
		if n > 1 {
			out.dupes++
		}
	}
	return out, nil
}

// faultRun is what a fault did: the recoveries it measured, and the node
// that ends as the writer.
type faultRun struct {
	final      int
	recoveries map[string]time.Duration // phase -> recovery
	extra      map[string]time.Duration // other timings (detection, takeover)
}

type faultFunc func(ctx context.Context, c *foCluster, l *foLoad) (faultRun, error)

// faultKinds returns the faults of the failover issue, in order.
func faultKinds(cfg *Config) []struct {
	name string
	run  faultFunc
} {
	recover1 := func(ctx context.Context, l *foLoad, phase string, t0 time.Time, r *faultRun) error {
		d, err := l.firstStartAfter(ctx, t0)
		if err != nil {
			return fmt.Errorf("%s: %w", phase, err)
		}
		r.recoveries[phase] = d
		return nil
	}
	newRun := func(final int) faultRun {
		return faultRun{final: final, recoveries: map[string]time.Duration{}, extra: map[string]time.Duration{}}
	}
	kinds := []struct {
		name string
		run  faultFunc
	}{
		{"planned failover", func(ctx context.Context, c *foCluster, l *foLoad) (faultRun, error) {
			r := newRun(1)
			if err := c.nodes[0].DemoteReadOnly(ctx); err != nil {
				return r, err
			}
			if err := c.waitCaughtUp(ctx, 0, 1); err != nil {
				return r, err
			}
			if err := c.nodes[1].Promote(ctx); err != nil {
				return r, err
			}
			<-time.After(500 * time.Millisecond) // the endpoint follows after a delay
			c.proxy.SetTarget(c.addr(1))
			return r, recover1(ctx, l, "endpoint switched", time.Now(), &r)
		}},
		{"stale endpoint", func(ctx context.Context, c *foCluster, l *foLoad) (faultRun, error) {
			r := newRun(1)
			if err := c.nodes[0].DemoteReadOnly(ctx); err != nil {
				return r, err
			}
			if err := c.nodes[1].Promote(ctx); err != nil {
				return r, err
			}
			<-time.After(cfg.StaleWindow) // the endpoint still points at the demoted node
			c.proxy.SetTarget(c.addr(1))
			return r, recover1(ctx, l, "endpoint switched", time.Now(), &r)
		}},
		{"reversed failover", func(ctx context.Context, c *foCluster, l *foLoad) (faultRun, error) {
			r := newRun(0)
			if err := c.nodes[0].DemoteReadOnly(ctx); err != nil {
				return r, err
			}
			if err := c.nodes[1].Promote(ctx); err != nil {
				return r, err
			}
			c.proxy.SetTarget(c.addr(1))
			if err := recover1(ctx, l, "switch", time.Now(), &r); err != nil {
				return r, err
			}
			<-time.After(1500 * time.Millisecond) // work is acknowledged on the new writer, then the switch reverses
			if err := c.nodes[1].DemoteReadOnly(ctx); err != nil {
				return r, err
			}
			if err := c.nodes[0].UndoReadOnly(ctx); err != nil {
				return r, err
			}
			c.proxy.SetTarget(c.addr(0))
			return r, recover1(ctx, l, "flip back", time.Now(), &r)
		}},
		{"split brain", func(ctx context.Context, c *foCluster, l *foLoad) (faultRun, error) {
			r := newRun(1)
			if err := c.nodes[1].Promote(ctx); err != nil { // the old writer stays writable
				return r, err
			}
			c.proxy.SetTarget(c.addr(1))
			moved := time.Now()
			if err := recover1(ctx, l, "endpoint switched", moved, &r); err != nil {
				return r, err
			}
			err := pollUntil(ctx, 10*time.Second, "split-brain detection", func() (bool, error) {
				at, ok := c.staleDetectedAfter(0, moved.Add(-time.Second))
				if ok {
					r.extra["split_brain_detected"] = max(at.Sub(moved), 0)
				}
				return ok, nil
			})
			return r, err
		}},
		{"blackhole", func(ctx context.Context, c *foCluster, l *foLoad) (faultRun, error) {
			r := newRun(0)
			c.proxy.Blackhole(true)
			<-time.After(cfg.BlackholeWindow)
			c.proxy.Blackhole(false)
			return r, recover1(ctx, l, "traffic flows again", time.Now(), &r)
		}},
		{"admin shutdown", func(ctx context.Context, c *foCluster, l *foLoad) (faultRun, error) {
			r := newRun(0)
			if _, err := c.nodes[0].TerminateBackends(ctx); err != nil {
				return r, err
			}
			if err := recover1(ctx, l, "backends terminated", time.Now(), &r); err != nil {
				return r, err
			}
			<-time.After(time.Second)
			if err := c.nodes[0].Restart(ctx); err != nil {
				return r, err
			}
			return r, recover1(ctx, l, "server restarted", time.Now(), &r)
		}},
	}
	if cfg.WorkerCrash {
		kinds = append(kinds, struct {
			name string
			run  faultFunc
		}{"worker crash", workerCrash})
	}
	return kinds
}

// runFailover runs every fault kind FailoverRepeat times, each on a fresh
// primary and replica, and reports recovery times and the invariant check.
func runFailover(ctx context.Context, cfg *Config, rep *Report, prog *progress) error {
	var all []time.Duration
	var total foOutcome
	for _, kind := range faultKinds(cfg) {
		for k := 1; k <= cfg.FailoverRepeat; k++ {
			prog.step("failover %s #%d: starting a primary and a replica", kind.name, k)
			run, out, err := oneFault(ctx, kind.run)
			if err != nil {
				return fmt.Errorf("failover %s #%d: %w", kind.name, k, err)
			}
			if rep.Header.PostgreSQL == "" {
				rep.Header.PostgreSQL = out.version
			}
			params := []any{"kind", kind.name, "run", k}
			for phase, d := range run.recoveries {
				all = append(all, d)
				rep.add(ScenarioFailover, SystemSkiplock, "recovery_ms", ms(d), "ms", append(slices.Clone(params), "phase", phase)...)
			}
			for name, d := range run.extra {
				rep.add(ScenarioFailover, SystemSkiplock, name+"_ms", ms(d), "ms", params...)
			}
			rep.add(ScenarioFailover, SystemSkiplock, "acked", float64(out.acked), "batches", params...)
			rep.add(ScenarioFailover, SystemSkiplock, "lost", float64(out.lost), "batches", params...)
			rep.add(ScenarioFailover, SystemSkiplock, "duplicates", float64(out.dupes), "batches", params...)
			rep.add(ScenarioFailover, SystemSkiplock, "stale_completions", float64(out.staleCompletions), "batches", params...)
			total.acked += out.acked
			total.lost += out.lost
			total.dupes += out.dupes
			total.staleCompletions += out.staleCompletions
			prog.step("failover %s #%d: acked %d, lost %d, duplicates %d, stale completions %d, generations %d, recovery %s%s",
				kind.name, k, out.acked, out.lost, out.dupes, out.staleCompletions, out.generations, fmtRecoveries(run.recoveries), fmtExtra(run.extra))
		}
	}
	runs := cfg.FailoverRepeat
	rep.add(ScenarioFailover, SystemSkiplock, "recovery_p50_ms", ms(percentile(all, 50)), "ms", "samples", len(all), "runs_per_kind", runs)
	rep.add(ScenarioFailover, SystemSkiplock, "recovery_p99_ms", ms(percentile(all, 99)), "ms", "samples", len(all), "runs_per_kind", runs)
	rep.add(ScenarioFailover, SystemSkiplock, "recovery_max_ms", ms(percentile(all, 100)), "ms", "samples", len(all), "runs_per_kind", runs)
	rep.add(ScenarioFailover, SystemSkiplock, "total_acked", float64(total.acked), "batches", "runs_per_kind", runs)
	rep.add(ScenarioFailover, SystemSkiplock, "total_lost", float64(total.lost), "batches", "runs_per_kind", runs)
	rep.add(ScenarioFailover, SystemSkiplock, "total_duplicates", float64(total.dupes), "batches", "runs_per_kind", runs)
	rep.add(ScenarioFailover, SystemSkiplock, "total_stale_completions", float64(total.staleCompletions), "batches", "runs_per_kind", runs)
	if total.lost > 0 || total.staleCompletions > 0 {
		return fmt.Errorf("failover: broken invariant: %d lost, %d stale completions", total.lost, total.staleCompletions)
	}
	return nil
}

func oneFault(ctx context.Context, fault faultFunc) (faultRun, foOutcome, error) {
	c, err := startCluster(ctx)
	if err != nil {
		return faultRun{}, foOutcome{}, err
	}
	defer c.close()
	var version string
	if err := c.direct[0].QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&version); err != nil {
		return faultRun{}, foOutcome{}, err
	}
	l, err := startLoad(ctx, c.pool)
	if err != nil {
		return faultRun{}, foOutcome{}, err
	}
	defer l.stop()
	<-time.After(foSteady)
	run, err := fault(ctx, c, l)
	if err != nil {
		return run, foOutcome{}, err
	}
	<-time.After(foSteady)
	out, err := l.finish(ctx, c.direct[run.final])
	out.generations = c.pool.Generation()
	out.version = version
	if err == nil && out.acked == 0 {
		err = errors.New("no enqueue was acknowledged")
	}
	return run, out, err
}

func fmtRecoveries(m map[string]time.Duration) string {
	var s string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%s %s", k, m[k].Round(time.Millisecond))
	}
	return s
}

func fmtExtra(m map[string]time.Duration) string {
	var s string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		s += fmt.Sprintf("; %s %s", k, m[k].Round(time.Millisecond))
	}
	return s
}
