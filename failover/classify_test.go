package failover_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/failover"
)

func TestClassify(t *testing.T) {
	pg := func(code, msg string) error { return &pgconn.PgError{Code: code, Message: msg} }
	tests := []struct {
		err  error
		want failover.Class
	}{
		{nil, failover.ClassNone},
		{pg("25006", "cannot execute UPDATE in a read-only transaction"), failover.ClassReadOnly},
		{fmt.Errorf("claim: %w", pg("25006", "cannot execute LISTEN during recovery")), failover.ClassReadOnly},
		{pg("57P01", "terminating connection due to administrator command"), failover.ClassShutdown},
		{pg("57P02", "crash"), failover.ClassShutdown},
		{pg("57P03", "the database system is starting up"), failover.ClassShutdown},
		{pg("08006", "connection failure"), failover.ClassConnection},
		{pg("08P01", "protocol violation"), failover.ClassConnection},
		{pg("23505", "duplicate key"), failover.ClassOther},
		{pg("55000", "recovery is in progress"), failover.ClassReadOnly},
		{pg("0A000", "cannot set transaction read-write mode during recovery"), failover.ClassReadOnly},
		{pg("XX000", "cannot assign TransactionIds during recovery"), failover.ClassReadOnly},
		{pg("25006", "cannot execute nextval() in a read-only transaction"), failover.ClassReadOnly},
		// Text about recovery under other SQLSTATEs is the user's, not the
		// server's role.
		{pg("P0001", "invoice failed during recovery"), failover.ClassOther},
		{pg("P0001", "recovery is in progress"), failover.ClassOther},
		{pg("42P01", `relation "during recovery" does not exist`), failover.ClassOther},
		{pg("23505", "duplicate key value violates unique constraint \"recovery is in progress\""), failover.ClassOther},
		{pg("55000", "object not in prerequisite state during recovery of invoices"), failover.ClassOther},
		{pg("40001", "could not serialize access due to concurrent update"), failover.ClassConflict},
		{pg("40P01", "deadlock detected"), failover.ClassConflict},
		{fmt.Errorf("enqueue: %w", pg("40001", "x")), failover.ClassConflict},
		{io.EOF, failover.ClassConnection},
		{io.ErrUnexpectedEOF, failover.ClassConnection},
		{syscall.ECONNRESET, failover.ClassConnection},
		{syscall.ECONNREFUSED, failover.ClassConnection},
		{&net.OpError{Op: "read", Err: syscall.ECONNRESET}, failover.ClassConnection},
		{context.DeadlineExceeded, failover.ClassTimeout},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), failover.ClassTimeout},
		{&failover.StaleWriterError{Reason: "x"}, failover.ClassStaleWriter},
		{&failover.NoWriterError{}, failover.ClassNoWriter},
		{errors.New("something else"), failover.ClassOther},
		{context.Canceled, failover.ClassOther},
	}
	for _, tt := range tests {
		got := failover.Classify(tt.err)
		require.Equal(t, tt.want, got, "%v", tt.err)
	}
	require.True(t, failover.ClassReadOnly.StaleWriter())
	require.True(t, failover.ClassStaleWriter.StaleWriter())
	require.False(t, failover.ClassConnection.StaleWriter())
	for _, c := range []failover.Class{failover.ClassReadOnly, failover.ClassShutdown, failover.ClassConnection, failover.ClassTimeout, failover.ClassNoWriter} {
		require.True(t, c.Transient(), c.String())
	}
	require.False(t, failover.ClassOther.Transient())
	require.False(t, failover.ClassNone.Transient())
	require.False(t, failover.ClassConflict.Transient(), "a conflict is not a failover")
	require.False(t, failover.ClassConflict.StaleWriter())
	require.Equal(t, "conflict", failover.ClassConflict.String())
}

func TestClassRetryable(t *testing.T) {
	tests := []struct {
		c    failover.Class
		want bool
	}{
		{failover.ClassNone, false},
		{failover.ClassOther, false},
		{failover.ClassReadOnly, true},
		{failover.ClassStaleWriter, true},
		{failover.ClassShutdown, false},
		{failover.ClassConnection, false}, // a commit may have happened
		{failover.ClassTimeout, false},
		{failover.ClassNoWriter, true},
		{failover.ClassConflict, true},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, tt.c.Retryable(), tt.c.String())
	}
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
