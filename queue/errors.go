package queue

import (
	"errors"
	"fmt"
)

var (
	// ErrLeaseLost is returned by Complete, Fail, Extend and Release (and
	// reported per batch by their bulk forms) when the lease token no longer
	// owns the batch: its lease expired and was reclaimed, another worker
	// claimed it, or it was finished under another token. A repeated Complete
	// with the token that completed the batch is not an error.
	ErrLeaseLost = errors.New("skiplock: lease lost")

	// ErrClosed is returned by every operation of a Client after Close, and
	// by Runner.Start after the runner has stopped.
	ErrClosed = errors.New("skiplock: closed")

	// ErrInvalid is matched (with errors.Is) by every *ArgumentError.
	ErrInvalid = errors.New("skiplock: invalid argument")

	// ErrNotFound is returned when a batch does not exist (for example by
	// Get), or a requeue names a batch that is not dead.
	ErrNotFound = errors.New("skiplock: not found")

	// ErrNotReasserted is matched by the error of Client.Close and
	// Runner.Stop when work acknowledged by a writer that has since been
	// replaced could not be asserted on the current writer before the
	// call gave up: keyed enqueues (which may be lost; re-enqueue them) or
	// completions (whose batches may run again).
	ErrNotReasserted = errors.New("skiplock: acknowledged work not asserted on the current writer")
)

// ArgumentError reports bad input: a configuration field or an argument of
// an operation. The operation it was given to changed nothing.
// errors.Is(err, ErrInvalid) is true for it.
type ArgumentError struct {
	Op     string // the operation, e.g. "enqueue" or "config"
	Field  string // the field or argument, e.g. "Queue" or "LeaseDuration"
	Reason string
	Err    error // the underlying validation error, if any
}

// Error names the operation, the field and the reason.
func (e *ArgumentError) Error() string {
	return fmt.Sprintf("skiplock: %s: invalid %s: %s", e.Op, e.Field, e.Reason)
}

// Is reports whether target is ErrInvalid.
func (e *ArgumentError) Is(target error) bool { return target == ErrInvalid }

// Unwrap returns the underlying validation error, if any.
func (e *ArgumentError) Unwrap() error { return e.Err }

func argError(op, field, format string, args ...any) error {
	return &ArgumentError{Op: op, Field: field, Reason: fmt.Sprintf(format, args...)}
}

// permanentError marks a handler error that must not be retried.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent wraps err so that the runner dead-letters the batch at once
// instead of scheduling a retry. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or an error it wraps, came from Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}
