package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/skiplock/skiplock/failover"
)

// ErrOutcomeUnknown is matched by *OutcomeUnknownError.
var ErrOutcomeUnknown = errors.New("skiplock: outcome unknown")

// OutcomeUnknownError reports that an operation failed in a way that leaves
// open whether it committed: an enqueue without idempotency keys (not safe
// to repeat) whose connection broke or whose context ended after the
// statement was sent, or an enqueue acknowledged by a writer that was
// replaced while the call ran and that could not be confirmed on the new
// writer. errors.Is(err, ErrOutcomeUnknown) is true for it; Err is the
// underlying error. An enqueue whose batches all have idempotency keys is
// safe to repeat after it.
type OutcomeUnknownError struct {
	Op  string
	Err error
}

// Error says which operation's outcome is unknown and why.
func (e *OutcomeUnknownError) Error() string {
	return fmt.Sprintf("skiplock: %s: outcome unknown: %v", e.Op, e.Err)
}

// Unwrap returns the underlying error.
func (e *OutcomeUnknownError) Unwrap() error { return e.Err }

// Is reports whether target is ErrOutcomeUnknown.
func (e *OutcomeUnknownError) Is(target error) bool { return target == ErrOutcomeUnknown }

// worthRepeating reports whether a repeat of an operation that failed with
// err, and is safe to repeat, may succeed: the database may be failing
// over, or the statement lost a deadlock or a serialization conflict (and
// was rolled back).
func worthRepeating(err error) bool {
	c := failover.Classify(err)
	return c.Transient() || c == failover.ClassConflict
}

// failedForSure reports whether err proves that the operation committed
// nothing: it failed before anything was sent (no connection, no writer,
// a context that was already done), or the server answered with an error,
// which aborts the statement and its transaction.
func failedForSure(err error) bool {
	if pgconn.SafeToRetry(err) || failover.Classify(err).Retryable() {
		return true
	}
	var connErr *pgconn.ConnectError
	var pgErr *pgconn.PgError
	var stale *failover.StaleWriterError
	switch {
	case errors.As(err, &connErr), errors.As(err, &pgErr), errors.As(err, &stale):
		return true
	}
	return failover.Classify(err) == failover.ClassNoWriter
}

// retry runs op until it succeeds, fails for a reason a retry cannot fix,
// ctx ends or Config.RetryWindow has passed. idempotent says whether op may
// be repeated after it reached the database. An op that is not is repeated
// only after failures that prove it committed nothing; any other failure
// (a broken connection or a context that ended after the statement was
// sent, before its answer came) becomes an *OutcomeUnknownError.
func (c *Client) retry(ctx context.Context, op string, idempotent bool, fn func(ctx context.Context) error) error {
	start := time.Now()
	var bo *backoff.ExponentialBackOff // made on the first failure: most calls never need it
	changed := c.writerChanged()
	for attempt := 1; ; attempt++ {
		began := time.Now()
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if !idempotent && !failedForSure(err) {
			return &OutcomeUnknownError{Op: op, Err: err}
		}
		if !worthRepeating(err) || ctx.Err() != nil {
			return err
		}
		if bo == nil {
			bo = newBackOff(25*time.Millisecond, time.Second)
		}
		// The claim loop's delays: at most connRetryMax after errors that
		// say the database may be failing over, so that an operation
		// retrying through an outage lands soon after a writer is back.
		d := retryDelay(bo, err, time.Since(began))
		if time.Since(start)+d > c.cfg.RetryWindow {
			return err
		}
		c.log.Warn("retrying after a transient error", zap.String("op", op), zap.Int("attempt", attempt), zap.Error(err))
		if d == 0 {
			continue
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		case <-changed:
			// A new writer: retry at once.
			t.Stop()
			changed = c.writerChanged()
			bo.Reset()
		}
	}
}
