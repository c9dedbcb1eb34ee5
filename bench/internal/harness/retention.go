package harness

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// The retention scenario fills skiplock's idempotency-key table (batch_key_digest)
// and completion-record table (batch_done) as seven days of 500 batches/s
// would leave them, generated directly in SQL, and measures keyed enqueue
// throughput at RetentionBaseRows and at RetentionRows key rows, then the
// cost of pruning a day of keys and a day of completion records with
// Client.Prune while producers keep enqueueing.
//
// Rows are generated in time order, as production writes them: key row g
// belongs to partition g mod retentionPartitions and takes that partition's
// next source range, so the primary key grows at one point per partition
// (as a Kafka consumer's keys do) and the heap is in creation order. The
// oldest seventh of the keys lies more than six days back, the rest within
// the last six days; completion records span two days, half more than a
// day back (times are relative to when the generation began). Between the
// oldest day and the rest lies an hour without rows, and the prune's
// retention puts its cutoff in the middle of that hour, so it deletes
// exactly the oldest day of each table however long the generation took.
const (
	retentionProducers  = 4
	retentionPerCall    = 100
	retentionPartitions = 64
	retentionGenChunk   = 1_000_000 // rows per generating statement
	// retentionTail is how long the load goes on after the vacuum that
	// follows pruning.
	retentionTail = 2 * time.Second
	// Disk needed per generated row (heap, indexes, slack) and for WAL and
	// everything else, for the free-space check.
	retentionKeyRowBytes  = 180
	retentionDoneRowBytes = 90
	retentionDiskMargin   = 8 << 30
	// Offsets of generated and live source ranges: 13 digits either way,
	// so keys of one partition sort by offset, live ones after generated.
	retentionGenOffset  = 1_000_000_000_000
	retentionLiveOffset = 2_000_000_000_000
)

// sqlGenKeys inserts key rows $2..$3 of $4 for queue $1, as of time $7:
// the oldest $5 of them within the day that ends an hour before six days
// before $7, the others within the six days before $7. Batch ids start
// after $6.
var sqlGenKeys = `INSERT INTO ` + qs("batch_key_digest") + ` (digest, batch_id, created_at)
SELECT ` + qs("key_digest") + `($1, 'src1:bench:' || (g % ` + fmt.Sprint(retentionPartitions) + `) || ':' || o || '-' || (o + 999)), $6 + g,
    CASE WHEN g < $5 THEN $7::timestamptz - interval '7 days' + (g::float8 / $5) * interval '23 hours'
        ELSE $7::timestamptz - interval '6 days' + ((g - $5)::float8 / greatest($4 - $5, 1)) * interval '6 days' END
FROM generate_series($2::int8, $3::int8) g,
    LATERAL (SELECT ` + fmt.Sprint(int64(retentionGenOffset)) + `::int8 + (g / ` + fmt.Sprint(retentionPartitions) + `) * 1000 AS o) x`

// sqlGenDone inserts completion records $2..$3 of queue $1, as of time $5:
// the oldest $4 of them within the day that ends an hour before a day
// before $5, the other $4 within the day before $5.
var sqlGenDone = `INSERT INTO ` + qs("batch_done") + ` (id, lease_token, done_at, created_at, attempt, queue)
SELECT g + 1, g + 1, t, t - interval '1 second', 1, $1
FROM generate_series($2::int8, $3::int8) g,
    LATERAL (SELECT CASE WHEN g < $4 THEN $5::timestamptz - interval '2 days' + (g::float8 / $4) * interval '23 hours'
        ELSE $5::timestamptz - interval '1 day' + ((g - $4)::float8 / $4) * interval '1 day' END AS t) x`

// retentionSizes are the sizes of the two tables at one moment.
type retentionSizes struct {
	keyHeap, keyPK, keyIndexes, doneHeap, doneIndexes int64
}

