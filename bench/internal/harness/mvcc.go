package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/queue"
)

// The mvcc scenario: the soak's churn, for each system, without an old
// snapshot and while one is held for the whole run, on the primary or on a
// replica that reports it back (hot_standby_feedback).
//
// Variants:
//   - none: no old snapshot (the baseline every window is compared with);
//   - primary: a REPEATABLE READ transaction on the measured database takes
//     its snapshot with one query (which locks no table) and then sits idle
//     in it for the whole run, as a pg_dump or a forgotten session does;
//   - replica: the same transaction on a streaming replica running with
//     hot_standby_feedback = on, which makes the primary keep every row
//     that snapshot can see. The replica streams through every variant (so
//     all of them pay for shipping the WAL alike); only here does it hold a
//     snapshot.
const (
	MVCCNone    = "none"
	MVCCPrimary = "primary"
	MVCCReplica = "replica"
)

// AllMVCCVariants are the mvcc scenario's variants in the order they run.
var AllMVCCVariants = []string{MVCCNone, MVCCPrimary, MVCCReplica}

// riverChurnWorkers is River's handler slots in the churn: the same as
// skiplock's runners together (soakWorkers × 2 × soakClaimSize), in one
// client (River's best throughput configuration at claim size 100).
const riverChurnWorkers = soakWorkers * 2 * soakClaimSize

// mvccReplicaSettings are the replica's settings on top of the throwaway
// server's: feedback on, reported every second; replay waits for the held
// snapshot rather than cancelling it (it holds no lock on the queue tables,
// so nothing should conflict, but a cancelled holder would silently end
// the variant).
var mvccReplicaSettings = map[string]string{
	"hot_standby_feedback":         "on",
	"wal_receiver_status_interval": "1s",
	"max_standby_streaming_delay":  "-1",
}

