package queue

import (
	"context"
	"errors"
	"fmt"
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
// passing the last id seen.
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
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	rows, err := c.db.Query(ctx, c.sql.listDead, queue, afterID, limit)
	if err != nil {
		return nil, fmt.Errorf("list dead %q: %w", short(queue), err)
	}
	bs, err := collectBatches(rows, limit, queue)
	if err != nil {
		return nil, fmt.Errorf("list dead %q: %w", short(queue), err)
	}
	return bs, nil
}

// RequeueDead makes the given dead batches of a queue available again with
// a fresh set of attempts (their last error is kept until they run). Ids
// that are not dead batches of the queue are ignored; it returns how many
// were requeued.
func (c *Client) RequeueDead(ctx context.Context, queue string, ids []int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	return c.requeueDead(ctx, queue, ids)
}

// RequeueAllDead requeues every dead batch of a queue; see RequeueDead.
func (c *Client) RequeueAllDead(ctx context.Context, queue string) (int, error) {
	return c.requeueDead(ctx, queue, nil)
}

func (c *Client) requeueDead(ctx context.Context, queue string, ids []int64) (int, error) {
	if err := c.check("requeue"); err != nil {
		return 0, err
	}
	if err := validQueue("requeue", queue); err != nil {
		return 0, err
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	var n, woken int64
	if err := c.db.QueryRow(ctx, c.sql.requeueDead, queue, ids, c.channel()).Scan(&n, &woken); err != nil {
		return 0, fmt.Errorf("requeue dead %q: %w", short(queue), err)
	}
	return int(n), nil
}

// Pause stops claims from a queue, by every runner and Claim call, until
// Resume. Batches already claimed finish normally; enqueues still work.
func (c *Client) Pause(ctx context.Context, queue string) error {
	return c.setPaused(ctx, "pause", queue, true)
}

// Resume lets claims from a paused queue start again and wakes its runners.
func (c *Client) Resume(ctx context.Context, queue string) error {
	return c.setPaused(ctx, "resume", queue, false)
}

func (c *Client) setPaused(ctx context.Context, op, queue string, paused bool) error {
	if err := c.check(op); err != nil {
		return err
	}
	if err := validQueue(op, queue); err != nil {
		return err
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	var got bool
	var woken int64
	if err := c.db.QueryRow(ctx, c.sql.setPaused, queue, paused, c.channel()).Scan(&got, &woken); err != nil {
		return fmt.Errorf("%s %q: %w", op, short(queue), err)
	}
	return nil
}

// Paused reports whether a queue is paused.
func (c *Client) Paused(ctx context.Context, queue string) (bool, error) {
	if err := c.check("paused"); err != nil {
		return false, err
	}
	if err := validQueue("paused", queue); err != nil {
		return false, err
	}
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	var paused bool
	if err := c.db.QueryRow(ctx, c.sql.paused, queue).Scan(&paused); err != nil {
		return false, fmt.Errorf("paused %q: %w", short(queue), err)
	}
	return paused, nil
}

// QueueStats are the figures of one queue at one moment.
type QueueStats struct {
	Queue     string
	Available int64         // runnable now
	Scheduled int64         // waiting for their run-at (new or retrying)
	Running   int64         // claimed under a lease
	Expired   int64         // running, but the lease expired and was not reclaimed yet
	Dead      int64         // dead-lettered
	OldestAge time.Duration // how long the oldest runnable batch has been runnable; 0 if none
	Paused    bool
}

// Stats returns the figures of one queue, or of every queue that has
// batches or settings when queue is empty. It scans the hot table, which
// holds only unfinished and dead batches.
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
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	rows, err := c.db.Query(ctx, c.sql.stats, q)
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	var out []QueueStats
	var s QueueStats
	var age float64
	_, err = pgx.ForEachRow(rows, []any{&s.Queue, &s.Available, &s.Scheduled, &s.Running, &s.Expired, &s.Dead, &age, &s.Paused}, func() error {
		s.OldestAge = time.Duration(age * float64(time.Second))
		out = append(out, s)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	return out, nil
}

// Prune deletes completion records older than Config.DoneRetention and
// idempotency keys older than Config.KeyRetention, in statements of at most
// 10,000 rows, and returns how many of each it deleted. Runners call it
// periodically; calling it from several processes at once is safe.
func (c *Client) Prune(ctx context.Context) (done, keys int64, err error) {
	if err := c.check("prune"); err != nil {
		return 0, 0, err
	}
	const chunk = 10000
	run := func(query string, age time.Duration) (int64, error) {
		var total int64
		for {
			opCtx, cancel := c.opContext(ctx)
			tag, err := c.db.Exec(opCtx, query, age.Microseconds(), chunk)
			cancel()
			if err != nil {
				return total, err
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < chunk {
				return total, nil
			}
		}
	}
	if done, err = run(c.sql.pruneDone, c.cfg.DoneRetention); err != nil {
		return done, 0, fmt.Errorf("prune completion records: %w", err)
	}
	if keys, err = run(c.sql.pruneKeys, c.cfg.KeyRetention); err != nil {
		return done, keys, fmt.Errorf("prune idempotency keys: %w", err)
	}
	return done, keys, nil
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
// ErrVacuumNotPermitted when the role cannot vacuum the table.
func (c *Client) Vacuum(ctx context.Context, minInterval time.Duration) (bool, error) {
	if err := c.check("vacuum"); err != nil {
		return false, err
	}
	opCtx, cancel := c.opContext(ctx)
	defer cancel()
	var due, allowed bool
	if err := c.db.QueryRow(opCtx, c.sql.vacuumDue, c.sql.table, minInterval.Microseconds(), VacuumMinDeadTuples).Scan(&due, &allowed); err != nil {
		return false, fmt.Errorf("vacuum: %w", err)
	}
	if !allowed {
		return false, ErrVacuumNotPermitted
	}
	if !due {
		return false, nil
	}
	if _, err := c.db.Exec(opCtx, c.sql.vacuum); err != nil {
		return false, fmt.Errorf("vacuum: %w", err)
	}
	return true, nil
}
