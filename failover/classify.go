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
	// a standby: SQLSTATE 25006 (read_only_sql_transaction, which is also
	// what "cannot execute X during recovery" carries), and the few
	// messages PostgreSQL sends under other codes only during recovery
	// (55000 "recovery is in progress" from WAL control functions, 0A000
	// "cannot set transaction read-write mode during recovery", XX000
	// "cannot assign TransactionIds during recovery" and "cannot make new
	// WAL entries during recovery"). The connection is to a stale writer.
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
	// ClassConflict: the transaction lost a serialization conflict or a
	// deadlock (40001, 40P01) and was rolled back. It says nothing about
	// the server's role.
	ClassConflict
)

var classNames = [...]string{"none", "other", "read_only", "stale_writer", "shutdown", "connection", "timeout", "no_writer", "conflict"}

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

// Retryable reports whether the class means the operation did not take
// effect — the statement was refused or rolled back, or nothing was sent —
// so repeating it is safe for any operation, idempotent or not:
// ClassConflict, ClassReadOnly, ClassStaleWriter (a connection the pool
// refused, or a commit it rolled back on a retired generation) and
// ClassNoWriter. Connection errors and timeouts are not retryable this
// way: a commit may have happened before the connection broke.
func (c Class) Retryable() bool {
	switch c {
	case ClassConflict, ClassReadOnly, ClassStaleWriter, ClassNoWriter:
		return true
	}
	return false
}

// recoveryOnly lists the messages PostgreSQL (15) raises under SQLSTATEs
// other than 25006 only while a server is in recovery. Text is looked at
// under these codes only, so a user's error that happens to mention
// recovery is not mistaken for a demoted server.
var recoveryOnly = map[string][]string{
	"55000": {"recovery is in progress"},                                // WAL control functions (xlogfuncs.c)
	"0A000": {"cannot set transaction read-write mode during recovery"}, // SET TRANSACTION READ WRITE on a standby
	"XX000": {"cannot assign TransactionIds during recovery", "cannot make new WAL entries during recovery"},
}

// Classify maps an error to a Class. A *pgconn.PgError is classified by
// its SQLSTATE; its message matters only under the codes of recoveryOnly.
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
		switch code := pgErr.Code; {
		case code == "25006":
			return ClassReadOnly
		case code == "57P01", code == "57P02", code == "57P03":
			return ClassShutdown
		case strings.HasPrefix(code, "08"):
			return ClassConnection
		case code == "40001", code == "40P01":
			return ClassConflict
		}
		for _, msg := range recoveryOnly[pgErr.Code] {
			if strings.HasPrefix(pgErr.Message, msg) {
				return ClassReadOnly
			}
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
