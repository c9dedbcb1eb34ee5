// Package benchsql holds the SQL of skiplock's database-ceiling benchmark:
// the runner's claim+complete cycle written as a pgbench custom script, so
// the Go benchmarks and the bench harness measure the same thing.
package benchsql

import (
	"strings"

	"github.com/jackc/pgx/v5"
)

// ClaimColumns is the column list a claim returns. A test in package queue
// checks that it matches the queue's own list.
const ClaimColumns = `b.id, b.queue, b.state, b.priority, b.attempt, b.max_attempts, b.run_at, b.created_at,
    coalesce(b.lease_token, 0), coalesce(b.lease_owner, ''), b.lease_expires_at,
    coalesce(b.idempotency_key, ''), coalesce(b.partition_key, ''), coalesce(b.uri, ''),
    coalesce(b.source_topic, ''), coalesce(b.source_partition, 0), coalesce(b.source_start, 0),
    coalesce(b.source_end, 0), b.event_count, b.byte_size, b.payload, coalesce(b.last_error, '')`

// script is the runner's cycle as two transactions: claim up to :size
// batches of queue :queue with a fresh token, returning every column a
// claim returns (\aset keeps the last row's list of ids), then complete them
// (delete and record), as queue.Client.CompleteMany does.
const script = `\set token random(1, 9000000000000000000)
WITH picked AS (
    SELECT id FROM {s}.batch
    WHERE queue = :queue AND state = 'available' AND run_at <= now()
        AND NOT EXISTS (SELECT 1 FROM {s}.queue_setting s WHERE s.queue = :queue AND s.paused)
    ORDER BY priority, run_at, id LIMIT :size FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE {s}.batch b SET state = 'running', attempt = b.attempt + 1, attempted_at = now(),
        lease_token = :token, lease_owner = 'pgbench', lease_expires_at = now() + interval '30 seconds'
    WHERE b.id = ANY (ARRAY(SELECT id FROM picked))
    RETURNING ` + ClaimColumns + `
)
SELECT *, string_agg(id::text, ',') OVER () AS ids FROM claimed b \aset
WITH gone AS (
    DELETE FROM {s}.batch b USING unnest(string_to_array(:ids, ',')::int8[]) AS c(id)
    WHERE b.id = c.id AND b.lease_token = :token
    RETURNING b.id, b.lease_token, b.created_at, b.attempt, b.queue
)
INSERT INTO {s}.batch_done (id, lease_token, created_at, attempt, queue)
SELECT id, lease_token, created_at, attempt, queue FROM gone;
`

// Script returns the pgbench script for tables in schema. Run it with
// -M prepared and the variables size (claim size) and queue, e.g.
// pgbench -n -M prepared -c 8 -j 2 -D size=100 -D queue=bench -f FILE.
func Script(schema string) string {
	return strings.ReplaceAll(script, "{s}", pgx.Identifier{schema}.Sanitize())
}

// Prefill returns a statement that inserts $2 available batches into queue
// $1 of schema, the starting state of a drain measurement.
func Prefill(schema string) string {
	return `INSERT INTO ` + pgx.Identifier{schema, "batch"}.Sanitize() + ` (queue, max_attempts, uri, event_count, byte_size)
SELECT $1, 10, 's3://bench/' || g || '.ndjson', 100, 4096 FROM generate_series(1, $2) g`
}
