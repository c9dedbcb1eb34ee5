package faultlab

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Report is the outcome of the invariant check.
type Report struct {
	Acked      int // acknowledged keyed enqueues checked
	Completed  int // of those, completed exactly once
	Queued     int // of those, still in the batch table
	Lost       int // of those, neither completed nor queued (or unknown to the writer)
	DoneTwice  int // of those, completed more than once
	LostKeys   []string
	Executions int
	// StaleCompletions are completions on record that no run of the batch made under the
	// token on record, or whose run had been overtaken by another claim of the batch while
	// it still ran (see Check).
	StaleCompletions int
	// CompletedByLaterClaim are completions on record under a token no
	// handler ran with, made after a run of the batch had finished it.
	CompletedByLaterClaim int
	// OvertakenOnDiscarded are completions whose run another claim of the
	// batch overtook while it ran, where that claim was made on a writer
	// whose history was then discarded (a reversed failover): on the
	// surviving history the run's lease was never taken, so its completion
	// is not stale. The second run is a duplicate, counted there too.
	OvertakenOnDiscarded int
	// CarriedByKey are completions of a run that finished the batch as
	// another row (on a writer that then lost it), recorded by key on the
	// row the final writer has (a re-asserted enqueue's): the documented
	// exception to fencing, for work a handler really finished. A claim
	// of that row made meanwhile did not overtake the run's lease, which
	// was never on that row.
	CarriedByKey int
	// StaleDetail describes the first stale completions, for a log.
	StaleDetail []string
	// Duplicates are batches (by key) whose handler ran more than once; DuplicateAt holds,
	// for each, when the second run started.
	Duplicates  int
	DuplicateAt []time.Time
	// DeliveredTwice are the duplicates of which at least two runs did all their work (the
	// others' earlier runs were cut short: cancelled, killed, fenced); DeliveredTwiceAt holds
	// when the second complete run started.
	DeliveredTwice   int
	DeliveredTwiceAt []time.Time
	// Overlaps are pairs of executions of one key that overlapped longer than the margin;
	// MaxOverlap is the longest overlap seen (margin or not).
	Overlaps   int
	MaxOverlap time.Duration
}

// String is a one-line summary.
func (r *Report) String() string {
	return fmt.Sprintf("acked=%d completed=%d queued=%d lost=%d done_twice=%d stale_completions=%d completed_by_later_claim=%d overtaken_on_discarded=%d carried_by_key=%d duplicates=%d delivered_twice=%d overlaps=%d max_overlap=%s executions=%d",
		r.Acked, r.Completed, r.Queued, r.Lost, r.DoneTwice, r.StaleCompletions, r.CompletedByLaterClaim, r.OvertakenOnDiscarded, r.CarriedByKey, r.Duplicates, r.DeliveredTwice, r.Overlaps, r.MaxOverlap.Round(time.Millisecond), r.Executions)
}

// stale records a stale completion and, for the first few, what made it so.
func (r *Report) stale(detail string) {
	r.StaleCompletions++
	if len(r.StaleDetail) < 10 {
		r.StaleDetail = append(r.StaleDetail, detail)
	}
	if os.Getenv("SKIPLOCK_DEBUG_STALE") != "" {
		fmt.Fprintln(os.Stderr, "STALE", detail)
	}
}

// LostDetail lists the first lost keys with when they were acknowledged, for a log.
func (r *Report) LostDetail() string {
	if r.Lost == 0 {
		return ""
	}
	return fmt.Sprintf("lost keys (first %d): %v", len(r.LostKeys), r.LostKeys)
}

// Broken reports whether an invariant is broken: a lost batch, a batch completed twice, or a
// stale completion. Duplicates and overlaps are reported, not judged here.
func (r *Report) Broken() bool { return r.Lost > 0 || r.DoneTwice > 0 || r.StaleCompletions > 0 }

