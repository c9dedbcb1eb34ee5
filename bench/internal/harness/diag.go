package harness

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// The -diag sampler: where the server's time went in each mvcc window.
// It reads only the server's statistics views (a few cheap queries per
// window, and pg_stat_activity four times a second), never the measured
// tables, so it does not disturb the run it explains.

// diagSettings load the extensions the sampler reads. auto_explain logs
// the plan and buffer counts of one slow statement in twenty (timing off:
// instrumenting every node's clock would cost more than the run can spare).
var diagSettings = map[string]string{
	"shared_preload_libraries":      "pg_stat_statements,auto_explain",
	"pg_stat_statements.track":      "top",
	"auto_explain.log_min_duration": "100ms",
	"auto_explain.log_analyze":      "on",
	"auto_explain.log_buffers":      "on",
	"auto_explain.log_timing":       "off",
	"auto_explain.sample_rate":      "0.05",
}

type diagStmt struct {
	calls           int64
	ms              float64
	hit, read, rows int64
	text            string
}

type diagRel struct {
	scans, tupRead, tupFetch int64 // indexes
	hit, read                int64 // heap or index blocks
	ins, upd, hot, del       int64 // tables
}

type diagSnap struct {
	stmts map[int64]diagStmt
	rels  map[string]diagRel
	slru  map[string][2]int64 // hit, read
}

// diagSampler keeps the previous window's counters, and the wait events
// it sampled since.
type diagSampler struct {
	e      *env
	schema string
	prev   diagSnap

	mu      sync.Mutex
	waits   map[string]int
	samples int
	stop    func()
}

const (
	sqlDiagStmts = `SELECT queryid, calls, total_exec_time, shared_blks_hit, shared_blks_read, rows,
    left(regexp_replace(query, '\s+', ' ', 'g'), 100)
FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`
	sqlDiagIndexes = `SELECT 'idx ' || s.relname || '.' || s.indexrelname, s.idx_scan, s.idx_tup_read, s.idx_tup_fetch,
    coalesce(io.idx_blks_hit, 0), coalesce(io.idx_blks_read, 0), 0, 0, 0, 0
FROM pg_stat_user_indexes s JOIN pg_statio_user_indexes io ON io.indexrelid = s.indexrelid
WHERE s.schemaname = $1
UNION ALL
SELECT 'heap ' || s.relname, 0, 0, 0, coalesce(io.heap_blks_hit, 0), coalesce(io.heap_blks_read, 0),
    s.n_tup_ins, s.n_tup_upd, s.n_tup_hot_upd, s.n_tup_del
FROM pg_stat_user_tables s JOIN pg_statio_user_tables io ON io.relid = s.relid
WHERE s.schemaname = $1`
	sqlDiagSLRU  = `SELECT name, blks_hit, blks_read FROM pg_stat_slru`
	sqlDiagWaits = `SELECT CASE WHEN backend_type = 'client backend' THEN '' ELSE backend_type || ' ' END
    || coalesce(wait_event_type || ':' || wait_event, 'CPU'), count(*)
FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() GROUP BY 1`
)

// startDiag creates pg_stat_statements if it is loaded, takes the first
// counters, and starts sampling wait events. It returns nil, with a note,
// when the server does not have the extension loaded.
func (e *env) startDiag(ctx context.Context, schema string, prog *progress) *diagSampler {
	if err := e.exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		prog.step("diag: pg_stat_statements unavailable (%v): statements not sampled", err)
	}
	d := &diagSampler{e: e, schema: schema, waits: map[string]int{}}
	d.prev = d.snap(ctx)
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
			}
			rows, err := e.pool.Query(wctx, sqlDiagWaits)
			if err != nil {
				continue
			}
			got := map[string]int{}
			for rows.Next() {
				var w string
				var n int
				if rows.Scan(&w, &n) == nil {
					got[w] += n
				}
			}
			rows.Close()
			d.mu.Lock()
			for w, n := range got {
				d.waits[w] += n
			}
			d.samples++
			d.mu.Unlock()
		}
	}()
	d.stop = func() { cancel(); wg.Wait() }
	return d
}