func (e *env) retentionSizes(ctx context.Context) (retentionSizes, error) {
	var s retentionSizes
	err := e.pool.QueryRow(ctx, `SELECT pg_relation_size($1::text::regclass), pg_relation_size($2::text::regclass),
    pg_indexes_size($1::text::regclass), pg_relation_size($3::text::regclass), pg_indexes_size($3::text::regclass)`,
		qs("batch_key_digest"), qs("batch_key_digest_pkey"), qs("batch_done")).Scan(&s.keyHeap, &s.keyPK, &s.keyIndexes, &s.doneHeap, &s.doneIndexes)
	return s, err
}

func (s retentionSizes) add(rep *Report, stage string, rows int) {
	params := []any{"stage", stage, "key_rows", rows}
	rep.add(ScenarioRetention, SystemSkiplock, "key_table_bytes", float64(s.keyHeap), "bytes", params...)
	rep.add(ScenarioRetention, SystemSkiplock, "key_pk_bytes", float64(s.keyPK), "bytes", params...)
	rep.add(ScenarioRetention, SystemSkiplock, "key_index_bytes", float64(s.keyIndexes), "bytes", params...)
	rep.add(ScenarioRetention, SystemSkiplock, "done_table_bytes", float64(s.doneHeap), "bytes", params...)
	rep.add(ScenarioRetention, SystemSkiplock, "done_index_bytes", float64(s.doneIndexes), "bytes", params...)
}

// retentionDoneRows is how many completion records go with rows keys: two
// days of them when the keys are seven days.
func retentionDoneRows(rows int) int { return 2 * (rows / 7) }