// Check checks the invariants on final, the writer, for every enqueue acknowledged before
// cutoff (zero: all): each ends completed exactly once (batch_done) or is still queued (batch
// table), else it is LOST; every completion on record was made by a run of the batch (by id
// or by key) under the token on record, and no other claim of the batch began while that run
// still held it (a stale completion); duplicates and overlapping handlers are counted. Check reads only; it
// can run while the load runs (a quiet-period check) or after Finish.
func (l *Load) Check(ctx context.Context, final *pgxpool.Pool, cutoff time.Time) (*Report, error) {
	l.mu.Lock()
	keys := make([]string, 0, len(l.acked))
	ackAt := make(map[string]time.Time, len(l.acked))
	for k, at := range l.acked {
		if cutoff.IsZero() || at.Before(cutoff) {
			keys = append(keys, k)
			ackAt[k] = at
		}
	}
	l.mu.Unlock()
	slices.Sort(keys)
	s := func(t string) string { return pgx.Identifier{l.cfg.Schema, t}.Sanitize() }
	rep := &Report{Acked: len(keys)}

	// The completions are counted in one pass over batch_done (its id index is a BRIN, and
	// a probe per key made this check take minutes at 100k keys).
	rows, err := final.Query(ctx, `
WITH done AS (SELECT id, count(*) AS n FROM `+s("batch_done")+` WHERE queue = $1 GROUP BY id)
SELECT u.key, k.batch_id, coalesce(d.n, 0),
    EXISTS (SELECT 1 FROM `+s("batch")+` b WHERE b.id = k.batch_id)
FROM unnest($2::text[]) AS u(key)
LEFT JOIN `+s("batch_key_digest")+` k ON k.digest = `+s("key_digest")+`($1, u.key)
LEFT JOIN done d ON d.id = k.batch_id`, l.cfg.Queue, keys)
	if err != nil {
		return nil, fmt.Errorf("faultlab: check acknowledged batches: %w", err)
	}
	var (
		key    string
		id     *int64
		done   int
		queued bool
	)
	_, err = pgx.ForEachRow(rows, []any{&key, &id, &done, &queued}, func() error {
		switch {
		case id == nil, done == 0 && !queued:
			rep.Lost++
			if len(rep.LostKeys) < 10 {
				rep.LostKeys = append(rep.LostKeys, key+" (acknowledged "+ackAt[key].Format("15:04:05.000")+")")
			}
		case done > 1:
			rep.DoneTwice++
		case done == 1:
			rep.Completed++
		default:
			rep.Queued++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("faultlab: check acknowledged batches: %w", err)
	}

	// Completions first, executions after: a handler records its start before it can
	// complete, so every completion read here has its executions in the snapshot below.
	type completion struct {
		id, token, created int64
		at                 time.Time
		key                string
	}
	// The key tables hold digests, not keys: a completion's key digest is
	// turned back into the key below, from the keys the harness knows.
	rows, err = final.Query(ctx, `SELECT d.id, d.lease_token, d.created_at, d.done_at, coalesce(k.digest::text, '')
FROM `+s("batch_done")+` d LEFT JOIN `+s("batch_key_digest")+` k ON k.batch_id = d.id
WHERE d.queue = $1`, l.cfg.Queue)
	if err != nil {
		return nil, fmt.Errorf("faultlab: check completions: %w", err)
	}
	var (
		dones           []completion
		doneID, doneTok int64
		doneCreated     time.Time
		doneAt          time.Time
		doneKey         string
	)
	_, err = pgx.ForEachRow(rows, []any{&doneID, &doneTok, &doneCreated, &doneAt, &doneKey}, func() error {
		dones = append(dones, completion{doneID, doneTok, doneCreated.UnixMicro(), doneAt, doneKey})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("faultlab: check completions: %w", err)
	}
	l.mu.Lock()
	execs := make([]Execution, len(l.execs))
	for i, e := range l.execs {
		execs[i] = *e
	}
	l.mu.Unlock()
	rep.Executions = len(execs)
	type ident struct{ id, created int64 }
	byBatch := map[ident][]Execution{}
	byKey := map[string][]Execution{}
	for _, e := range execs {
		byBatch[ident{e.BatchID, e.Created}] = append(byBatch[ident{e.BatchID, e.Created}], e)
		byKey[e.Key] = append(byKey[e.Key], e)
	}
	known := slices.Collect(maps.Keys(byKey))
	known = append(known, keys...)
	keyOf := map[string]string{}
	rows, err = final.Query(ctx, `SELECT u.key, `+s("key_digest")+`($1, u.key)::text FROM unnest($2::text[]) AS u(key)`, l.cfg.Queue, known)
	if err != nil {
		return nil, fmt.Errorf("faultlab: check completions: key digests: %w", err)
	}
	var digest string
	_, err = pgx.ForEachRow(rows, []any{&key, &digest}, func() error {
		keyOf[digest] = key
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("faultlab: check completions: key digests: %w", err)
	}
	for i := range dones {
		dones[i].key = keyOf[dones[i].key] // "" when the completion has no key the harness knows
	}
	for _, d := range dones {
		// The runs of this batch: by id and creation time, and by key (a
		// completion re-asserted after a failover can be on record under the id
		// the batch has on the final writer, or under a fresh one).
		runs := slices.Clone(byBatch[ident{d.id, d.created}])
		if d.key != "" {
			for _, e := range byKey[d.key] {
				if e.BatchID != d.id || e.Created != d.created {
					runs = append(runs, e)
				}
			}
		}
		i := slices.IndexFunc(runs, func(e Execution) bool { return e.Token == d.token })
		if i < 0 && slices.ContainsFunc(runs, func(e Execution) bool { return e.Done && e.End.Before(d.at) }) {
			// A run finished the batch before, and a later claim recorded
			// the completion without running it again: a runner does that
			// for a batch whose completion a new writer lost (its own
			// completion journal still held it).
			rep.CompletedByLaterClaim++
			continue
		}
		if i < 0 {
			// No handler ran under the token on record.
			rep.stale(fmt.Sprintf("no run under the token on record: done id=%d token=%d key=%q at=%s runs=%s",
				d.id, d.token, d.key, d.at.Format(stamp), describeRuns(runs)))
			continue
		}
		// Stale: another claim of the batch began while this run's handler was
		// still running, and before the completion was recorded — the run had
		// lost its lease and its completion was accepted all the same. A run
		// that ended before the next claim began (its completion lost with a
		// writer and re-asserted later) is not stale, and neither is one
		// overtaken only by claims made on a writer whose history was
		// discarded (DiscardClaims): on the history that survived, its lease
		// was never taken.
		own := runs[i]
		if carriedByKey(own, d.id, d.created, d.at) {
			rep.CarriedByKey++
			continue
		}
		switch e, onDiscarded := overtaker(own, runs, d.at, l.discardedClaim); {
		case e != nil:
			rep.stale(fmt.Sprintf("overtaken while it ran: done id=%d token=%d key=%q at=%s; its run %s; the other %s",
				d.id, d.token, d.key, d.at.Format(stamp), describeRun(own), describeRun(*e)))
		case onDiscarded:
			rep.OvertakenOnDiscarded++
		}
	}

	now := time.Now()
	for _, es := range byKey {
		if len(es) < 2 {
			continue
		}
		slices.SortFunc(es, func(a, b Execution) int { return a.Start.Compare(b.Start) })
		rep.Duplicates++
		rep.DuplicateAt = append(rep.DuplicateAt, es[1].Start)
		if os.Getenv("SKIPLOCK_DEBUG_DUP") != "" {
			for _, e := range es {
				fmt.Fprintf(os.Stderr, "DUP key=%q id=%d tok=%d runner=%s start=%s end=%s done=%t\n", e.Key, e.BatchID, e.Token, e.Runner,
					e.Start.Format("15:04:05.000"), e.End.Format("15:04:05.000"), e.Done)
			}
		}
		var done []Execution
		for _, e := range es {
			if e.Done {
				done = append(done, e)
			}
		}
		if len(done) > 1 {
			rep.DeliveredTwice++
			rep.DeliveredTwiceAt = append(rep.DeliveredTwiceAt, done[1].Start)
		}
		for i := range es {
			endI := es[i].End
			if endI.IsZero() {
				endI = now
			}
			for j := i + 1; j < len(es); j++ {
				if !es[j].Start.Before(endI) {
					break
				}
				endJ := es[j].End
				if endJ.IsZero() {
					endJ = now
				}
				ov := minTime(endI, endJ).Sub(es[j].Start)
				rep.MaxOverlap = max(rep.MaxOverlap, ov)
				if ov > l.cfg.OverlapMargin {
					rep.Overlaps++
				}
			}
		}
	}
	slices.SortFunc(rep.DuplicateAt, time.Time.Compare)
	slices.SortFunc(rep.DeliveredTwiceAt, time.Time.Compare)
	return rep, nil
}

// overtaker returns a run of runs that overtook own, the run whose
// completion was recorded at doneAt: another claim's run that began while
// own still ran and before the completion was recorded. Runs whose claims
// were made on a discarded writer (discarded) do not count; onDiscarded
// reports whether there were such.
func overtaker(own Execution, runs []Execution, doneAt time.Time, discarded func(Execution) bool) (_ *Execution, onDiscarded bool) {
	if own.End.IsZero() {
		return nil, false
	}
	for i, e := range runs {
		if e.Token == own.Token || !e.Start.After(own.Start) || !e.Start.Before(own.End) || !e.Start.Before(doneAt) {
			continue
		}
		if discarded(e) {
			onDiscarded = true
			continue
		}
		return &runs[i], onDiscarded
	}
	return nil, onDiscarded
}

// carriedByKey reports whether a completion on record for the row (id,
// created) at doneAt under own's token was carried over by key: own ran
// the batch as another row, finished its work before the completion was
// recorded, and its runner recorded the completion by the batch's key
// because the final writer lacked that row.
func carriedByKey(own Execution, id, created int64, doneAt time.Time) bool {
	return (own.BatchID != id || own.Created != created) && own.Done && !own.End.IsZero() && !own.End.After(doneAt)
}

const stamp = "15:04:05.000000"

func describeRun(e Execution) string {
	end := "running"
	if !e.End.IsZero() {
		end = e.End.Format(stamp)
	}
	return fmt.Sprintf("{id=%d token=%d runner=%s start=%s end=%s done=%t}", e.BatchID, e.Token, e.Runner, e.Start.Format(stamp), end, e.Done)
}

func describeRuns(es []Execution) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = describeRun(e)
	}
	return fmt.Sprint(s)
}

// DiscardClaims records the claims on record on a writer whose history is
// being discarded (node, read-only by now; it took writes from since on):
// the lease tokens of its running batches and of its completions, of
// claims whose handlers started after since. Check does not count a run
// overtaken only by those claims as a stale completion (see
// Report.OvertakenOnDiscarded). Claims the writer forgot (a failed attempt
// clears the token) are not recorded, so such an overtaking still counts
// as stale: the check errs towards reporting.
func (l *Load) DiscardClaims(ctx context.Context, node *pgxpool.Pool, since time.Time) error {
	s := func(t string) string { return pgx.Identifier{l.cfg.Schema, t}.Sanitize() }
	rows, err := node.Query(ctx, `SELECT lease_token FROM `+s("batch")+` WHERE queue = $1 AND lease_token IS NOT NULL
UNION ALL SELECT lease_token FROM `+s("batch_done")+` WHERE queue = $1 AND done_at >= $2`, l.cfg.Queue, since)
	if err != nil {
		return fmt.Errorf("faultlab: claims on the discarded writer: %w", err)
	}
	tokens, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("faultlab: claims on the discarded writer: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, t := range tokens {
		l.discarded[t] = since
	}
	return nil
}

// discardedClaim reports whether e's claim was made on a discarded writer:
// its token is on record there, and its handler started after that writer
// began taking writes.
func (l *Load) discardedClaim(e Execution) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	since, ok := l.discarded[e.Token]
	return ok && e.Start.After(since)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Finish stops the producers, lets the runners drain every acknowledged batch on final (the
// writer; at most drain), stops the runners, and checks the invariants there.
func (l *Load) Finish(ctx context.Context, final *pgxpool.Pool, drain time.Duration) (*Report, error) {
	l.StopProducers()
	q := `SELECT count(*) FROM ` + pgx.Identifier{l.cfg.Schema, "batch"}.Sanitize() + ` WHERE queue = $1 AND state <> 'dead'`
	_ = poll(ctx, drain, "the drain of acknowledged batches", func() (bool, error) {
		var n int
		if err := final.QueryRow(ctx, q, l.cfg.Queue).Scan(&n); err != nil {
			return false, nil // the writer may be briefly unreachable; the deadline bounds it
		}
		return n == 0, nil
	})
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	for _, r := range l.Runners {
		if err := r.Stop(sctx); err != nil {
			return nil, fmt.Errorf("faultlab: stop runner: %w", err)
		}
	}
	return l.Check(ctx, final, time.Time{})
}
