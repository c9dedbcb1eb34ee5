package main

import (
	"errors"
	"fmt"

	"github.com/skiplock/skiplock/queue"
)

// Exit codes. Scripts can tell a bad invocation from a database that said
// no, and a finding from a failure.
const (
	exitOK       = 0 // done; for checks: nothing critical
	exitFailed   = 1 // the operation failed (database unreachable, an error from the server, a timeout)
	exitUsage    = 2 // bad invocation: unknown command or flag, missing DSN, invalid argument; nothing was changed
	exitNotFound = 3 // a batch named does not exist (or is not dead, for dead requeue/delete); nothing was changed
	exitCheck    = 4 // a check failed: migrate validate found a pending or unknown version, doctor a critical finding
)

// exitError carries the exit code of a failed command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf is a bad invocation.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// errCheckFailed ends a check command that printed its findings and must
// exit with exitCheck; the findings are the message.
var errCheckFailed = errors.New("check failed")

// exitCode maps the error of a command that ran to an exit code.
func exitCode(err error) int {
	var ee *exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, errCheckFailed):
		return exitCheck
	case errors.Is(err, queue.ErrInvalid):
		return exitUsage
	case errors.Is(err, queue.ErrNotFound):
		return exitNotFound
	}
	return exitFailed
}