// ParseMVCCSystems parses a comma-separated list of systems for the mvcc
// scenario ("all": skiplock and River).
func ParseMVCCSystems(s string) ([]string, error) {
	if s == "all" {
		return []string{SystemSkiplock, SystemRiver}, nil
	}
	var out []string
	for _, v := range strings.Split(s, ",") {
		v = strings.TrimSpace(v)
		if v != SystemSkiplock && v != SystemRiver {
			return nil, fmt.Errorf("unknown mvcc system %q (known: %s, %s)", v, SystemSkiplock, SystemRiver)
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out, nil
}

// ParseMVCCVariants parses a comma-separated list of mvcc variants ("all"
// or "" for every one).
func ParseMVCCVariants(s string) ([]string, error) {
	if s == "" || s == "all" {
		return slices.Clone(AllMVCCVariants), nil
	}
	var out []string
	for _, v := range strings.Split(s, ",") {
		v = strings.TrimSpace(v)
		if !slices.Contains(AllMVCCVariants, v) {
			return nil, fmt.Errorf("unknown mvcc variant %q (known: %s)", v, strings.Join(AllMVCCVariants, ", "))
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	// Run in the canonical order, so the baseline comes first.
	slices.SortFunc(out, func(a, b string) int { return slices.Index(AllMVCCVariants, a) - slices.Index(AllMVCCVariants, b) })
	return out, nil
}

// validateMVCC checks the mvcc fields when the scenario is to run.
func (c *Config) validateMVCC() error {
	if !c.has(ScenarioMVCC) {
		return nil
	}
	switch {
	case c.MVCCWindow <= 0 || c.MVCCDuration < c.MVCCWindow:
		return fmt.Errorf("MVCCWindow must be positive and MVCCDuration at least MVCCWindow")
	case len(c.MVCCVariants) == 0:
		return fmt.Errorf("MVCCVariants must not be empty")
	case len(c.MVCCSystems) == 0:
		return fmt.Errorf("MVCCSystems must not be empty")
	}
	for _, s := range c.MVCCSystems {
		if s != SystemSkiplock && s != SystemRiver {
			return fmt.Errorf("MVCCSystems: unknown system %q (known: %s, %s)", s, SystemSkiplock, SystemRiver)
		}
	}
	for _, v := range c.MVCCVariants {
		if !slices.Contains(AllMVCCVariants, v) {
			return fmt.Errorf("MVCCVariants: unknown variant %q", v)
		}
	}
	return nil
}

// claimTimer times the claim round trips of one system through a pgx
// tracer on the pool its workers use. skiplock: the runner's pipelined
// round trip that carries a claim (SendBatch to Close; it also carries the
// completions acknowledged since the previous one). River: its fetch query
// (JobGetAvailable: lock and mark running up to the free slots), Query to
// rows closed. For skiplock it also times the claim statement's own part
// of the round trip: from when pgx asks for its result (the completions
// ahead of it consumed) to its rows closed.
type claimTimer struct {
	kind func(sql string) (claim, full bool)

	mu      sync.Mutex
	samples []claimSample
	failed  int
}

type claimSample struct {
	took time.Duration
	stmt time.Duration // the claim statement's part of a pipelined round trip; 0: not known
	full bool          // skiplock: a claim from the head of the claim index
}

type claimStartKey struct{}

type claimStart struct {
	at   time.Time
	full bool
	stmt time.Duration
}

// skiplockClaimKind recognizes skiplock's claim statements (queue/sql.go):
// "full" are the ones that read below the claim floor (the full claim at
// start, and the floored claims that carry a slice of the sweep below the
// floor).
func skiplockClaimKind(sql string) (claim, full bool) {
	switch {
	case strings.HasPrefix(sql, "WITH picked AS (") && strings.Contains(sql, "SKIP LOCKED"),
		strings.HasPrefix(sql, "WITH urgent AS (") && strings.Contains(sql, "\nbelow AS (") && strings.Contains(sql, "SKIP LOCKED"):
		return true, true
	case strings.HasPrefix(sql, "WITH urgent AS (") && strings.Contains(sql, "SKIP LOCKED"):
		return true, false
	}
	return false, false
}

// riverClaimKind recognizes River's fetch (sqlc names it in a comment).
func riverClaimKind(sql string) (claim, full bool) {
	return strings.HasPrefix(sql, "-- name: JobGetAvailable "), true
}

func (t *claimTimer) start(ctx context.Context, sql string) context.Context {
	if claim, full := t.kind(sql); claim {
		return context.WithValue(ctx, claimStartKey{}, &claimStart{at: time.Now(), full: full})
	}
	return ctx
}

func (t *claimTimer) end(ctx context.Context, err error) {
	s, ok := ctx.Value(claimStartKey{}).(*claimStart)
	if !ok {
		return
	}
	took := time.Since(s.at)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.failed++
		return
	}
	t.samples = append(t.samples, claimSample{took: took, stmt: s.stmt, full: s.full})
}

func (t *claimTimer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return t.start(ctx, d.SQL)
}

func (t *claimTimer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	t.end(ctx, d.Err)
}

func (t *claimTimer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	if d.Batch == nil {
		return ctx
	}
	for _, q := range d.Batch.QueuedQueries {
		if claim, _ := t.kind(q.SQL); claim {
			return t.start(ctx, q.SQL)
		}
	}
	return ctx
}

func (t *claimTimer) TraceBatchQuery(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	s, ok := ctx.Value(claimStartKey{}).(*claimStart)
	if !ok || d.ReadStartTime.IsZero() {
		return
	}
	if claim, _ := t.kind(d.SQL); claim {
		s.stmt = time.Since(d.ReadStartTime)
	}
}

func (t *claimTimer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchEndData) {
	t.end(ctx, d.Err)
}

// take returns the samples since the previous take, and how many claims
// failed.
func (t *claimTimer) take() ([]claimSample, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, f := t.samples, t.failed
	t.samples, t.failed = nil, 0
	return s, f
}

// relState is a hot table's size and statistics at one moment.
type relState struct {
	heap, indexes, total int64
	dead, live           int64
	vacuums              int64 // manual and auto, since the table was created
	scans, entriesRead   int64 // of the claim index, since the table was created
}

// hotTable names each system's hot table and the index its claims read.
var hotTable = map[string]struct{ schema, table, claimIndex string }{
	SystemSkiplock: {skiplockSchema, "batch", "batch_claim_idx"},
	SystemRiver:    {riverSchema, "river_job", "river_job_prioritized_fetching_index"},
}

const sqlRelState = `SELECT pg_relation_size(c.oid), pg_indexes_size(c.oid), pg_total_relation_size(c.oid),
    coalesce(pg_stat_get_dead_tuples(c.oid), 0), coalesce(pg_stat_get_live_tuples(c.oid), 0),
    coalesce(pg_stat_get_vacuum_count(c.oid), 0) + coalesce(pg_stat_get_autovacuum_count(c.oid), 0),
    coalesce(pg_stat_get_numscans(i.oid), 0), coalesce(pg_stat_get_tuples_returned(i.oid), 0)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class i ON i.relnamespace = n.oid AND i.relname = $3
WHERE n.nspname = $1 AND c.relname = $2`

func (e *env) relState(ctx context.Context, system string) (relState, error) {
	h := hotTable[system]
	var s relState
	err := e.pool.QueryRow(ctx, sqlRelState, h.schema, h.table, h.claimIndex).Scan(
		&s.heap, &s.indexes, &s.total, &s.dead, &s.live, &s.vacuums, &s.scans, &s.entriesRead)
	return s, err
}

// sqlHorizonAge is how many transactions old the primary's xmin horizon is
// (the oldest snapshot of its sessions or reported by a standby), and the
// snapshot whose xmin (an xid8) is $1 (-1 for NULL), read together.
const sqlHorizonAge = `SELECT greatest(
    (SELECT coalesce(max(age(backend_xmin)), 0) FROM pg_stat_activity),
    (SELECT coalesce(max(age(backend_xmin)), 0) FROM pg_stat_replication))::int8,
    coalesce(age(($1::int8 % 4294967296)::text::xid), -1)::int8`

// snapshotHolder is a REPEATABLE READ transaction that took its snapshot
// with one query and then sits idle in it.
type snapshotHolder struct {
	variant string
	tx      pgx.Tx
	pid     uint32
	xmin    int64 // the snapshot's xmin (pg_snapshot_xmin, an xid8)
	release func()
}

// holdSnapshot opens the holder of variant (primary or replica).
func (e *env) holdSnapshot(ctx context.Context, variant string, replica *pgtest.Server) (*snapshotHolder, error) {
	h := &snapshotHolder{variant: variant}
	var begin func(context.Context, pgx.TxOptions) (pgx.Tx, error)
	switch variant {
	case MVCCPrimary:
		c, err := e.pool.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		begin, h.release, h.pid = c.BeginTx, c.Release, c.Conn().PgConn().PID()
	case MVCCReplica:
		c, err := pgx.Connect(ctx, replica.ConnString("postgres"))
		if err != nil {
			return nil, fmt.Errorf("connect to the replica: %w", err)
		}
		begin, h.release, h.pid = c.BeginTx, func() { _ = c.Close(context.Background()) }, c.PgConn().PID()
	default:
		return nil, fmt.Errorf("variant %q holds no snapshot", variant)
	}
	tx, err := begin(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		h.release()
		return nil, err
	}
	h.tx = tx
	// The one query: it takes the snapshot and locks nothing.
	if err := tx.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8`).Scan(&h.xmin); err != nil {
		h.close()
		return nil, err
	}
	// Wait until the primary's horizon is held by it: at once for the
	// primary's own session, after the next feedback message for the
	// replica's.
	q := `SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = $1 AND backend_xmin::text::int8 <= $2`
	if variant == MVCCReplica {
		q = `SELECT count(*) > 0 FROM pg_stat_replication WHERE $1::int8 IS NOT NULL AND backend_xmin::text::int8 <= $2`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var held bool
		if err := e.pool.QueryRow(ctx, q, int64(h.pid), h.xmin%(1<<32)).Scan(&held); err != nil {
			h.close()
			return nil, err
		}
		if held {
			return h, nil
		}
		if time.Now().After(deadline) {
			h.close()
			return nil, fmt.Errorf("the %s snapshot (xmin %d) did not hold back the primary's xmin horizon within 30s", variant, h.xmin)
		}
		select {
		case <-ctx.Done():
			h.close()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// alive reports whether the holder's transaction still works (a standby
// may cancel it; a terminated session ends it).
func (h *snapshotHolder) alive(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := h.tx.Exec(ctx, `SELECT 1`)
	return err == nil
}

func (h *snapshotHolder) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = h.tx.Rollback(ctx)
	h.release()
}

// churn is one system's side of the soak workload.
type churn interface {
	start(ctx context.Context) error
	enqueue(ctx context.Context, p, i int) error // soakPerCall batches
	completed() int64
	claimCounts() (full, floored int64) // skiplock's runner statistics; 0, 0 for River
	stop(ctx context.Context) error
}

type skiplockChurn struct {
	client  *queue.Client
	runners []*queue.Runner
	done    atomic.Int64
	params  []queue.EnqueueParams
}

func newSkiplockChurn(pool *pgxpool.Pool) (*skiplockChurn, error) {
	c, err := queue.New(pool, &queue.Config{Schema: skiplockSchema})
	if err != nil {
		return nil, err
	}
	s := &skiplockChurn{client: c, params: make([]queue.EnqueueParams, soakPerCall)}
	for range soakWorkers {
		r, err := queue.NewRunner(c, &queue.RunnerConfig{
			Queue: benchQueue, Concurrency: 2 * soakClaimSize, ClaimSize: soakClaimSize, PollInterval: 100 * time.Millisecond,
			Handler: func(context.Context, *batch.Batch) error {
				s.done.Add(1)
				return nil
			},
		})
		if err != nil {
			_ = c.Close()
			return nil, err
		}
		s.runners = append(s.runners, r)
	}
	return s, nil
}

func (s *skiplockChurn) start(ctx context.Context) error {
	for _, r := range s.runners {
		if err := r.Start(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (s *skiplockChurn) enqueue(ctx context.Context, p, i int) error {
	ps := make([]queue.EnqueueParams, soakPerCall)
	for j := range ps {
		ps[j] = queue.EnqueueParams{Queue: benchQueue, Meta: skiplockMeta(p, i*soakPerCall+j)}
	}
	_, err := s.client.EnqueueMany(ctx, ps)
	return err
}

func (s *skiplockChurn) completed() int64 { return s.done.Load() }

func (s *skiplockChurn) claimCounts() (full, floored int64) {
	for _, r := range s.runners {
		st := r.Stats()
		full += st.FullClaims + st.SliceClaims
		floored += st.FlooredClaims
	}
	return full, floored
}

func (s *skiplockChurn) stop(ctx context.Context) error {
	var errs []error
	for _, r := range s.runners {
		errs = append(errs, r.Stop(ctx)) // a runner never started stops at once
	}
	errs = append(errs, s.client.Close())
	return errors.Join(errs...)
}

type riverChurn struct {
	client  *river.Client[pgx.Tx]
	done    atomic.Int64
	cancel  func()
	counted chan struct{}
}

func newRiverChurn(pool *pgxpool.Pool) (*riverChurn, error) {
	workers := river.NewWorkers()
	river.AddWorker(workers, river.WorkFunc(func(context.Context, *river.Job[riverArgs]) error { return nil }))
	c, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Schema:            riverSchema,
		Logger:            quietLogger(),
		FetchCooldown:     riverFast.cooldown,
		FetchPollInterval: riverFast.poll,
		Workers:           workers,
		Queues:            map[string]river.QueueConfig{benchQueue: {MaxWorkers: riverChurnWorkers}},
	})
	if err != nil {
		return nil, err
	}
	return &riverChurn{client: c}, nil
}

func (s *riverChurn) start(ctx context.Context) error {
	events, cancel := s.client.SubscribeConfig(&river.SubscribeConfig{ChanSize: 100_000, Kinds: []river.EventKind{river.EventKindJobCompleted}})
	s.cancel, s.counted = cancel, make(chan struct{})
	go func() {
		defer close(s.counted)
		for ev := range events {
			if ev == nil {
				return
			}
			s.done.Add(1)
		}
	}()
	return s.client.Start(ctx)
}

func (s *riverChurn) enqueue(ctx context.Context, p, i int) error {
	ps := make([]river.InsertManyParams, soakPerCall)
	for j := range ps {
		ps[j] = river.InsertManyParams{Args: riverJob(p, i*soakPerCall+j), InsertOpts: &river.InsertOpts{Queue: benchQueue}}
	}
	_, err := s.client.InsertManyFast(ctx, ps)
	return err
}

func (s *riverChurn) completed() int64 { return s.done.Load() }

func (s *riverChurn) claimCounts() (int64, int64) { return 0, 0 }

func (s *riverChurn) stop(ctx context.Context) error {
	err := s.client.Stop(ctx)
	if s.cancel != nil {
		s.cancel()
		<-s.counted
	}
	return err
}

// mvccWindow is what one window of one run measured.
type mvccWindow struct {
	end            float64 // seconds since the run started
	rate           float64 // completions/s
	claims         int
	claimsFailed   int
	p50, p99       time.Duration
	fullClaims     int // skiplock: claims below the floor: from the head of the index, or carrying a slice (timed)
	fullP99        time.Duration
	stmtP99        time.Duration // skiplock: the claim statement's part of the round trip (0: not known)
	floored        int64         // skiplock: floored claims (runner statistics)
	rel            relState
	entriesPerScan float64 // claim index entries read per scan in the window; -1 without scans
	horizonAge     int64
	holderAge      int64 // -1 without a holder
}

// mvccRun runs the churn of system under variant for cfg.MVCCDuration and
// returns its windows, and whether the holder (if any) survived the run.
func (e *env) mvccRun(ctx context.Context, cfg *Config, system, variant string, replica *pgtest.Server, prog *progress) (_ []mvccWindow, survived bool, err error) {
	if err := e.prefill(ctx, system, soakBacklog); err != nil {
		return nil, false, err
	}
	if err := e.exec(ctx, `CHECKPOINT`); err != nil {
		return nil, false, err
	}
	timer := &claimTimer{kind: skiplockClaimKind}
	if system == SystemRiver {
		timer.kind = riverClaimKind
	}
	pcfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		return nil, false, errors.New("parse the connection string: invalid (not shown)")
	}
	pcfg.MaxConns = poolConns
	pcfg.ConnConfig.Tracer = timer
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, false, err
	}
	defer pool.Close()
	var w churn
	if system == SystemRiver {
		w, err = newRiverChurn(pool)
	} else {
		w, err = newSkiplockChurn(pool)
	}
	if err != nil {
		return nil, false, err
	}
	stopped := false
	stopWorkload := func() error {
		if stopped {
			return nil
		}
		stopped = true
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		return w.stop(sctx)
	}
	defer func() { _ = stopWorkload() }()

	var holder *snapshotHolder
	if variant != MVCCNone {
		if holder, err = e.holdSnapshot(ctx, variant, replica); err != nil {
			return nil, false, err
		}
		defer holder.close()
	}
	st0, err := e.relState(ctx, system)
	if err != nil {
		return nil, false, err
	}
	var diag *diagSampler
	if cfg.Diag {
		diag = e.startDiag(ctx, hotTable[system].schema, prog)
		defer diag.close()
	}

	pctx, stopProducers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopProducers()
		wg.Wait()
	}()
	var prodErr atomic.Value
	var enqueued atomic.Int64
	t0 := time.Now()
	if err := w.start(ctx); err != nil {
		return nil, false, err
	}
	for p := range soakProducers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; pctx.Err() == nil; i++ {
				if enqueued.Load()+soakBacklog-w.completed() > soakBacklog {
					select { // backlog full: wait for the workers
					case <-pctx.Done():
					case <-time.After(time.Millisecond):
					}
					continue
				}
				if err := w.enqueue(pctx, p, i); err != nil {
					if pctx.Err() == nil {
						prodErr.CompareAndSwap(nil, err)
					}
					continue
				}
				enqueued.Add(soakPerCall)
			}
		}()
	}

	tick := time.NewTicker(cfg.MVCCWindow)
	defer tick.Stop()
	var windows []mvccWindow
	last, lastAt, prev := int64(0), t0, st0
	var lastFloored int64
	for time.Since(t0) < cfg.MVCCDuration-cfg.MVCCWindow/2 {
		select {
		case <-ctx.Done():
			return windows, false, ctx.Err()
		case <-tick.C:
		}
		now, at := w.completed(), time.Now()
		samples, failed := timer.take()
		win := mvccWindow{end: at.Sub(t0).Seconds(), rate: float64(now-last) / at.Sub(lastAt).Seconds(), claims: len(samples), claimsFailed: failed, holderAge: -1}
		last, lastAt = now, at
		all, full, stmt := make([]time.Duration, 0, len(samples)), []time.Duration{}, []time.Duration{}
		for _, s := range samples {
			all = append(all, s.took)
			if s.full {
				full = append(full, s.took)
			}
			if s.stmt > 0 {
				stmt = append(stmt, s.stmt)
			}
		}
		win.stmtP99 = percentile(stmt, 99)
		win.p50, win.p99 = percentile(all, 50), percentile(all, 99)
		win.fullClaims, win.fullP99 = len(full), percentile(full, 99)
		_, floored := w.claimCounts()
		win.floored, lastFloored = floored-lastFloored, floored
		if win.rel, err = e.relState(ctx, system); err != nil {
			return windows, false, err
		}
		win.entriesPerScan = -1
		if d := win.rel.scans - prev.scans; d > 0 {
			win.entriesPerScan = float64(win.rel.entriesRead-prev.entriesRead) / float64(d)
		}
		prev = win.rel
		var xmin *int64
		if holder != nil {
			xmin = &holder.xmin
		}
		if err := e.pool.QueryRow(ctx, sqlHorizonAge, xmin).Scan(&win.horizonAge, &win.holderAge); err != nil {
			return windows, false, err
		}
		win.rel.vacuums -= st0.vacuums
		windows = append(windows, win)
		prog.step("mvcc %-8s %-7s %6.1fs: %8.0f batches/s, %5d claims p50/p99 %6.2f/%7.2f ms (statement p99 %.2f, %d full p99 %.2f), %9d dead, heap %s, indexes %s, %6.0f entries/scan, %d vacuums, horizon %d xids",
			system, variant, win.end, win.rate, win.claims, ms(win.p50), ms(win.p99), ms(win.stmtP99), win.fullClaims, ms(win.fullP99),
			win.rel.dead, mib(win.rel.heap), mib(win.rel.indexes), win.entriesPerScan, win.rel.vacuums, win.horizonAge)
		if diag != nil {
			diag.window(ctx, prog)
		}
	}
	survived = holder != nil && holder.alive(ctx)
	stopProducers()
	wg.Wait()
	if err := stopWorkload(); err != nil {
		return windows, survived, err
	}
	if err, _ := prodErr.Load().(error); err != nil {
		return windows, survived, fmt.Errorf("producer: %w", err)
	}
	return windows, survived, nil
}

// runMVCC runs every configured variant for both systems (River always:
// the goals are judged with River measured alongside) and reports each
// window and the ratios.
func runMVCC(ctx context.Context, cfg *Config, e *env, rep *Report, prog *progress) error {
	variants := slices.Clone(cfg.MVCCVariants)
	var replica *pgtest.Server
	if slices.Contains(variants, MVCCReplica) {
		if e.srv == nil {
			rep.note("mvcc: the replica variant needs the harness's own server (no -dsn): skipped")
			variants = slices.DeleteFunc(variants, func(v string) bool { return v == MVCCReplica })
		} else {
			prog.step("mvcc: starting a streaming replica (hot_standby_feedback on); it streams through every variant")
			settings := maps.Clone(serverSettings)
			maps.Copy(settings, mvccReplicaSettings)
			var err error
			if replica, err = e.srv.StartReplica(ctx, &pgtest.Options{Fsync: true, Settings: settings}); err != nil {
				return fmt.Errorf("start the replica: %w", err)
			}
			defer replica.Close()
			rep.note("mvcc: a streaming replica (hot_standby_feedback = on) ran through every variant, so the baseline pays for shipping the WAL too; only in the replica variant does it hold a snapshot")
		}
	}
	systems := cfg.MVCCSystems
	var firstErr error
	for i, v := range variants {
		order := systems
		if i%2 == 1 {
			order = reversed(systems)
		}
		for _, sys := range order {
			prog.step("mvcc %s, variant %s: %s of churn", sys, v, cfg.MVCCDuration)
			windows, survived, err := e.mvccRun(ctx, cfg, sys, v, replica, prog)
			mvccFigures(rep, sys, v, windows)
			if v != MVCCNone && len(windows) > 0 {
				rep.add(ScenarioMVCC, sys, "holder_survived", map[bool]float64{true: 1, false: 0}[survived], "bool", "variant", v)
				if !survived {
					rep.note("mvcc %s %s: the snapshot holder's transaction did not survive the run: the horizon was not held the whole time", sys, v)
				}
			}
			if err != nil {
				err = fmt.Errorf("%s %s: %w", sys, v, err)
				rep.note("mvcc: %v", err)
				if firstErr == nil {
					firstErr = err
				}
				if ctx.Err() != nil {
					return firstErr
				}
			}
		}
	}
	mvccDerive(rep, cfg, variants)
	if cfg.Diag {
		if err := e.copyServerLog(cfg.DiagLog); err != nil {
			rep.note("mvcc: copy the server log: %v", err)
		} else if cfg.DiagLog != "" {
			prog.step("mvcc: the server log (with auto_explain's slow plans) is in %s", cfg.DiagLog)
		}
	}
	if err := e.reset(ctx); err != nil && firstErr == nil {
		firstErr = err
	}
	return firstErr
}

// mvccFigures adds one run's windows to the report.
func mvccFigures(rep *Report, system, variant string, windows []mvccWindow) {
	for i, w := range windows {
		p := []any{"variant", variant, "window", i + 1, "window_end_s", round1(w.end)}
		if system == SystemRiver {
			p = append(p, "config", riverOneClient)
		}
		add := func(metric string, v float64, unit string) { rep.add(ScenarioMVCC, system, metric, v, unit, p...) }
		add("batches_per_s", w.rate, "batches/s")
		add("claims", float64(w.claims), "claims")
		if w.claims > 0 {
			add("claim_p50_ms", ms(w.p50), "ms")
			add("claim_p99_ms", ms(w.p99), "ms")
		}
		if w.claimsFailed > 0 {
			add("claims_failed", float64(w.claimsFailed), "claims")
		}
		if system == SystemSkiplock {
			add("full_claims", float64(w.fullClaims), "claims")
			add("floored_claims", float64(w.floored), "claims")
			if w.fullClaims > 0 {
				add("full_claim_p99_ms", ms(w.fullP99), "ms")
			}
			if w.stmtP99 > 0 {
				add("claim_statement_p99_ms", ms(w.stmtP99), "ms")
			}
		}
		add("dead_tuples", float64(w.rel.dead), "tuples")
		add("live_tuples", float64(w.rel.live), "tuples")
		add("table_bytes", float64(w.rel.heap), "bytes")
		add("index_bytes", float64(w.rel.indexes), "bytes")
		add("total_bytes", float64(w.rel.total), "bytes")
		add("vacuums", float64(w.rel.vacuums), "runs")
		if w.entriesPerScan >= 0 {
			add("claim_index_entries_per_scan", w.entriesPerScan, "entries")
		}
		add("horizon_age_xids", float64(w.horizonAge), "xids")
		if w.holderAge >= 0 {
			add("holder_age_xids", float64(w.holderAge), "xids")
		}
	}
}

// mvccSeries returns metric's per-window values of system under variant,
// in window order (0 for a window without the figure), and whether each
// window has it.
func mvccSeries(rep *Report, system, variant, metric string) (vals []float64, has []bool) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	for _, f := range rep.Figures {
		if f.Scenario != ScenarioMVCC || f.System != system || f.Metric != metric || fmt.Sprint(f.Params["variant"]) != variant {
			continue
		}
		i, err := strconv.Atoi(fmt.Sprint(f.Params["window"]))
		if err != nil || i < 1 {
			continue
		}
		for len(vals) < i {
			vals, has = append(vals, 0), append(has, false)
		}
		vals[i-1], has[i-1] = f.Value, true
	}
	return vals, has
}

// mvccDerive adds each run's summary and its ratios: per window, the
// throughput over the same system's in the same window without a snapshot;
// the worst of those; last window over first; the largest claim p99 over
// the first window's.
func mvccDerive(rep *Report, cfg *Config, variants []string) {
	for _, sys := range []string{SystemSkiplock, SystemRiver} {
		base, _ := mvccSeries(rep, sys, MVCCNone, "batches_per_s")
		for _, v := range variants {
			rates, _ := mvccSeries(rep, sys, v, "batches_per_s")
			if len(rates) == 0 {
				continue
			}
			params := []any{"variant", v}
			if cfg != nil {
				params = append(params, "duration_s", cfg.MVCCDuration.Seconds(), "window_s", cfg.MVCCWindow.Seconds())
			}
			params = append(params, "producers", soakProducers, "backlog", soakBacklog)
			if sys == SystemRiver {
				params = append(params, "config", riverOneClient, "max_workers", riverChurnWorkers)
			} else {
				params = append(params, "workers", soakWorkers, "claim_size", soakClaimSize)
			}
			sum := 0.0
			for _, r := range rates {
				sum += r
			}
			rep.add(ScenarioMVCC, sys, "mean_batches_per_s", sum/float64(len(rates)), "batches/s", params...)
			rep.add(ScenarioMVCC, sys, "first_window_batches_per_s", rates[0], "batches/s", params...)
			rep.add(ScenarioMVCC, sys, "last_window_batches_per_s", rates[len(rates)-1], "batches/s", params...)
			rep.add(ScenarioMVCC, sys, "last_over_first", ratio(rates[len(rates)-1], rates[0]), "x", params...)
			if v != MVCCNone && len(base) > 0 {
				worst, n := 0.0, 0
				for i := 0; i < len(rates) && i < len(base); i++ {
					if base[i] <= 0 {
						continue
					}
					r := rates[i] / base[i]
					rep.add(ScenarioMVCC, sys, "ratio_over_none", r, "x", "variant", v, "window", i+1)
					if n == 0 || r < worst {
						worst = r
					}
					n++
				}
				if n > 0 {
					rep.add(ScenarioMVCC, sys, "min_ratio_over_none", worst, "x", params...)
				}
			}
			p99, has := mvccSeries(rep, sys, v, "claim_p99_ms")
			if len(p99) > 0 && has[0] && p99[0] > 0 {
				worst := 0.0
				for i, x := range p99 {
					if has[i] {
						worst = max(worst, x)
					}
				}
				rep.add(ScenarioMVCC, sys, "claim_p99_first_ms", p99[0], "ms", params...)
				rep.add(ScenarioMVCC, sys, "claim_p99_max_ms", worst, "ms", params...)
				rep.add(ScenarioMVCC, sys, "claim_p99_max_over_first", worst/p99[0], "x", params...)
			}
		}
	}
}

// mvccTargets checks the goals for skiplock under each snapshot
// variant measured.
func mvccTargets(rep *Report) []Target {
	var out []Target
	for _, v := range []string{MVCCPrimary, MVCCReplica} {
		if r, ok := rep.get(ScenarioMVCC, SystemSkiplock, "min_ratio_over_none", "variant", v); ok {
			out = append(out, Target{Name: fmt.Sprintf("mvcc, snapshot held (%s): skiplock throughput, worst window / same window without", v), Want: ">= 0.8", Got: r, Unit: "x", Met: r >= 0.8})
		}
		if r, ok := rep.get(ScenarioMVCC, SystemSkiplock, "last_over_first", "variant", v); ok {
			out = append(out, Target{Name: fmt.Sprintf("mvcc, snapshot held (%s): skiplock throughput, last window / first", v), Want: ">= 0.9", Got: r, Unit: "x", Met: r >= 0.9})
		}
		if r, ok := rep.get(ScenarioMVCC, SystemSkiplock, "claim_p99_max_over_first", "variant", v); ok {
			out = append(out, Target{Name: fmt.Sprintf("mvcc, snapshot held (%s): skiplock claim p99, max window / first", v), Want: "<= 10", Got: r, Unit: "x", Met: r <= 10})
		}
	}
	return out
}

// mvccTable writes the mvcc scenario's windows and summaries.
func (r *Report) mvccTable(w io.Writer) {
	type run struct{ sys, variant string }
	var runs []run
	r.mu.Lock()
	seen := map[run]bool{}
	for _, f := range r.Figures {
		if f.Scenario == ScenarioMVCC && f.Metric == "batches_per_s" {
			k := run{f.System, fmt.Sprint(f.Params["variant"])}
			if !seen[k] {
				seen[k] = true
				runs = append(runs, k)
			}
		}
	}
	r.mu.Unlock()
	if len(runs) == 0 {
		return
	}
	slices.SortStableFunc(runs, func(a, b run) int {
		if a.sys != b.sys {
			return strings.Compare(b.sys, a.sys) // skiplock first
		}
		return slices.Index(AllMVCCVariants, a.variant) - slices.Index(AllMVCCVariants, b.variant)
	})
	fmt.Fprintf(w, "\nMVCC: churn (2 producers, backlog near %s; skiplock %d runners, claim %d; River one client, %d workers) with an old snapshot held\n",
		num(soakBacklog), soakWorkers, soakClaimSize, riverChurnWorkers)
	fmt.Fprintln(w, "system\tsnapshot\twindow end (s)\tbatches/s\t× none\tclaims\tclaim p50 / p99 (ms)\tdead tuples\theap / indexes (MiB)\tindex entries per scan\thorizon age (xids)\tvacuums\t")
	mibCell := func(v float64) string { return fmt.Sprintf("%.1f", v/(1<<20)) }
	for _, k := range runs {
		rates, _ := mvccSeries(r, k.sys, k.variant, "batches_per_s")
		get := func(metric string, i int) (float64, bool) {
			return r.get(ScenarioMVCC, k.sys, metric, "variant", k.variant, "window", i+1)
		}
		cell := func(metric string, i int) string {
			if v, ok := get(metric, i); ok {
				return num(v)
			}
			return "-"
		}
		for i := range rates {
			end := "-"
			r.mu.Lock()
			for _, f := range r.Figures {
				if f.Scenario == ScenarioMVCC && f.System == k.sys && f.Metric == "batches_per_s" && fmt.Sprint(f.Params["variant"]) == k.variant && fmt.Sprint(f.Params["window"]) == fmt.Sprint(i+1) {
					end = fmt.Sprint(f.Params["window_end_s"])
				}
			}
			r.mu.Unlock()
			heap, _ := get("table_bytes", i)
			idx, _ := get("index_bytes", i)
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s / %s\t%s\t%s / %s\t%s\t%s\t%s\t\n", k.sys, k.variant, end,
				cell("batches_per_s", i), r.cell(ScenarioMVCC, k.sys, "ratio_over_none", "variant", k.variant, "window", i+1),
				cell("claims", i), cell("claim_p50_ms", i), cell("claim_p99_ms", i), cell("dead_tuples", i),
				mibCell(heap), mibCell(idx), cell("claim_index_entries_per_scan", i), cell("horizon_age_xids", i), cell("vacuums", i))
		}
	}
	for _, k := range runs {
		c := func(metric string) string { return r.cell(ScenarioMVCC, k.sys, metric, "variant", k.variant) }
		line := fmt.Sprintf("%s, %s: mean %s batches/s, last / first window %s, claim p99 first %s ms, max %s ms (%s ×)",
			k.sys, k.variant, c("mean_batches_per_s"), c("last_over_first"), c("claim_p99_first_ms"), c("claim_p99_max_ms"), c("claim_p99_max_over_first"))
		if k.variant != MVCCNone {
			line += fmt.Sprintf(", worst window / without snapshot %s", c("min_ratio_over_none"))
			if v, ok := r.get(ScenarioMVCC, k.sys, "holder_survived", "variant", k.variant); ok && v == 0 {
				line += " (the holder did NOT survive the run)"
			}
		}
		fmt.Fprintln(w, line)
	}
}
