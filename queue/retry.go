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

// OutcomeUnknownError reports that an operation which is not safe to repeat
// (an enqueue without idempotency keys) failed after it may have reached the
// database: it may or may not have committed. errors.Is(err,
// ErrOutcomeUnknown) is true for it; Err is the underlying error.
type OutcomeUnknownError struct {
	Op  string
	Err error
}

// Error says which operation's outcome is unknown and why.
func (e *OutcomeUnknownError) Error() string {
	return fmt.Sprintf("skiplock: %s: outcome unknown (use idempotency keys to make it safe to retry): %v", e.Op, e.Err)
}

// Unwrap returns the underlying error.
func (e *OutcomeUnknownError) Unwrap() error { return e.Err }

// Is reports whether target is ErrOutcomeUnknown.
func (e *OutcomeUnknownError) Is(target error) bool { return target == ErrOutcomeUnknown }

// transient reports whether err says the database may be failing over, so
// that a safe operation is worth repeating.
func transient(err error) bool { return failover.Classify(err).Transient() }

// retry runs op until it succeeds, fails for a reason a retry cannot fix,
// ctx ends or Config.RetryWindow has passed. idempotent says whether op may
// be repeated after it reached the database; otherwise only failures that
// happened before anything was sent are retried, and others become an
// *OutcomeUnknownError.
func (c *Client) retry(ctx context.Context, op string, idempotent bool, fn func(ctx context.Context) error) error {
	start := time.Now()
	var bo *backoff.ExponentialBackOff // made on the first failure: most calls never need it
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil || !transient(err) || ctx.Err() != nil {
			return err
		}
		if !idempotent && !pgconn.SafeToRetry(err) {
			return &OutcomeUnknownError{Op: op, Err: err}
		}
		if bo == nil {
			bo = newBackOff(25*time.Millisecond, time.Second)
		}
		d := bo.NextBackOff()
		if time.Since(start)+d > c.cfg.RetryWindow {
			return err
		}
		c.log.Warn("retrying after a transient error", zap.String("op", op), zap.Int("attempt", attempt), zap.Error(err))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}
