package failover

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// Class is what an error says about the connection it came from. Classify
// is the only place in skiplock that looks at SQLSTATEs.
type Class int

const (
	// ClassNone: no error.
	ClassNone Class = iota
	// ClassOther: an ordinary error (bad SQL, a constraint, a lease lost,
	// ...) that says nothing about the server's role.
	ClassOther
	// ClassReadOnly: the server refused a write because it is read-only or
	// a standby (SQLSTATE 25006, "... during recovery"). The connection is
	// to a stale writer.
	ClassReadOnly
	// ClassStaleWriter: the connection verifiably reaches a server that is
	// not the current writer (its identity or role no longer matches).
	ClassStaleWriter
	// ClassShutdown: the server is shutting down, crashed or not accepting
	// connections yet (57P01, 57P02, 57P03). A failover may be under way.
	ClassShutdown
	// ClassConnection: the connection failed or broke (08xxx, network
	// errors, EOF). A failover may be under way.
	ClassConnection
	// ClassTimeout: a deadline passed (the caller's context or an i/o
	// timeout), which is how a blackholed connection shows.
	ClassTimeout
	// ClassNoWriter: no verified writer was reachable in time.
	ClassNoWriter
)

var classNames = [...]string{"none", "other", "read_only", "stale_writer", "shutdown", "connection", "timeout", "no_writer"}

// String returns the class name used in logs, e.g. "read_only".
func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return "unknown"
}

// StaleWriter reports whether the class means the connection reaches a
// server that must no longer take writes.
func (c Class) StaleWriter() bool { return c == ClassReadOnly || c == ClassStaleWriter }

// Transient reports whether the class means the database may be failing
// over: retrying an idempotent operation later, on a rebuilt pool, may
// succeed.
func (c Class) Transient() bool {
	switch c {
	case ClassReadOnly, ClassStaleWriter, ClassShutdown, ClassConnection, ClassTimeout, ClassNoWriter:
		return true
	}
	return false
}

// Classify maps an error to a Class.
func Classify(err error) Class {
	if err == nil {
		return ClassNone
	}
	var sw *StaleWriterError
	if errors.As(err, &sw) {
		return ClassStaleWriter
	}
	var nw *NoWriterError
	if errors.As(err, &nw) {
		return ClassNoWriter
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "25006":
			return ClassReadOnly
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03":
			return ClassShutdown
		case strings.HasPrefix(pgErr.Code, "08"):
			return ClassConnection
		case strings.Contains(pgErr.Message, "during recovery"), strings.Contains(pgErr.Message, "recovery is in progress"):
			return ClassReadOnly
		}
		return ClassOther
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return ClassTimeout
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return ClassTimeout
	}
	var connErr *pgconn.ConnectError
	switch {
	case errors.As(err, &connErr),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return ClassConnection
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return ClassConnection
	}
	if pgconn.Timeout(err) {
		return ClassTimeout
	}
	// pgx reports a connection it closed earlier (after a broken read or a
	// cancelled query) with a plain error.
	if msg := err.Error(); strings.Contains(msg, "conn closed") || strings.Contains(msg, "conn busy") && strings.Contains(msg, "closed") {
		return ClassConnection
	}
	return ClassOther
}
