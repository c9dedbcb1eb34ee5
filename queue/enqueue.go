package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"go.uber.org/zap"

	"github.com/skiplock/skiplock/batch"
)

// EnqueueParams describes one batch to enqueue.
type EnqueueParams struct {
	// Queue names the queue. Required; see batch.ValidateQueueName.
	Queue string

	// Meta describes the events of the batch: where they are (URI and/or a
	// source position) and how many. Validated with batch.Meta.Validate.
	Meta batch.Meta

	// IdempotencyKey makes the enqueue idempotent within the queue: while
	// the key is remembered (Config.KeyRetention), enqueueing it again adds
	// nothing and returns the first batch's id, even after that batch
	// completed. Defaults to Meta.Source.Key() when Meta.Source is set, so
	// re-enqueueing the same offset range after a producer crash is a no-op;
	// empty otherwise (no key). At most batch.MaxIdempotencyKeyBytes.
	IdempotencyKey string

	// NoIdempotencyKey disables the default key derived from Meta.Source.
	NoIdempotencyKey bool

	// Priority orders claims: lower runs first. Defaults to 0.
	Priority int16

	// RunAt schedules the batch; it is not claimed before. It must lie
	// within MinRunAt..MaxRunAt (PostgreSQL's timestamptz range); a time in
	// the past makes the batch runnable at once. Sub-microsecond parts are
	// dropped. Defaults to now (the database's clock) plus Delay.
	RunAt time.Time

	// Delay schedules the batch this long after the database's now. Not
	// together with RunAt. Defaults to 0.
	Delay time.Duration

	// MaxAttempts overrides Config.MaxAttempts for this batch; at most
	// MaxAttemptsLimit. Defaults to Config.MaxAttempts.
	MaxAttempts int
}

// The range of EnqueueParams.RunAt: PostgreSQL's timestamptz range, from
// 4714-11-24 BC (Go year -4713) to 294276-12-31 23:59:59.999999 UTC. Beyond
// it the server refuses the value, and far beyond it (year 586500 and more)
// the driver's microsecond count overflows and would store another time.
var (
	MinRunAt = time.Date(-4713, time.November, 24, 0, 0, 0, 0, time.UTC)
	MaxRunAt = time.Date(294276, time.December, 31, 23, 59, 59, 999999000, time.UTC)
)

// EnqueueResult reports the outcome of one enqueued batch.
type EnqueueResult struct {
	// ID is the batch's id. For a duplicate it is the id of the batch that
	// first used the idempotency key (which may have completed since).
	ID int64
	// Duplicate is true when the idempotency key was already known and
	// nothing was added. When an earlier attempt of the same call failed
	// in a way that leaves open whether it committed (a broken connection,
	// a failover) and the call repeated it, a key the database got during
	// the call (by its own clock, since the call began) may be the call's
	// own first write: such keys are reported with Duplicate false ("not
	// known to be a duplicate"), and only keys older than the call as
	// Duplicate. Both results carry the batch's id.
	Duplicate bool
}

// Enqueue adds one batch. It returns an *ArgumentError, and writes nothing,
// for invalid params. When the key is a duplicate the result says so and
// nothing is written. Enqueue is idempotent when it has a key, so it can be
// retried safely after an error whose outcome is unknown.
//
// What a nil error means after a failover depends on the key. On a DB that
// follows the writer (the failover package's Pool), a keyed batch is on
// the current writer, or — when a later failover to a replica that missed
// the commit happens — in the client's journal, which asserts it on the
// next writer (Config.JournalWindow); an enqueue that straddled a writer
// change is confirmed on the new writer before Enqueue returns, or it
// returns ErrOutcomeUnknown. A batch without a key has no such protection:
// if the writer that acknowledged it is replaced by a replica that had not
// received the commit yet, it is lost, and nothing can tell. Errors for
// keyless batches say ErrOutcomeUnknown only when the statement may have
// reached the server (the connection broke, or ctx ended, after it was
// sent, or the call straddled a writer change); errors that prove nothing
// was committed (no connection, no writer, a server error) are returned as
// they are, after retries within Config.RetryWindow for those that a
// failover explains.
func (c *Client) Enqueue(ctx context.Context, p EnqueueParams) (EnqueueResult, error) {
	res, err := c.EnqueueMany(ctx, []EnqueueParams{p})
	if err != nil {
		return EnqueueResult{}, err
	}
	return res[0], nil
}

