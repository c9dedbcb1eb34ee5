package queue_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/internal/benchsql"
	"github.com/skiplock/skiplock/queue"
)

// TestClaimDecodingMatchesScan checks that claimed batches read through the
// binary fast path equal the same rows read with pgx's Scan, for rows with
// every optional field set and with none, and in text format.
func TestClaimDecodingMatchesScan(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	full := batch.Meta{
		PartitionKey: "tenant-ü",
		URI:          "s3://bucket/a b.ndjson",
		Source:       batch.Source{Topic: "events", Partition: 7, Start: 1 << 40, End: 1<<40 + 3},
		EventCount:   3,
		ByteSize:     1 << 33,
		Payload:      []byte{0, 1, 2, 255},
	}
	ps := []queue.EnqueueParams{
		{Queue: "decode", Meta: full, Priority: -3, MaxAttempts: 7},
		{Queue: "decode", Meta: batch.Meta{URI: "s3://bucket/min"}, RunAt: time.Date(2001, 2, 3, 4, 5, 6, 789000, time.UTC)},
		{Queue: "decode", Meta: batch.Meta{URI: "s3://bucket/empty-payload", Payload: []byte{}}},
	}
	_, err := e.client.EnqueueMany(ctx, ps)
	require.NoError(t, err)
	e.exec("UPDATE " + e.q("batch") + " SET last_error = 'earlier failure' WHERE uri = 's3://bucket/min'")

	// Text format: a pool that uses the simple protocol takes the Scan path.
	cfg, err := pgxpool.ParseConfig(e.url)
	require.NoError(t, err)
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	textPool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer textPool.Close()
	textClient := newClient(t, textPool, e.schema, nil)

	claimed, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "decode", Limit: 10, Lease: time.Minute, Owner: "owner-1"})
	require.NoError(t, err)
	require.Len(t, claimed, 3)
	for _, c := range claimed {
		viaScan, err := textClient.Get(ctx, c.ID)
		require.NoError(t, err)
		require.True(t, c.RunAt.Equal(viaScan.RunAt))
		require.True(t, c.CreatedAt.Equal(viaScan.CreatedAt))
		require.True(t, c.Lease.ExpiresAt.Equal(viaScan.Lease.ExpiresAt))
		c.RunAt, c.CreatedAt, c.Lease.ExpiresAt = viaScan.RunAt, viaScan.CreatedAt, viaScan.Lease.ExpiresAt
		require.Equal(t, *viaScan, c)
		binary, err := e.client.Get(ctx, c.ID)
		require.NoError(t, err)
		binary.RunAt, binary.CreatedAt, binary.Lease.ExpiresAt = c.RunAt, c.CreatedAt, c.Lease.ExpiresAt
		require.Equal(t, c, *binary)
	}
	byURI := map[string]batch.Batch{}
	for _, c := range claimed {
		byURI[c.URI] = c
	}
	require.Equal(t, full, byURI[full.URI].Meta)
	require.Equal(t, int16(-3), byURI[full.URI].Priority)
	require.Equal(t, "owner-1", byURI[full.URI].Lease.Owner)
	require.Nil(t, byURI["s3://bucket/min"].Payload)
	require.NotNil(t, byURI["s3://bucket/empty-payload"].Payload)
	require.Equal(t, "earlier failure", byURI["s3://bucket/min"].LastError)
	require.True(t, byURI["s3://bucket/min"].RunAt.Equal(ps[1].RunAt))

	// The default pool reads claims through the binary fast path.
	rows, err := e.pool.Query(ctx, "SELECT "+queue.BatchColumnsForBench+" FROM "+e.q("batch")+" b")
	require.NoError(t, err)
	binaryRows := queue.BinaryBatchRows(rows)
	rows.Close()
	require.True(t, binaryRows, "claims must take the binary path with a default pgx pool")
	rows, err = textPool.Query(ctx, "SELECT "+queue.BatchColumnsForBench+" FROM "+e.q("batch")+" b")
	require.NoError(t, err)
	binaryRows = queue.BinaryBatchRows(rows)
	rows.Close()
	require.False(t, binaryRows)
}

// The pgbench ceiling must return exactly what a claim returns.
func TestBenchColumnsMatchClaim(t *testing.T) {
	require.Equal(t, queue.BatchColumnsForBench, benchsql.ClaimColumns)
}
