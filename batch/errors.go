package batch

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// ErrInvalid is the sentinel matched by every *ValidationError:
// errors.Is(err, ErrInvalid) reports whether err (or anything it wraps) is a
// validation failure of this package.
var ErrInvalid = errors.New("batch: invalid")

// ValidationError reports a value that this package refuses, naming the field
// and the reason. Field uses the JSON name for batch data ("queue", "uri",
// "source", ...) and the Go field name for configuration ("MaxCount").
//
// errors.Is(err, ErrInvalid) is true for a *ValidationError; use errors.As to
// read Field and Reason.
type ValidationError struct {
	// Field names the offending field, e.g. "queue" or "payload".
	Field string
	// Reason says why the value was refused, e.g. "empty". It never holds a
	// large value: offending text is quoted with %q and cut to a short prefix.
	Reason string
}

// Error returns "batch: invalid <field>: <reason>", e.g.
// `batch: invalid queue: empty`.
func (e *ValidationError) Error() string {
	return "batch: invalid " + e.Field + ": " + e.Reason
}

// Is reports whether target is ErrInvalid, so that errors.Is(err, ErrInvalid)
// holds for every *ValidationError.
func (e *ValidationError) Is(target error) bool {
	return target == ErrInvalid
}

func invalid(field, format string, args ...any) *ValidationError {
	return &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// quoteMaxBytes bounds how much of an offending value an error message shows.
const quoteMaxBytes = 32

// quote renders s for an error message: %q-quoted, and when s is longer than
// quoteMaxBytes only a prefix cut on a rune boundary followed by "…".
func quote(s string) string {
	if len(s) <= quoteMaxBytes {
		return fmt.Sprintf("%q", s)
	}
	cut := quoteMaxBytes
	// Back up to the start of a rune (at most utf8.UTFMax-1 steps); for
	// invalid UTF-8 any byte position will do, %q escapes it.
	for i := 0; i < utf8.UTFMax-1 && cut > 0 && !utf8.RuneStart(s[cut]); i++ {
		cut--
	}
	return fmt.Sprintf("%q…", s[:cut])
}