// EnqueueTx is Enqueue inside the caller's transaction: the batch becomes
// visible, and its runners are woken, only when tx commits, and disappears
// if tx rolls back.
func (c *Client) EnqueueTx(ctx context.Context, tx pgx.Tx, p EnqueueParams) (EnqueueResult, error) {
	res, err := c.EnqueueManyTx(ctx, tx, []EnqueueParams{p})
	if err != nil {
		return EnqueueResult{}, err
	}
	return res[0], nil
}

// EnqueueMany adds many batches, atomically: all are written or none. Rows
// go to the database MaxEnqueueBatchRows per statement, in one transaction
// when there is more than one statement: as arrays in one INSERT, or, for
// chunks of at least 500 batches without idempotency keys or schedules,
// with COPY (ids are taken from the sequence first, so they still come back
// in input order; the wake-up follows the COPY). Results are in the
// order of ps. An invalid element makes the whole call fail with an
// *ArgumentError naming its index, before anything is written.
func (c *Client) EnqueueMany(ctx context.Context, ps []EnqueueParams) ([]EnqueueResult, error) {
	return c.enqueueMany(ctx, ps, true)
}

func (c *Client) enqueueMany(ctx context.Context, ps []EnqueueParams, journal bool) ([]EnqueueResult, error) {
	if err := c.check("enqueue"); err != nil {
		return nil, err
	}
	cols, err := c.columns(ps)
	if err != nil || len(ps) == 0 {
		return nil, err
	}
	if perm := cols.lockOrder(); perm != nil {
		return inLockOrder(ps, perm, func(sorted []EnqueueParams) ([]EnqueueResult, error) {
			return c.enqueueMany(ctx, sorted, journal)
		})
	}
	var out []EnqueueResult
	cols.notify = c.enqueueChannel(false)
	since, changed := c.journal.epochNow(), c.writerChanged() // before anything is sent
	start := time.Now()
	err = c.retry(ctx, "enqueue", cols.allKeyed(), func(ctx context.Context) error {
		var err error
		if len(ps) <= MaxEnqueueBatchRows {
			out, err = c.enqueue(ctx, c.db, ps, cols)
		} else {
			err = pgx.BeginFunc(ctx, c.db, func(tx pgx.Tx) error {
				var err error
				out, err = c.enqueue(ctx, tx, ps, cols)
				return err
			})
		}
		if err != nil && !failedForSure(err) {
			cols.ownSince = start // the repeat may find this attempt's keys
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	c.wakeEnqueued(ps, out)
	if !journal {
		return out, nil // an assertion of journaled work: reported by the caller
	}
	out, err = c.journalEnqueued(ctx, since, closed(changed), ps, cols, out)
	if err == nil && c.events != nil {
		c.emitEnqueued(ps, out)
	}
	return out, err
}

// journalEnqueued journals the keyed batches of an acknowledged enqueue
// that started in epoch since, with their effective keys (payloads are kept
// by reference), and returns the call's results.
//
// If the writer changed while the enqueue ran, the acknowledgement may have
// come from the writer being replaced, and the change's advance of the
// journal may have run before these batches were journaled: they are
// journaled as pending (the client's asserter takes them from there, until
// Close), and the call asserts them on the current writer itself, within
// ctx, so that what it reports is true of the current writer. If that
// fails, or the call also had batches without keys (which cannot be
// asserted again safely), it returns an *OutcomeUnknownError.
func (c *Client) journalEnqueued(ctx context.Context, since int64, changed bool, ps []EnqueueParams, cols *enqueueColumns, out []EnqueueResult) ([]EnqueueResult, error) {
	if c.journal == nil {
		return out, nil
	}
	var keyed []EnqueueParams
	var at []int // index in ps of each keyed batch
	if cols.keyed {
		keyed = make([]EnqueueParams, 0, len(ps))
		at = make([]int, 0, len(ps))
		for i := range ps {
			if cols.key[i] == "" {
				continue
			}
			p := ps[i]
			p.IdempotencyKey = cols.key[i]
			keyed = append(keyed, p)
			at = append(at, i)
		}
	}
	var straddled bool
	var seqs []uint64
	if len(keyed) > 0 {
		straddled, seqs = c.journal.add(since, changed, keyed...)
	} else {
		straddled = changed || c.journal.epochNow() != since
	}
	if !straddled {
		return out, nil
	}
	if cols.unkeyed {
		return nil, &OutcomeUnknownError{Op: "enqueue", Err: errStraddled}
	}
	for {
		epoch, changed := c.journal.epochNow(), c.writerChanged()
		res, err := c.enqueueMany(ctx, keyed, false)
		if err != nil {
			c.log.Warn("could not assert an enqueue that straddled a writer change; the journal keeps it",
				zap.Int("batches", len(keyed)), zap.Error(err))
			return nil, &OutcomeUnknownError{Op: "enqueue", Err: fmt.Errorf("%w; asserting it on the new writer failed: %w", errStraddled, err)}
		}
		if closed(changed) || !c.journal.settle(seqs, epoch) {
			continue // the writer changed again meanwhile
		}
		restored := 0
		for j, r := range res {
			out[at[j]].ID = r.ID // the id on the current writer
			if !r.Duplicate && !out[at[j]].Duplicate {
				restored++
			}
		}
		c.reassertedEnqueues.Add(int64(restored))
		if restored > 0 && c.events != nil {
			c.events.emit(Event{Kind: EventReassertedEnqueues, Count: restored})
		}
		return out, nil
	}
}

// emitEnqueued reports the new batches of an enqueue, one event per queue.
func (c *Client) emitEnqueued(ps []EnqueueParams, out []EnqueueResult) {
	var queues []string
	var counts []int
	for i := range ps {
		if out[i].Duplicate {
			continue
		}
		k := slices.Index(queues, ps[i].Queue)
		if k < 0 {
			queues = append(queues, ps[i].Queue)
			counts = append(counts, 0)
			k = len(queues) - 1
		}
		counts[k]++
	}
	for k, q := range queues {
		c.events.emit(Event{Kind: EventEnqueued, Queue: q, Count: counts[k]})
	}
}

// errStraddled says why an enqueue's outcome is unknown after a writer change.
var errStraddled = errors.New("acknowledged by a writer that was replaced while the call ran")

// assertEnqueues enqueues journaled keyed batches again on the current
// writer; those it already has are duplicates and add nothing.
func (c *Client) assertEnqueues(ctx context.Context, ps []EnqueueParams) error {
	res, err := c.enqueueMany(ctx, ps, false)
	if err != nil {
		return err
	}
	restored := 0
	for _, r := range res {
		if !r.Duplicate {
			restored++
		}
	}
	c.reassertedEnqueues.Add(int64(restored))
	lvl := zap.DebugLevel
	if restored > 0 {
		lvl = zap.WarnLevel
		if c.events != nil {
			c.events.emit(Event{Kind: EventReassertedEnqueues, Count: restored})
		}
	}
	c.log.Log(lvl, "asserted journaled enqueues on the current writer",
		zap.Int("journaled", len(ps)), zap.Int("restored", restored))
	return nil
}

// EnqueueManyTx is EnqueueMany inside the caller's transaction.
func (c *Client) EnqueueManyTx(ctx context.Context, tx pgx.Tx, ps []EnqueueParams) ([]EnqueueResult, error) {
	if err := c.check("enqueue"); err != nil {
		return nil, err
	}
	if tx == nil {
		return nil, argError("enqueue", "tx", "nil")
	}
	cols, err := c.columns(ps)
	if err != nil || len(ps) == 0 {
		return nil, err
	}
	if perm := cols.lockOrder(); perm != nil {
		return inLockOrder(ps, perm, func(sorted []EnqueueParams) ([]EnqueueResult, error) {
			return c.EnqueueManyTx(ctx, tx, sorted)
		})
	}
	cols.notify = c.enqueueChannel(true)
	return c.enqueue(ctx, tx, ps, cols)
}

// wakeEnqueued wakes, through the coalescer, the runners of the queues that
// got a batch runnable now from a committed enqueue.
func (c *Client) wakeEnqueued(ps []EnqueueParams, out []EnqueueResult) {
	if c.wakes == nil {
		return
	}
	now := time.Now()
	var queues []string
	for i := range ps {
		p := &ps[i]
		if out[i].Duplicate || p.Delay > 0 || p.RunAt.After(now) || slices.Contains(queues, p.Queue) {
			continue
		}
		queues = append(queues, p.Queue)
	}
	if len(queues) > 0 {
		c.wakes.wake(queues)
	}
}

// lockOrder returns, for a keyed enqueue that takes more than one
// statement, the order of its rows by (queue, key), or nil when they are in
// that order already or fit one statement (which sorts its keys itself).
// Keys stay locked until the transaction ends, so statements that lock
// them in input order would deadlock with a producer that sends
// overlapping keys in another order.
func (c *enqueueColumns) lockOrder() []int {
	n := len(c.queue)
	if !c.keyed || n <= MaxEnqueueBatchRows {
		return nil
	}
	less := func(a, b int) int {
		if r := strings.Compare(c.queue[a], c.queue[b]); r != 0 {
			return r
		}
		return strings.Compare(c.key[a], c.key[b])
	}
	sorted := true
	for i := 1; i < n && sorted; i++ {
		sorted = less(i-1, i) <= 0
	}
	if sorted {
		return nil
	}
	perm := make([]int, n)
	for i := range perm {
		perm[i] = i
	}
	slices.SortStableFunc(perm, less)
	return perm
}

// inLockOrder runs enqueue on ps reordered by perm and returns its results
// in the order of ps.
func inLockOrder(ps []EnqueueParams, perm []int, enqueue func([]EnqueueParams) ([]EnqueueResult, error)) ([]EnqueueResult, error) {
	sorted := make([]EnqueueParams, len(ps))
	for i, k := range perm {
		sorted[i] = ps[k]
	}
	res, err := enqueue(sorted)
	if err != nil {
		return nil, err
	}
	out := make([]EnqueueResult, len(ps))
	for i, k := range perm {
		out[k] = res[i]
	}
	return out, nil
}

// enqueueColumns holds EnqueueParams as one array per column. Arrays that
// would hold only defaults stay nil and travel as NULL.
type enqueueColumns struct {
	queue, key               []string
	priority                 []int16
	runAt                    []pgtype.Timestamptz
	delay                    []int64
	maxAttempts              []int32
	partKey, uri, topic      []string
	partition                []int32
	start, end, events, size []int64
	payload                  [][]byte
	keyed                    bool // some row has a key
	unkeyed                  bool // some row has none
	notify                   any  // the NOTIFY channel for the statements, or nil
	// ownSince, when set, is when the call began whose earlier attempt may
	// have committed: duplicates of keys written since may be its own.
	ownSince time.Time
}

// allKeyed reports whether every row has an idempotency key, which makes
// the enqueue safe to repeat.
func (c *enqueueColumns) allKeyed() bool { return c.keyed && !c.unkeyed }

// keyedIn reports whether any of rows lo..hi has an idempotency key.
func (c *enqueueColumns) keyedIn(lo, hi int) bool {
	if !c.keyed {
		return false
	}
	return slices.ContainsFunc(c.key[lo:hi], func(k string) bool { return k != "" })
}

func (c *Client) columns(ps []EnqueueParams) (*enqueueColumns, error) {
	n := len(ps)
	cols := &enqueueColumns{
		queue:       make([]string, n),
		key:         make([]string, n),
		maxAttempts: make([]int32, n),
	}
	for i := range ps {
		p := &ps[i]
		key, err := c.validateEnqueue(p)
		if err != nil {
			if n > 1 {
				if ae, ok := err.(*ArgumentError); ok {
					ae.Field = fmt.Sprintf("[%d].%s", i, ae.Field)
				}
			}
			return nil, err
		}
		cols.queue[i] = p.Queue
		cols.key[i] = key
		cols.keyed = cols.keyed || key != ""
		cols.unkeyed = cols.unkeyed || key == ""
		cols.maxAttempts[i] = int32(p.MaxAttempts)
		if cols.maxAttempts[i] == 0 {
			cols.maxAttempts[i] = int32(c.cfg.MaxAttempts)
		}
		set(&cols.priority, n, i, p.Priority, p.Priority != 0)
		set(&cols.runAt, n, i, pgtype.Timestamptz{Time: p.RunAt, Valid: true}, !p.RunAt.IsZero())
		set(&cols.delay, n, i, p.Delay.Microseconds(), p.Delay != 0)
		m := &p.Meta
		set(&cols.partKey, n, i, m.PartitionKey, m.PartitionKey != "")
		set(&cols.uri, n, i, m.URI, m.URI != "")
		if !m.Source.IsZero() {
			set(&cols.topic, n, i, m.Source.Topic, true)
			set(&cols.partition, n, i, m.Source.Partition, true)
			set(&cols.start, n, i, m.Source.Start, true)
			set(&cols.end, n, i, m.Source.End, true)
		}
		set(&cols.events, n, i, m.EventCount, m.EventCount != 0)
		set(&cols.size, n, i, m.ByteSize, m.ByteSize != 0)
		set(&cols.payload, n, i, m.Payload, m.Payload != nil)
	}
	if !cols.keyed {
		cols.key = nil
	}
	return cols, nil
}

// set stores v at index i of *col, allocating the column (length n) the
// first time a row needs it.
func set[T any](col *[]T, n, i int, v T, needed bool) {
	if !needed {
		return
	}
	if *col == nil {
		*col = make([]T, n)
	}
	(*col)[i] = v
}

// validateEnqueue checks p and returns its effective idempotency key.
func (c *Client) validateEnqueue(p *EnqueueParams) (string, error) {
	const op = "enqueue"
	if err := batch.ValidateQueueName(p.Queue); err != nil {
		return "", &ArgumentError{Op: op, Field: "Queue", Reason: err.Error(), Err: err}
	}
	if err := p.Meta.Validate(); err != nil {
		return "", &ArgumentError{Op: op, Field: "Meta", Reason: err.Error(), Err: err}
	}
	if p.Delay < 0 {
		return "", argError(op, "Delay", "negative (%s)", p.Delay)
	}
	if p.Delay != 0 && !p.RunAt.IsZero() {
		return "", argError(op, "Delay", "set together with RunAt")
	}
	if !p.RunAt.IsZero() && (p.RunAt.Before(MinRunAt) || p.RunAt.After(MaxRunAt)) {
		return "", argError(op, "RunAt", "%s is outside PostgreSQL's range %s..%s",
			p.RunAt.UTC().Format(time.RFC3339Nano), MinRunAt.Format(time.RFC3339), MaxRunAt.Format(time.RFC3339Nano))
	}
	if p.MaxAttempts < 0 || p.MaxAttempts > MaxAttemptsLimit {
		return "", argError(op, "MaxAttempts", "%d is outside 1..%d", p.MaxAttempts, MaxAttemptsLimit)
	}
	key := p.IdempotencyKey
	if key == "" && !p.NoIdempotencyKey && !p.Meta.Source.IsZero() {
		key = p.Meta.Source.Key()
	}
	if err := batch.ValidateIdempotencyKey(key); err != nil {
		return "", &ArgumentError{Op: op, Field: "IdempotencyKey", Reason: err.Error(), Err: err}
	}
	return key, nil
}

// ownKeyMargin widens the window in which a duplicate key may be a call's
// own earlier write (see EnqueueResult.Duplicate).
const ownKeyMargin = 250 * time.Millisecond

func containsNUL(s string) bool { return strings.IndexByte(s, 0) >= 0 }

func (c *Client) enqueue(ctx context.Context, q querier, ps []EnqueueParams, cols *enqueueColumns) ([]EnqueueResult, error) {
	out := make([]EnqueueResult, len(ps))
	var dupIdx []int
	for lo := 0; lo < len(ps); lo += MaxEnqueueBatchRows {
		hi := min(lo+MaxEnqueueBatchRows, len(ps))
		ids, err := c.enqueueChunk(ctx, q, cols, lo, hi)
		if err != nil {
			return nil, err
		}
		for j, id := range ids {
			if id == nil {
				dupIdx = append(dupIdx, lo+j)
				continue
			}
			out[lo+j].ID = *id
		}
	}
	if len(dupIdx) > 0 {
		if err := c.lookupDuplicates(ctx, q, cols, dupIdx, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (c *Client) enqueueChunk(ctx context.Context, q querier, cols *enqueueColumns, lo, hi int) ([]*int64, error) {
	if cp, ok := q.(copier); ok && cols.copyable(lo, hi) {
		return c.enqueueCopy(ctx, cp, q, cols, lo, hi)
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	query, keys := c.sql.enqueueKeyless, []string(nil)
	if cols.keyedIn(lo, hi) {
		query, keys = c.sql.enqueue, cols.key[lo:hi]
	}
	rows, err := q.Query(ctx, query, c.sql.sequence,
		cols.queue[lo:hi], keys, part(cols.priority, lo, hi), part(cols.runAt, lo, hi),
		part(cols.delay, lo, hi), cols.maxAttempts[lo:hi], part(cols.partKey, lo, hi), part(cols.uri, lo, hi),
		part(cols.topic, lo, hi), part(cols.partition, lo, hi), part(cols.start, lo, hi), part(cols.end, lo, hi),
		part(cols.events, lo, hi), part(cols.size, lo, hi), part(cols.payload, lo, hi), cols.notify)
	if err != nil {
		return nil, fmt.Errorf("enqueue %d batches into %q: %w", hi-lo, short(cols.queue[lo]), err)
	}
	ids := make([]*int64, 0, hi-lo)
	var ord, woken int64
	var id *int64
	_, err = pgx.ForEachRow(rows, []any{&ord, &id, &woken}, func() error {
		ids = append(ids, id)
		id = nil
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("enqueue %d batches into %q: %w", hi-lo, short(cols.queue[lo]), err)
	}
	if len(ids) != hi-lo {
		return nil, fmt.Errorf("enqueue: %d results for %d batches", len(ids), hi-lo)
	}
	return ids, nil
}

// part returns col[lo:hi], or nil for a column nobody set.
func part[T any](col []T, lo, hi int) []T {
	if col == nil {
		return nil
	}
	return col[lo:hi]
}

// lookupDuplicates fills in the ids of batches whose keys were already
// known. It runs as a separate statement, so it sees keys whose insert
// committed while the enqueue statement waited for them.
func (c *Client) lookupDuplicates(ctx context.Context, q querier, cols *enqueueColumns, idx []int, out []EnqueueResult) error {
	queues := make([]string, len(idx))
	keys := make([]string, len(idx))
	for j, i := range idx {
		queues[j], keys[j] = cols.queue[i], cols.key[i]
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	rows, err := q.Query(ctx, c.sql.keyLookup, queues, keys)
	if err != nil {
		return fmt.Errorf("enqueue: look up duplicate keys: %w", err)
	}
	type found struct {
		ID  *int64
		Age *float64 // seconds since the key was written, by the database clock
	}
	ids, err := pgx.CollectRows(rows, pgx.RowToStructByPos[found])
	if err != nil {
		return fmt.Errorf("enqueue: look up duplicate keys: %w", err)
	}
	if len(ids) != len(idx) {
		return fmt.Errorf("enqueue: %d key lookups for %d duplicates", len(ids), len(idx))
	}
	// The call's own earlier attempt wrote its keys after the call began:
	// they are at most as old as the call (measured after the lookup, so
	// longer than the database's interval), with a margin for clock rates.
	var own float64 = -1
	if !cols.ownSince.IsZero() {
		own = (time.Since(cols.ownSince) + ownKeyMargin).Seconds()
	}
	for j, i := range idx {
		f := ids[j]
		out[i].Duplicate = !(f.Age != nil && *f.Age <= own)
		if f.ID != nil {
			out[i].ID = *f.ID
		}
	}
	return nil
}
