package failover

import (
	"errors"
	"fmt"
	"time"
)

// ErrClosed is returned by every operation after Pool.Close.
var ErrClosed = errors.New("failover: pool closed")

// StaleWriterError reports a connection that reaches a server which is no
// longer the writer: it answered as read-only or in recovery, or it is not
// the server the pool's current generation is pinned to.
type StaleWriterError struct {
	Expected Identity // the writer the pool was pinned to (zero if none yet)
	Got      Identity // the server the connection reached
	Reason   string
}

// Error describes the mismatch; it never contains connection strings.
func (e *StaleWriterError) Error() string {
	return fmt.Sprintf("failover: stale writer: %s (expected %s, reached %s)", e.Reason, e.Expected, e.Got)
}

// NoWriterError reports that no verified writer was reachable in time: the
// cluster is between writers, or its endpoint still points at a non-writer.
type NoWriterError struct {
	Waited time.Duration // how long the operation waited for a writer
	Last   error         // the last reason a writer could not be verified, if any
}

// Error says how long the caller waited and why no writer was found.
func (e *NoWriterError) Error() string {
	if e.Last != nil {
		return fmt.Sprintf("failover: no writer available after %s: %v", e.Waited.Round(time.Millisecond), e.Last)
	}
	return fmt.Sprintf("failover: no writer available after %s", e.Waited.Round(time.Millisecond))
}

// Unwrap returns the last reason a writer could not be verified.
func (e *NoWriterError) Unwrap() error { return e.Last }