// snap reads the counters; a view that fails to answer is left empty.
func (d *diagSampler) snap(ctx context.Context) diagSnap {
	s := diagSnap{stmts: map[int64]diagStmt{}, rels: map[string]diagRel{}, slru: map[string][2]int64{}}
	if rows, err := d.e.pool.Query(ctx, sqlDiagStmts); err == nil {
		for rows.Next() {
			var id int64
			var st diagStmt
			if rows.Scan(&id, &st.calls, &st.ms, &st.hit, &st.read, &st.rows, &st.text) == nil {
				s.stmts[id] = st
			}
		}
		rows.Close()
	}
	if rows, err := d.e.pool.Query(ctx, sqlDiagIndexes, d.schema); err == nil {
		for rows.Next() {
			var name string
			var r diagRel
			if rows.Scan(&name, &r.scans, &r.tupRead, &r.tupFetch, &r.hit, &r.read, &r.ins, &r.upd, &r.hot, &r.del) == nil {
				s.rels[name] = r
			}
		}
		rows.Close()
	}
	if rows, err := d.e.pool.Query(ctx, sqlDiagSLRU); err == nil {
		for rows.Next() {
			var name string
			var v [2]int64
			if rows.Scan(&name, &v[0], &v[1]) == nil {
				s.slru[name] = v
			}
		}
		rows.Close()
	}
	return s
}

// window prints where the time went since the previous window.
func (d *diagSampler) window(ctx context.Context, prog *progress) {
	cur := d.snap(ctx)
	prev := d.prev
	d.prev = cur

	var stmts []diagStmt
	for id, c := range cur.stmts {
		p := prev.stmts[id]
		if c.calls-p.calls <= 0 {
			continue
		}
		stmts = append(stmts, diagStmt{calls: c.calls - p.calls, ms: c.ms - p.ms, hit: c.hit - p.hit, read: c.read - p.read, rows: c.rows - p.rows, text: c.text})
	}
	slices.SortFunc(stmts, func(a, b diagStmt) int { return cmp.Compare(b.ms, a.ms) })
	for _, s := range stmts[:min(len(stmts), 6)] {
		n := float64(s.calls)
		prog.step("  diag stmt %7.1f s %8d calls %8.3f ms/call %8.1f blks hit/call %6.2f read/call %7.1f rows/call: %s",
			s.ms/1000, s.calls, s.ms/n, float64(s.hit)/n, float64(s.read)/n, float64(s.rows)/n, s.text)
	}
	for _, name := range slices.Sorted(maps.Keys(cur.rels)) {
		c, p := cur.rels[name], prev.rels[name]
		hit, read := c.hit-p.hit, c.read-p.read
		if strings.HasPrefix(name, "idx ") {
			scans := c.scans - p.scans
			if scans == 0 && hit+read == 0 {
				continue
			}
			per := func(v int64) float64 { return float64(v) / float64(max(scans, 1)) }
			prog.step("  diag %-50s %9d scans %8.1f read/scan %8.1f fetched/scan %10d blks hit %8d read",
				name, scans, per(c.tupRead-p.tupRead), per(c.tupFetch-p.tupFetch), hit, read)
			continue
		}
		if hit+read == 0 && c.ins == p.ins && c.upd == p.upd && c.del == p.del {
			continue
		}
		prog.step("  diag %-50s %10d blks hit %8d read %9d ins %9d upd (%d hot) %9d del",
			name, hit, read, c.ins-p.ins, c.upd-p.upd, c.hot-p.hot, c.del-p.del)
	}
	var slru []string
	for _, name := range slices.Sorted(maps.Keys(cur.slru)) {
		c, p := cur.slru[name], prev.slru[name]
		if c[1]-p[1] > 0 || c[0]-p[0] > 0 {
			slru = append(slru, fmt.Sprintf("%s %d hit %d read", name, c[0]-p[0], c[1]-p[1]))
		}
	}
	prog.step("  diag slru: %s", strings.Join(slru, "; "))

	d.mu.Lock()
	waits, samples := d.waits, d.samples
	d.waits, d.samples = map[string]int{}, 0
	d.mu.Unlock()
	names := slices.SortedFunc(maps.Keys(waits), func(a, b string) int { return cmp.Compare(waits[b], waits[a]) })
	var parts []string
	for _, w := range names[:min(len(names), 10)] {
		parts = append(parts, fmt.Sprintf("%s %.2f", w, float64(waits[w])/float64(max(samples, 1))))
	}
	prog.step("  diag active backends (mean over %d samples): %s", samples, strings.Join(parts, ", "))
}

func (d *diagSampler) close() { d.stop() }

// copyServerLog copies the throwaway server's log to path.
func (e *env) copyServerLog(path string) error {
	if e.srv == nil || path == "" {
		return nil
	}
	src, err := os.Open(e.srv.LogPath())
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}