// checkRetentionDisk refuses to generate rows the server's disk cannot
// hold. It can only check a server it started.
func (e *env) checkRetentionDisk(rows int, rep *Report) error {
	need := uint64(rows)*retentionKeyRowBytes + uint64(retentionDoneRows(rows))*retentionDoneRowBytes + retentionDiskMargin
	if e.srv == nil {
		rep.note("retention: free disk space not checked (a -dsn target); the run needs about %.0f GiB", float64(need)/(1<<30))
		return nil
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(e.srv.DataDir(), &st); err != nil {
		return fmt.Errorf("free disk space: %w", err)
	}
	free := st.Bavail * uint64(st.Bsize)
	if free < need {
		return fmt.Errorf("not enough free disk space for %d key rows: about %.0f GiB needed (tables, indexes, WAL), %.0f GiB free where the server keeps its data; use a smaller -retention-rows",
			rows, float64(need)/(1<<30), float64(free)/(1<<30))
	}
	return nil
}

// generateRetention empties the key, completion and batch tables and fills
// the first two with rows keys and their completion records, then vacuums
// (which also summarizes the BRIN indexes, as autovacuum would have long
// since) and checkpoints, so that the measurement after it does not pay for
// the generation.
func (e *env) generateRetention(ctx context.Context, rows int, prog *progress) (asOf time.Time, err error) {
	if err := e.reset(ctx); err != nil {
		return asOf, err
	}
	var idBase int64
	if err := e.pool.QueryRow(ctx, `SELECT last_value, now() FROM `+qs("batch_id_seq")).Scan(&idBase, &asOf); err != nil {
		return asOf, err
	}
	oldest := rows / 7
	t0, lastShown := time.Now(), time.Now()
	for lo := 0; lo < rows; lo += retentionGenChunk {
		hi := min(lo+retentionGenChunk, rows) - 1
		if err := e.exec(ctx, sqlGenKeys, benchQueue, lo, hi, rows, oldest, idBase, asOf); err != nil {
			return asOf, fmt.Errorf("generate keys: %w", err)
		}
		if time.Since(lastShown) > 10*time.Second {
			prog.step("retention: %d of %d key rows generated (%s)", hi+1, rows, time.Since(t0).Round(time.Second))
			lastShown = time.Now()
		}
	}
	if err := e.exec(ctx, `SELECT setval($1::text::regclass, $2)`, qs("batch_id_seq"), idBase+int64(rows)+1); err != nil {
		return asOf, err
	}
	done := retentionDoneRows(rows)
	for lo := 0; lo < done; lo += retentionGenChunk {
		hi := min(lo+retentionGenChunk, done) - 1
		if err := e.exec(ctx, sqlGenDone, benchQueue, lo, hi, done/2, asOf); err != nil {
			return asOf, fmt.Errorf("generate completion records: %w", err)
		}
	}
	if err := e.exec(ctx, `VACUUM ANALYZE `+qs("batch_key_digest")+`, `+qs("batch_done")); err != nil {
		return asOf, fmt.Errorf("vacuum: %w", err)
	}
	if err := e.checkpoint(ctx); err != nil {
		return asOf, err
	}
	prog.step("retention: %d key rows and %d completion records generated and vacuumed in %s", rows, done, time.Since(t0).Round(time.Second))
	return asOf, nil
}

// keyedLoad is producers enqueueing keyed batches as fast as they can,
// retentionPerCall per call, each producer reading its own partitions in
// order, until stopped. It counts the rows and times the calls.
type keyedLoad struct {
	rows   atomic.Int64
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	lat    []time.Duration
	err    error
}

// startKeyedLoad starts the producers. round separates the keys of loads
// run on the same tables.
func (e *env) startKeyedLoad(ctx context.Context, round int) *keyedLoad {
	ctx, cancel := context.WithCancel(ctx)
	l := &keyedLoad{cancel: cancel}
	for p := range retentionProducers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			ps := make([]queue.EnqueueParams, retentionPerCall)
			for seq := 0; ctx.Err() == nil; {
				for i := range ps {
					part := p + retentionProducers*(seq%(retentionPartitions/retentionProducers))
					start := int64(retentionLiveOffset) + int64(round)<<36 + int64(seq/(retentionPartitions/retentionProducers))*1000
					src := batch.Source{Topic: "bench", Partition: int32(part), Start: start, End: start + 999}
					ps[i] = queue.EnqueueParams{Queue: benchQueue, Meta: batch.Meta{URI: "s3://bench/" + src.String(), Source: src, EventCount: 100, ByteSize: 4096}}
					seq++
				}
				t := time.Now()
				_, err := e.client.EnqueueMany(ctx, ps)
				if err != nil {
					if ctx.Err() == nil {
						l.mu.Lock()
						l.err = err
						l.mu.Unlock()
					}
					return
				}
				d := time.Since(t)
				l.rows.Add(retentionPerCall)
				l.mu.Lock()
				l.lat = append(l.lat, d)
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// latencies returns the call latencies recorded since the last call.
func (l *keyedLoad) latencies() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.lat
	l.lat = nil
	return out
}

func (l *keyedLoad) stop() error {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// measureKeyed runs the keyed load for a second of warm-up and then
// window, and returns rows/s and call latencies within the window.
func (e *env) measureKeyed(ctx context.Context, window time.Duration, round int) (float64, []time.Duration, error) {
	l := e.startKeyedLoad(ctx, round)
	wait := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	if err := wait(time.Second); err != nil {
		_ = l.stop()
		return 0, nil, err
	}
	r0, t0 := l.rows.Load(), time.Now()
	l.latencies()
	if err := wait(window); err != nil {
		_ = l.stop()
		return 0, nil, err
	}
	r1, t1 := l.rows.Load(), time.Now()
	lat := l.latencies()
	if err := l.stop(); err != nil {
		return 0, nil, err
	}
	return float64(r1-r0) / t1.Sub(t0).Seconds(), lat, nil
}

// retentionSample is the keyed enqueue rate over one second, with the
// stages that ran during it.
type retentionSample struct {
	endS   float64
	rate   float64
	stages map[string]bool
}

func runRetention(ctx context.Context, cfg *Config, e *env, rep *Report, prog *progress) error {
	if err := e.checkRetentionDisk(cfg.RetentionRows, rep); err != nil {
		return err
	}
	rep.note("retention: River not measured: its unique keys live in river_job rows themselves (completed jobs kept CompletedJobRetentionPeriod, deleted by its job cleaner); an equivalent would be hundreds of millions of completed river_job rows with unique_key and unique_states as River computes them, which this scenario does not generate")
	rates := map[int]float64{}
	var asOf time.Time
	for i, rows := range []int{cfg.RetentionBaseRows, cfg.RetentionRows} {
		var err error
		if asOf, err = e.generateRetention(ctx, rows, prog); err != nil {
			return err
		}
		st, err := e.retentionSizes(ctx)
		if err != nil {
			return err
		}
		st.add(rep, "generated", rows)
		rate, lat, err := e.measureKeyed(ctx, cfg.RetentionWindow, i)
		if err != nil {
			return fmt.Errorf("keyed enqueue at %d key rows: %w", rows, err)
		}
		rates[rows] = rate
		params := []any{"key_rows", rows, "producers", retentionProducers, "rows_per_call", retentionPerCall, "window_s", cfg.RetentionWindow.Seconds()}
		rep.add(ScenarioRetention, SystemSkiplock, "keyed_rows_per_s", rate, "rows/s", params...)
		rep.add(ScenarioRetention, SystemSkiplock, "call_p50_ms", ms(percentile(lat, 50)), "ms", params...)
		rep.add(ScenarioRetention, SystemSkiplock, "call_p99_ms", ms(percentile(lat, 99)), "ms", params...)
		prog.step("retention: %d key rows (key table %s, its primary key %s): keyed enqueue %.0f rows/s, call p50 %.1f ms, p99 %.1f ms",
			rows, mib(st.keyHeap), mib(st.keyPK), rate, ms(percentile(lat, 50)), ms(percentile(lat, 99)))
	}
	if base := rates[cfg.RetentionBaseRows]; base > 0 {
		rep.add(ScenarioRetention, SystemSkiplock, "keyed_rate_ratio", rates[cfg.RetentionRows]/base, "x",
			"key_rows", cfg.RetentionRows, "base_key_rows", cfg.RetentionBaseRows)
	}
	if err := e.exec(ctx, `TRUNCATE `+qs("batch")); err != nil {
		return err
	}
	if err := e.checkpoint(ctx); err != nil {
		return err
	}
	return e.pruneUnderLoad(ctx, cfg, asOf, rep, prog)
}

// pruneUnderLoad prunes a day of completion records and then a day of keys
// with Client.Prune (two clients whose retention leaves the other table
// alone), then vacuums both tables, all while producers enqueue keyed
// batches, and reports the enqueue rate per second against the rate before.
func (e *env) pruneUnderLoad(ctx context.Context, cfg *Config, asOf time.Time, rep *Report, prog *progress) error {
	rows := cfg.RetentionRows
	// prune runs Client.Prune of a client whose retentions put the cutoff
	// of one table half an hour into the empty hour before its generated
	// rows (and keep everything of the other).
	prune := func(keys bool) (int64, error) {
		never, since := 365*24*time.Hour, time.Since(asOf).Round(time.Second)
		qc := &queue.Config{Schema: skiplockSchema, DoneRetention: since + 24*time.Hour + 30*time.Minute, KeyRetention: never}
		if keys {
			qc.DoneRetention, qc.KeyRetention = never, since+6*24*time.Hour+30*time.Minute
		}
		c, err := queue.New(e.pool, qc)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		done, k, err := c.Prune(ctx)
		if keys {
			return k, err
		}
		return done, err
	}

	var mu sync.Mutex
	stage, seen := "start", map[string]bool{"start": true}
	setStage := func(s string) {
		mu.Lock()
		stage = s
		seen[s] = true
		mu.Unlock()
	}
	l := e.startKeyedLoad(ctx, 2)
	defer func() { _ = l.stop() }()
	t0 := time.Now()
	var samples []retentionSample
	sampled := make(chan struct{})
	stopSampling := make(chan struct{})
	endSampling := sync.OnceFunc(func() {
		close(stopSampling)
		<-sampled
	})
	defer endSampling()
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		last, lastAt := l.rows.Load(), time.Now()
		for {
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
			now, at := l.rows.Load(), time.Now()
			mu.Lock()
			stages := seen
			seen = map[string]bool{stage: true}
			mu.Unlock()
			samples = append(samples, retentionSample{endS: at.Sub(t0).Seconds(), rate: float64(now-last) / at.Sub(lastAt).Seconds(), stages: stages})
			last, lastAt = now, at
		}
	}()
	sleep := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	// One second for the producers to start, then the baseline window.
	if err := sleep(time.Second); err != nil {
		return err
	}
	setStage("baseline")
	mb, err := e.startMeter(ctx)
	if err != nil {
		return err
	}
	r0 := l.rows.Load()
	if err := sleep(cfg.RetentionWindow); err != nil {
		return err
	}
	ub, err := e.stopMeter(ctx, mb)
	if err != nil {
		return err
	}
	baseRows := l.rows.Load() - r0
	walPerRow := float64(ub.walBytes) / float64(max(baseRows, 1))

	type step struct {
		name string
		run  func() (int64, error)
	}
	steps := []step{
		{"prune completion records", func() (int64, error) { return prune(false) }},
		{"prune keys", func() (int64, error) { return prune(true) }},
		{"vacuum", func() (int64, error) {
			return 0, e.pacedVacuum(ctx, qs("batch_key_digest")+`, `+qs("batch_done"))
		}},
	}
	rep.note("retention: the vacuum after pruning is paced as autovacuum paces it by default (vacuum_cost_delay %s, vacuum_cost_limit %d); runs before 2026-12-03 vacuumed unpaced", autovacuumCostDelay, autovacuumCostLimit)
	var afterPrune retentionSizes
	for _, s := range steps {
		if s.name == "vacuum" {
			if afterPrune, err = e.retentionSizes(ctx); err != nil {
				return err
			}
		}
		setStage(s.name)
		m, err := e.startMeter(ctx)
		if err != nil {
			return err
		}
		r0 := l.rows.Load()
		n, err := s.run()
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		u, err := e.stopMeter(ctx, m)
		if err != nil {
			return err
		}
		loadRows := l.rows.Load() - r0
		net := float64(u.walBytes) - walPerRow*float64(loadRows)
		params := []any{"step", s.name, "key_rows", rows}
		rep.add(ScenarioRetention, SystemSkiplock, "seconds", round3(u.elapsed.Seconds()), "s", params...)
		rep.add(ScenarioRetention, SystemSkiplock, "wal_bytes", float64(u.walBytes), "B", params...)
		rep.add(ScenarioRetention, SystemSkiplock, "wal_bytes_net_of_load", net, "B", params...)
		if s.name != "vacuum" {
			rep.add(ScenarioRetention, SystemSkiplock, "rows_deleted", float64(n), "rows", params...)
			if n > 0 {
				rep.add(ScenarioRetention, SystemSkiplock, "wal_bytes_net_per_row", net/float64(n), "B", params...)
			}
		}
		prog.step("retention: %s: %d rows in %s, WAL %s (about %s net of the load's)", s.name, n, u.elapsed.Round(time.Millisecond), mib(u.walBytes), mib(int64(net)))
	}
	setStage("after")
	if err := sleep(retentionTail); err != nil {
		return err
	}
	endSampling()
	if err := l.stop(); err != nil {
		return fmt.Errorf("keyed load: %w", err)
	}
	afterPrune.add(rep, "pruned", rows)
	vacuumed, err := e.retentionSizes(ctx)
	if err != nil {
		return err
	}
	vacuumed.add(rep, "pruned and vacuumed", rows)
	rep.add(ScenarioRetention, SystemSkiplock, "expected_rows_deleted", float64(retentionDoneRows(rows)/2), "rows", "step", "prune completion records", "key_rows", rows)
	rep.add(ScenarioRetention, SystemSkiplock, "expected_rows_deleted", float64(rows/7), "rows", "step", "prune keys", "key_rows", rows)

	// Rates per second by stage, against the rate over the whole window
	// before.
	base := float64(baseRows) / ub.elapsed.Seconds()
	rep.add(ScenarioRetention, SystemSkiplock, "baseline_rows_per_s", base, "rows/s", "key_rows", rows, "seconds", round1(ub.elapsed.Seconds()))
	deepest := func(stages ...string) (float64, int) {
		low, n := -1.0, 0
		for _, s := range samples {
			for _, st := range stages {
				if s.stages[st] {
					n++
					if low < 0 || s.rate < low {
						low = s.rate
					}
					break
				}
			}
		}
		return low, n
	}
	for _, g := range []struct {
		name   string
		stages []string
	}{{"prune", []string{"prune completion records", "prune keys"}}, {"vacuum", []string{"vacuum"}}} {
		low, n := deepest(g.stages...)
		if n == 0 || base <= 0 {
			continue
		}
		rep.add(ScenarioRetention, SystemSkiplock, "deepest_1s_rows_per_s", low, "rows/s", "during", g.name, "key_rows", rows, "seconds", n)
		rep.add(ScenarioRetention, SystemSkiplock, "deepest_1s_ratio", low/base, "x", "during", g.name, "key_rows", rows, "seconds", n)
		prog.step("retention: during %s (%d s): deepest second %.0f rows/s, %.2f× the %.0f rows/s before", g.name, n, low, low/base, base)
	}
	for _, s := range samples {
		var names []string
		for st := range s.stages {
			names = append(names, st)
		}
		rep.add(ScenarioRetention, SystemSkiplock, "rows_per_s", s.rate, "rows/s", "second_end_s", round1(s.endS), "stage", fmt.Sprint(sortedStrings(names)))
	}
	return e.reset(ctx)
}

func sortedStrings(s []string) []string {
	slices.Sort(s)
	return s
}

// deriveRetention checks the retention goals.
func deriveRetention(rep *Report, check func(name, want string, got float64, unit string, met bool)) {
	for _, rows := range paramValues(rep, ScenarioRetention, SystemSkiplock, "keyed_rate_ratio", "key_rows") {
		r, _ := rep.get(ScenarioRetention, SystemSkiplock, "keyed_rate_ratio", "key_rows", rows)
		check(fmt.Sprintf("retention: keyed enqueue at %s key rows / at the base size", num(toFloat(rows))), ">= 0.8", r, "x", r >= 0.8)
	}
	if r, ok := rep.get(ScenarioRetention, SystemSkiplock, "deepest_1s_ratio", "during", "prune"); ok {
		check("retention: deepest 1-s keyed enqueue rate while pruning a day / before", ">= 0.8", r, "x", r >= 0.8)
	}
}

// retentionTable writes the retention scenario's section.
func (r *Report) retentionTable(w io.Writer) {
	rowsList := paramValues(r, ScenarioRetention, SystemSkiplock, "keyed_rows_per_s", "key_rows")
	if len(rowsList) == 0 {
		return
	}
	fmt.Fprintf(w, "\nRetention: keyed enqueue against a key table of 7 days at 500 batches/s (generated; %d producers, %d rows per call)\n", retentionProducers, retentionPerCall)
	fmt.Fprintln(w, "key rows\tkeyed rows/s\tcall p50 ms\tcall p99 ms\tkey table B\tkey primary key B\tcompletion table B\t")
	for _, n := range rowsList {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", num(toFloat(n)),
			r.cell(ScenarioRetention, SystemSkiplock, "keyed_rows_per_s", "key_rows", n),
			r.cell(ScenarioRetention, SystemSkiplock, "call_p50_ms", "key_rows", n),
			r.cell(ScenarioRetention, SystemSkiplock, "call_p99_ms", "key_rows", n),
			r.cell(ScenarioRetention, SystemSkiplock, "key_table_bytes", "key_rows", n, "stage", "generated"),
			r.cell(ScenarioRetention, SystemSkiplock, "key_pk_bytes", "key_rows", n, "stage", "generated"),
			r.cell(ScenarioRetention, SystemSkiplock, "done_table_bytes", "key_rows", n, "stage", "generated"))
	}
	last := rowsList[len(rowsList)-1]
	fmt.Fprintf(w, "Pruning a day under that load, at %s key rows\n", num(toFloat(last)))
	fmt.Fprintln(w, "step\trows deleted\texpected\ttime s\tWAL B\tWAL B net of load\tnet WAL B per row\t")
	for _, s := range []string{"prune completion records", "prune keys", "vacuum"} {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s,
			r.cell(ScenarioRetention, SystemSkiplock, "rows_deleted", "step", s),
			r.cell(ScenarioRetention, SystemSkiplock, "expected_rows_deleted", "step", s),
			r.cell(ScenarioRetention, SystemSkiplock, "seconds", "step", s),
			r.cell(ScenarioRetention, SystemSkiplock, "wal_bytes", "step", s),
			r.cell(ScenarioRetention, SystemSkiplock, "wal_bytes_net_of_load", "step", s),
			r.cell(ScenarioRetention, SystemSkiplock, "wal_bytes_net_per_row", "step", s))
	}
	fmt.Fprintf(w, "keyed rows/s before: %s; deepest second while pruning %s (%s×), while vacuuming %s (%s×)\n",
		r.cell(ScenarioRetention, SystemSkiplock, "baseline_rows_per_s"),
		r.cell(ScenarioRetention, SystemSkiplock, "deepest_1s_rows_per_s", "during", "prune"),
		r.cell(ScenarioRetention, SystemSkiplock, "deepest_1s_ratio", "during", "prune"),
		r.cell(ScenarioRetention, SystemSkiplock, "deepest_1s_rows_per_s", "during", "vacuum"),
		r.cell(ScenarioRetention, SystemSkiplock, "deepest_1s_ratio", "during", "vacuum"))
	fmt.Fprintf(w, "key table / primary key / completion table B: %s / %s / %s generated, %s / %s / %s pruned, %s / %s / %s pruned and vacuumed\n",
		r.cell(ScenarioRetention, SystemSkiplock, "key_table_bytes", "key_rows", last, "stage", "generated"),
		r.cell(ScenarioRetention, SystemSkiplock, "key_pk_bytes", "key_rows", last, "stage", "generated"),
		r.cell(ScenarioRetention, SystemSkiplock, "done_table_bytes", "key_rows", last, "stage", "generated"),
		r.cell(ScenarioRetention, SystemSkiplock, "key_table_bytes", "stage", "pruned"),
		r.cell(ScenarioRetention, SystemSkiplock, "key_pk_bytes", "stage", "pruned"),
		r.cell(ScenarioRetention, SystemSkiplock, "done_table_bytes", "stage", "pruned"),
		r.cell(ScenarioRetention, SystemSkiplock, "key_table_bytes", "stage", "pruned and vacuumed"),
		r.cell(ScenarioRetention, SystemSkiplock, "key_pk_bytes", "stage", "pruned and vacuumed"),
		r.cell(ScenarioRetention, SystemSkiplock, "done_table_bytes", "stage", "pruned and vacuumed"))
}

