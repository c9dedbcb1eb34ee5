package queue

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/skiplock/skiplock/batch"
)

// MaxListLimit bounds one page of ListDead.
const MaxListLimit = 1000

func validQueue(op, queue string) error {
	if err := batch.ValidateQueueName(queue); err != nil {
		return &ArgumentError{Op: op, Field: "queue", Reason: err.Error(), Err: err}
	}
	return nil
}

// ListDead returns up to limit (1..MaxListLimit) dead-lettered batches of a
// queue with ids above afterID, in id order, with their last errors. Page by
// passing the last id seen. It is retried across failovers (it only reads).
func (c *Client) ListDead(ctx context.Context, queue string, afterID int64, limit int) ([]batch.Batch, error) {
	if err := c.check("list dead"); err != nil {
		return nil, err
	}
	if err := validQueue("list dead", queue); err != nil {
		return nil, err
	}
	if limit < 1 || limit > MaxListLimit {
		return nil, argError("list dead", "limit", "%d is outside 1..%d", limit, MaxListLimit)
	}
	var bs []batch.Batch
	err := c.retry(ctx, "list dead", true, func(ctx context.Context) error {
		ctx, cancel := c.opContext(ctx)
		defer cancel()
		rows, err := c.db.Query(ctx, c.sql.listDead, queue, afterID, limit)
		if err != nil {
			return fmt.Errorf("list dead %q: %w", short(queue), err)
		}
		bs, err = collectBatches(rows, limit, queue)
		if err != nil {
			return fmt.Errorf("list dead %q: %w", short(queue), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return bs, nil
}

// RequeueDead makes the given dead batches of a queue available again with
// a fresh set of attempts (their last error is kept until they run), and
// returns how many it requeued (repeated ids count once). It is all or
// nothing: if any id is not a dead batch of the queue (unknown, completed,
// queued, running, or of another queue), it requeues none and returns an
// error matching ErrNotFound that names such ids. No ids requeue nothing.
//
// It is not repeated after a failure that may have committed (a broken
// connection, a timeout after the statement was sent): a repeat would find
// the batches requeued and report them not found. Such failures return an
// *OutcomeUnknownError (see Get or ListDead for what happened); failures
// that prove nothing was committed are retried within Config.RetryWindow.
func (c *Client) RequeueDead(ctx context.Context, queue string, ids []int64) (int, error) {
	if err := c.check("requeue"); err != nil {
		return 0, err
	}
	if len(ids) == 0 {
		if err := validQueue("requeue", queue); err != nil {
			return 0, err
		}
		return 0, nil
	}
	return c.requeueDeadRetried(ctx, queue, ids)
}

// RequeueDeadTx is RequeueDead inside the caller's transaction: the batches
// become available, and runners are woken, when tx commits. It is not
// retried.
func (c *Client) RequeueDeadTx(ctx context.Context, tx pgx.Tx, queue string, ids []int64) (int, error) {
	if err := c.check("requeue"); err != nil {
		return 0, err
	}
	if tx == nil {
		return 0, argError("requeue", "tx", "nil")
	}
	if len(ids) == 0 {
		if err := validQueue("requeue", queue); err != nil {
			return 0, err
		}
		return 0, nil
	}
	return c.requeueDead(ctx, tx, queue, ids)
}

// RequeueAllDead requeues every dead batch of a queue and returns how many
// (0 when there were none); see RequeueDead for how it is retried.
func (c *Client) RequeueAllDead(ctx context.Context, queue string) (int, error) {
	if err := c.check("requeue"); err != nil {
		return 0, err
	}
	return c.requeueDeadRetried(ctx, queue, nil)
}

func (c *Client) requeueDeadRetried(ctx context.Context, queue string, ids []int64) (int, error) {
	if err := validQueue("requeue", queue); err != nil {
		return 0, err
	}
	var n int
	var answer error // the statement's own answer (ErrNotFound), which is not retried
	err := c.retry(ctx, "requeue dead", false, func(ctx context.Context) error {
		var err error
		n, err = c.requeueDead(ctx, c.db, queue, ids)
		if errors.Is(err, ErrNotFound) {
			answer, err = err, nil
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, answer
}

// maxNamedIDs bounds how many ids an error message lists.
const maxNamedIDs = 10

// notDeadError is the ErrNotFound of an all-or-nothing change of dead
// batches (requeue, delete) that found ids which are not dead batches of
// the queue; it names at most maxNamedIDs of them.
func notDeadError(verb, past, queue string, absent []int64) error {
	named := absent[:min(len(absent), maxNamedIDs)]
	more := ""
	if len(absent) > len(named) {
		more = fmt.Sprintf(" and %d more", len(absent)-len(named))
	}
	return fmt.Errorf("%s dead %q: batches %v%s are not dead batches of the queue; nothing %s: %w",
		verb, short(queue), named, more, past, ErrNotFound)
}

func (c *Client) requeueDead(ctx context.Context, q querier, queue string, ids []int64) (int, error) {
	if err := validQueue("requeue", queue); err != nil {
		return 0, err
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	var n, woken int64
	var absent []int64
	if err := q.QueryRow(ctx, c.sql.requeueDead, queue, ids, c.channel()).Scan(&n, &woken, &absent); err != nil {
		return 0, fmt.Errorf("requeue dead %q: %w", short(queue), err)
	}
	if len(absent) > 0 {
		return 0, notDeadError("requeue", "requeued", queue, absent)
	}
	return int(n), nil
}

// DeleteDead deletes the given dead batches of a queue for good and returns
// how many it deleted (repeated ids count once). It is all or nothing like
// RequeueDead: if any id is not a dead batch of the queue, it deletes none
// and returns an error matching ErrNotFound that names such ids. No ids
// delete nothing. Idempotency keys of deleted batches stay remembered until
// Config.KeyRetention, as for completed batches, so enqueueing the same key
// again within it adds nothing; requeue a batch to run it again. It is
// repeated only after failures that prove nothing was committed; others
// return an *OutcomeUnknownError.
func (c *Client) DeleteDead(ctx context.Context, queue string, ids []int64) (int, error) {
	const op = "delete dead"
	if err := c.check(op); err != nil {
		return 0, err
	}
	if err := validQueue(op, queue); err != nil {
		return 0, err
	}
	if len(ids) == 0 {
		return 0, nil
	}
	var n int
	var answer error // the statement's own answer (ErrNotFound), which is not retried
	err := c.retry(ctx, op, false, func(ctx context.Context) error {
		var err error
		n, err = c.deleteDead(ctx, c.db, queue, ids)
		if errors.Is(err, ErrNotFound) {
			answer, err = err, nil
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, answer
}

// DeleteDeadTx is DeleteDead inside the caller's transaction: the batches
// are gone when tx commits. It is not retried.
func (c *Client) DeleteDeadTx(ctx context.Context, tx pgx.Tx, queue string, ids []int64) (int, error) {
	const op = "delete dead"
	if err := c.check(op); err != nil {
		return 0, err
	}
	if tx == nil {
		return 0, argError(op, "tx", "nil")
	}
	if err := validQueue(op, queue); err != nil {
		return 0, err
	}
	if len(ids) == 0 {
		return 0, nil
	}
	return c.deleteDead(ctx, tx, queue, ids)
}

func (c *Client) deleteDead(ctx context.Context, q querier, queue string, ids []int64) (int, error) {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	var n int64
	var absent []int64
	if err := q.QueryRow(ctx, c.sql.deleteDead, queue, ids).Scan(&n, &absent); err != nil {
		return 0, fmt.Errorf("delete dead %q: %w", short(queue), err)
	}
	if len(absent) > 0 {
		return 0, notDeadError("delete", "deleted", queue, absent)
	}
	return int(n), nil
}

// Pause stops claims from a queue, by every runner and Claim call, until
// Resume. Batches already claimed finish normally; enqueues still work.
// Pausing a paused queue changes nothing, so Pause is retried across
// failovers.
func (c *Client) Pause(ctx context.Context, queue string) error {
	return c.setPausedRetried(ctx, "pause", queue, true)
}

// PauseTx is Pause inside the caller's transaction: it takes effect when tx
// commits. It is not retried.
func (c *Client) PauseTx(ctx context.Context, tx pgx.Tx, queue string) error {
	return c.setPausedTx(ctx, tx, "pause", queue, true)
}

// Resume lets claims from a paused queue start again and wakes its runners.
// It is retried across failovers, like Pause.
func (c *Client) Resume(ctx context.Context, queue string) error {
	return c.setPausedRetried(ctx, "resume", queue, false)
}

// ResumeTx is Resume inside the caller's transaction: it takes effect, and
// wakes the runners, when tx commits. It is not retried.
func (c *Client) ResumeTx(ctx context.Context, tx pgx.Tx, queue string) error {
	return c.setPausedTx(ctx, tx, "resume", queue, false)
}

func (c *Client) setPausedRetried(ctx context.Context, op, queue string, paused bool) error {
	if err := c.check(op); err != nil {
		return err
	}
	if err := validQueue(op, queue); err != nil {
		return err
	}
	return c.retry(ctx, op, true, func(ctx context.Context) error {
		return c.setPaused(ctx, c.db, op, queue, paused)
	})
}

func (c *Client) setPausedTx(ctx context.Context, tx pgx.Tx, op, queue string, paused bool) error {
	if err := c.check(op); err != nil {
		return err
	}
	if tx == nil {
		return argError(op, "tx", "nil")
	}
	if err := validQueue(op, queue); err != nil {
		return err
	}
	return c.setPaused(ctx, tx, op, queue, paused)
}

func (c *Client) setPaused(ctx context.Context, q querier, op, queue string, paused bool) error {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	var got bool
	var woken int64
	if err := q.QueryRow(ctx, c.sql.setPaused, queue, paused, c.channel()).Scan(&got, &woken); err != nil {
		return fmt.Errorf("%s %q: %w", op, short(queue), err)
	}
	return nil
}

// Paused reports whether a queue is paused. It is retried across failovers.
func (c *Client) Paused(ctx context.Context, queue string) (bool, error) {
	if err := c.check("paused"); err != nil {
		return false, err
	}
	if err := validQueue("paused", queue); err != nil {
		return false, err
	}
	var paused bool
	err := c.retry(ctx, "paused", true, func(ctx context.Context) error {
		ctx, cancel := c.opContext(ctx)
		defer cancel()
		if err := c.db.QueryRow(ctx, c.sql.paused, queue).Scan(&paused); err != nil {
			return fmt.Errorf("paused %q: %w", short(queue), err)
		}
		return nil
	})
	return paused, err
}

// QueueStats are the figures of one queue at one moment.
type QueueStats struct {
	Queue     string
	Available int64         // runnable now
	Scheduled int64         // waiting for their run-at (new or retrying)
	Running   int64         // claimed under a lease
	Expired   int64         // running, but the lease expired and was not reclaimed yet
	Dead      int64         // dead-lettered
	OldestAge time.Duration // how long the oldest runnable batch has been runnable; 0 if none; at most MaxOldestAge
	Paused    bool
}

// MaxOldestAge is the largest QueueStats.OldestAge: the longest
// time.Duration (about 292 years). A batch runnable for longer (a RunAt
// centuries ago) reports it instead of overflowing.
const MaxOldestAge = time.Duration(math.MaxInt64)

// Stats returns the figures of one queue, or of every queue that has
// batches or settings when queue is empty. It scans the hot table, which
// holds only unfinished and dead batches. It is retried across failovers.
func (c *Client) Stats(ctx context.Context, queue string) ([]QueueStats, error) {
	if err := c.check("stats"); err != nil {
		return nil, err
	}
	var q any
	if queue != "" {
		if err := validQueue("stats", queue); err != nil {
			return nil, err
		}
		q = queue
	}
	var out []QueueStats
	err := c.retry(ctx, "stats", true, func(ctx context.Context) error {
		ctx, cancel := c.opContext(ctx)
		defer cancel()
		out = nil
		rows, err := c.db.Query(ctx, c.sql.stats, q)
		if err != nil {
			return fmt.Errorf("stats: %w", err)
		}
		var s QueueStats
		var age float64
		_, err = pgx.ForEachRow(rows, []any{&s.Queue, &s.Available, &s.Scheduled, &s.Running, &s.Expired, &s.Dead, &age, &s.Paused}, func() error {
			s.OldestAge = ageDuration(age)
			out = append(out, s)
			return nil
		})
		if err != nil {
			return fmt.Errorf("stats: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ageDuration converts seconds to a Duration, clamped to 0..MaxOldestAge.
func ageDuration(seconds float64) time.Duration {
	switch ns := seconds * float64(time.Second); {
	case ns != ns || ns <= 0: // NaN or not positive
		return 0
	case ns >= float64(MaxOldestAge):
		return MaxOldestAge
	default:
		return time.Duration(ns)
	}
}

// Prune deletes completion records older than Config.DoneRetention and
// idempotency keys older than Config.KeyRetention, in statements of at most
// PruneChunk rows, and returns how many of each it deleted. After each full
// chunk it waits so that deleting takes at most Config.PruneDuty of its
// time (see prunePause); it blocks until nothing expired is left, ctx ends
// (its error is returned with the counts so far) or a statement fails.
// Runners call it periodically; calling it from several processes at once
// is safe. Each statement is retried across failovers (deleting what is old
// is idempotent).
func (c *Client) Prune(ctx context.Context) (done, keys int64, err error) {
	if err := c.check("prune"); err != nil {
		return 0, 0, err
	}
	run := func(query string, age time.Duration) (int64, error) {
		var total int64
		for {
			var n int64
			began := time.Now()
			err := c.retry(ctx, "prune", true, func(ctx context.Context) error {
				opCtx, cancel := c.opContext(ctx)
				defer cancel()
				tag, err := c.db.Exec(opCtx, query, age.Microseconds(), PruneChunk)
				n = tag.RowsAffected()
				return err
			})
			if err != nil {
				return total, err
			}
			total += n
			if n < PruneChunk {
				return total, nil
			}
			t := time.NewTimer(prunePause(time.Since(began), c.cfg.PruneDuty))
			select {
			case <-ctx.Done():
				t.Stop()
				return total, ctx.Err()
			case <-t.C:
			}
		}
	}
	if done, err = run(c.sql.pruneDone, c.cfg.DoneRetention); err != nil {
		return done, 0, fmt.Errorf("prune completion records: %w", err)
	}
	if keys, err = run(c.sql.pruneKeys, c.cfg.KeyRetention); err != nil {
		return done, keys, fmt.Errorf("prune idempotency keys: %w", err)
	}
	// Keys recorded before migration 0004, until none is left.
	old, err := run(c.sql.pruneOldKeys, c.cfg.KeyRetention)
	keys += old
	if err != nil {
		return done, keys, fmt.Errorf("prune idempotency keys recorded before migration 0004: %w", err)
	}
	return done, keys, nil
}

// PruneChunk is the most rows one statement of Prune deletes.
const PruneChunk = 10000

// prunePauseMax caps the wait after one chunk, so that a chunk slowed by a
// busy server does not stall pruning for long.
const prunePauseMax = 5 * time.Second

// prunePause is the wait after a chunk that took took, for deleting to take
// the share duty of the time: took*(1/duty-1), at most prunePauseMax.
func prunePause(took time.Duration, duty float64) time.Duration {
	if duty >= 1 || took <= 0 {
		return 0
	}
	p := float64(took) * (1/duty - 1)
	if p >= float64(prunePauseMax) {
		return prunePauseMax
	}
	return time.Duration(p)
}

// ErrVacuumNotPermitted is returned by Vacuum when the current role does
// not own the hot table and so cannot vacuum it.
var ErrVacuumNotPermitted = errors.New("skiplock: not permitted to vacuum the batch table (the role does not own it)")

// VacuumMinDeadTuples is how many dead tuples the hot table must have
// before Vacuum does anything: on a quiet queue there is nothing to clean.
const VacuumMinDeadTuples = 1000

// Vacuum vacuums the hot batch table unless it has fewer than
// VacuumMinDeadTuples dead tuples, was vacuumed (by anyone, autovacuum
// included) within minInterval, or another session is vacuuming it right
// now. Claims walk the claim index from its head, where the entries
// of finished batches collect until a vacuum removes them; under sustained
// churn autovacuum's default one-minute cycle lets them, and the table, grow
// until claims slow down several times over. Runners call Vacuum every
// RunnerConfig.VacuumInterval. It reports whether a vacuum ran, and returns
// ErrVacuumNotPermitted when the role cannot vacuum the table. Both the
// check and the vacuum are retried across failovers.
func (c *Client) Vacuum(ctx context.Context, minInterval time.Duration) (bool, error) {
	v, err := c.vacuum(ctx, minInterval)
	return v.ran, err
}

// vacuumResult is what a Vacuum call did: whether it ran, and the hot
// table's dead tuples before and after it (after: as the statistics report
// them right after the vacuum; dead tuples an old snapshot can still see
// stay counted).
type vacuumResult struct {
	ran                   bool
	deadBefore, deadAfter int64
	// churned is how many updates and deletes the statistics counted
	// between the two readings: dead tuples made while the vacuum ran.
	churned int64
}

// ineffective reports whether a vacuum that ran left at least half of the
// dead tuples it found (those it counted after, less the ones made while it
// ran): some snapshot still sees them, and vacuuming again before it ends
// only costs a scan of the table.
func (v vacuumResult) ineffective() bool {
	left := v.deadAfter - v.churned
	return v.ran && left >= VacuumMinDeadTuples && 2*left >= v.deadBefore
}

func (c *Client) vacuum(ctx context.Context, minInterval time.Duration) (vacuumResult, error) {
	var v vacuumResult
	if err := c.check("vacuum"); err != nil {
		return v, err
	}
	var due, allowed bool
	var churnBefore, churnAfter int64
	err := c.retry(ctx, "vacuum", true, func(ctx context.Context) error {
		opCtx, cancel := c.opContext(ctx)
		defer cancel()
		if err := c.db.QueryRow(opCtx, c.sql.vacuumDue, c.sql.table, minInterval.Microseconds(), VacuumMinDeadTuples).Scan(&due, &allowed, &v.deadBefore, &churnBefore); err != nil {
			return fmt.Errorf("vacuum: %w", err)
		}
		return nil
	})
	if err != nil {
		return v, err
	}
	if !allowed {
		return v, ErrVacuumNotPermitted
	}
	if !due {
		return v, nil
	}
	// One attempt: a vacuum that ran out of time would only run out again
	// (the caller's pace spaces the next one out).
	opCtx, cancel := c.opContext(ctx)
	_, err = c.db.Exec(opCtx, c.sql.vacuum)
	cancel()
	if err != nil {
		return v, fmt.Errorf("vacuum: %w", err)
	}
	v.ran = true
	// Only a hint for the caller's pacing: on error, count it as effective.
	opCtx, cancel = c.opContext(ctx)
	defer cancel()
	if err := c.db.QueryRow(opCtx, c.sql.deadTuples, c.sql.table).Scan(&v.deadAfter, &churnAfter); err != nil {
		v.deadAfter = 0
	}
	v.churned = max(churnAfter-churnBefore, 0)
	return v, nil
}
