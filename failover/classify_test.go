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
		{pg("55000", "recovery is in progress"), failover.ClassReadOnly},
		{pg("57P01", "terminating connection due to administrator command"), failover.ClassShutdown},
		{pg("57P02", "crash"), failover.ClassShutdown},
		{pg("57P03", "the database system is starting up"), failover.ClassShutdown},
		{pg("08006", "connection failure"), failover.ClassConnection},
		{pg("08P01", "protocol violation"), failover.ClassConnection},
		{pg("23505", "duplicate key"), failover.ClassOther},
		{pg("40001", "serialization failure"), failover.ClassOther},
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
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