// Autovacuum's pacing in PostgreSQL 12 and later (autovacuum_vacuum_cost_delay
// 2ms, autovacuum_vacuum_cost_limit -1, so vacuum_cost_limit's 200): what
// vacuums the pruned tables in production. A manual VACUUM is not paced
// (vacuum_cost_delay 0) and measures a vacuum no deployment runs under load.
const (
	autovacuumCostDelay = "2ms"
	autovacuumCostLimit = 200
)

// pacedVacuum vacuums tables with autovacuum's default pacing, on one
// connection.
func (e *env) pacedVacuum(ctx context.Context, tables string) error {
	c, err := e.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	if _, err := c.Exec(ctx, fmt.Sprintf("SET vacuum_cost_delay = '%s'", autovacuumCostDelay)); err != nil {
		return err
	}
	if _, err := c.Exec(ctx, fmt.Sprintf("SET vacuum_cost_limit = %d", autovacuumCostLimit)); err != nil {
		return err
	}
	_, err = c.Exec(ctx, `VACUUM `+tables)
	if _, rerr := c.Exec(context.WithoutCancel(ctx), "RESET vacuum_cost_delay; RESET vacuum_cost_limit"); err == nil && rerr != nil {
		c.Conn().Close(context.WithoutCancel(ctx)) // do not hand a paced session back to the pool
	}
	return err
}
