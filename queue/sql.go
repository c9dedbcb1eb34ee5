package queue

import (
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// All of the package's runtime SQL. "{s}" stands for the quoted schema name,
// substituted once when a Client is built (the only substitution);
// everything else is a positional parameter. Times come from the database
// clock (now()); durations travel as microseconds.

// batchColumns is the column list every query that returns batches uses, in
// the order scanBatch reads them.
const batchColumns = `b.id, b.queue, b.state, b.priority, b.attempt, b.max_attempts, b.run_at, b.created_at,
    coalesce(b.lease_token, 0), coalesce(b.lease_owner, ''), b.lease_expires_at,
    coalesce(b.idempotency_key, ''), coalesce(b.partition_key, ''), coalesce(b.uri, ''),
    coalesce(b.source_topic, ''), coalesce(b.source_partition, 0), coalesce(b.source_start, 0),
    coalesce(b.source_end, 0), b.event_count, b.byte_size, b.payload, coalesce(b.last_error, '')`

// Statements keyed by (id, lease token) match on lease_token alone for the
// state: the table's batch_lease_check constraint makes a non-null token
// mean "running". Leaving state out keeps the small running-lease index from
// tempting a generic plan into scanning every running row per token.
//
// Statements that join the batch table to an array of ids also say
// "b.id = ANY ($1)": a condition the primary key can answer. The join alone
// leaves the planner free to read the whole primary key and filter, which
// it does when the table's statistics say it is (nearly) empty: after a
// backlog drained under an old snapshot, ANALYZE counts the live rows (a
// handful) while the index still holds every dead one (millions), and an
// acknowledgement of one batch took 300 ms.
const (
	// Enqueue many batches in one statement, one array per column (an array
	// given as NULL pads with NULLs, so columns nobody set cost nothing; empty
	// strings mean NULL). Rows without an idempotency key
	// take an id from the batch sequence ($1). Keyed rows first claim their
	// key's digest in batch_key_digest; only the first row of each new key
	// is inserted, and rows whose key exists (there, or in batch_key, where
	// keys recorded before migration 0004 live out their retention) are
	// reported with a NULL id (duplicates).
	// Returns one row per input row, in input order: (ordinal, id or NULL).
	// NOTIFY ($17, NULL to skip) is sent once per queue that got a batch
	// runnable now; PostgreSQL delivers it at commit.
	sqlEnqueue = `WITH src AS (
    SELECT u.*,
        CASE WHEN u.ikey IS NULL THEN nextval($1::text::regclass) END AS new_id,
        {s}.key_digest(u.q, u.ikey) AS dig,
        min(u.ord) OVER (PARTITION BY u.q, u.ikey) AS first_ord
    FROM (
        SELECT q, nullif(ikey, '') AS ikey, prio, run_at, delay_us, max_attempts,
            nullif(pkey, '') AS pkey, nullif(uri, '') AS uri, nullif(topic, '') AS topic,
            CASE WHEN nullif(topic, '') IS NOT NULL THEN part END AS part,
            CASE WHEN nullif(topic, '') IS NOT NULL THEN sstart END AS sstart,
            CASE WHEN nullif(topic, '') IS NOT NULL THEN send END AS send,
            coalesce(events, 0) AS events, coalesce(bytes, 0) AS bytes, payload, ord
        FROM unnest($2::text[], $3::text[], $4::int2[], $5::timestamptz[], $6::int8[], $7::int4[],
            $8::text[], $9::text[], $10::text[], $11::int4[], $12::int8[], $13::int8[], $14::int8[],
            $15::int8[], $16::bytea[]) WITH ORDINALITY
            AS x(q, ikey, prio, run_at, delay_us, max_attempts, pkey, uri, topic, part, sstart, send,
                 events, bytes, payload, ord)
    ) u
),
keys AS (
    INSERT INTO {s}.batch_key_digest (digest)
    SELECT dig FROM src WHERE ikey IS NOT NULL AND ord = first_ord
        AND NOT EXISTS (SELECT 1 FROM {s}.batch_key o WHERE o.queue = src.q AND o.idempotency_key = src.ikey)
    ORDER BY dig -- one lock order for every producer: no deadlocks between overlapping key sets
    ON CONFLICT (digest) DO NOTHING
    RETURNING digest, batch_id
),
rows AS (
    SELECT src.*, coalesce(src.new_id, keys.batch_id) AS id
    FROM src LEFT JOIN keys ON keys.digest = src.dig
),
ins AS (
    INSERT INTO {s}.batch (id, queue, idempotency_key, priority, run_at, max_attempts,
        partition_key, uri, source_topic, source_partition, source_start, source_end,
        event_count, byte_size, payload)
    SELECT id, q, ikey, coalesce(prio, 0),
        coalesce(run_at, now() + coalesce(delay_us, 0) * interval '1 microsecond'),
        max_attempts, pkey, uri, topic, part, sstart, send, events, bytes, payload
    FROM rows
    WHERE id IS NOT NULL AND (ikey IS NULL OR ord = first_ord)
    RETURNING id, queue, run_at
),
woken AS (
    SELECT pg_notify($17, q) FROM (SELECT DISTINCT queue AS q FROM ins WHERE run_at <= now()) n
    WHERE $17::text IS NOT NULL
)
SELECT rows.ord, CASE WHEN rows.ikey IS NULL OR rows.ord = rows.first_ord THEN rows.id END,
    (SELECT count(*) FROM woken)
FROM rows ORDER BY rows.ord`

	// Enqueue without idempotency keys: the same parameters and result as
	// sqlEnqueue ($3 is always NULL here), without the key bookkeeping, so
	// the bulk path does less work per row.
	sqlEnqueueKeyless = `WITH src AS (
    SELECT nextval($1::text::regclass) AS id, x.*
    FROM unnest($2::text[], $4::int2[], $5::timestamptz[], $6::int8[], $7::int4[],
        $8::text[], $9::text[], $10::text[], $11::int4[], $12::int8[], $13::int8[], $14::int8[],
        $15::int8[], $16::bytea[]) WITH ORDINALITY
        AS x(q, prio, run_at, delay_us, max_attempts, pkey, uri, topic, part, sstart, send,
             events, bytes, payload, ord)
    WHERE $3::text[] IS NULL
),
ins AS (
    INSERT INTO {s}.batch (id, queue, priority, run_at, max_attempts,
        partition_key, uri, source_topic, source_partition, source_start, source_end,
        event_count, byte_size, payload)
    SELECT id, q, coalesce(prio, 0),
        coalesce(run_at, now() + coalesce(delay_us, 0) * interval '1 microsecond'),
        max_attempts, nullif(pkey, ''), nullif(uri, ''), nullif(topic, ''),
        CASE WHEN nullif(topic, '') IS NOT NULL THEN part END,
        CASE WHEN nullif(topic, '') IS NOT NULL THEN sstart END,
        CASE WHEN nullif(topic, '') IS NOT NULL THEN send END,
        coalesce(events, 0), coalesce(bytes, 0), payload
    FROM src
),
woken AS (
    SELECT pg_notify($17, q) FROM (
        SELECT DISTINCT q FROM src
        WHERE coalesce(run_at, now() + coalesce(delay_us, 0) * interval '1 microsecond') <= now()) n
    WHERE $17::text IS NOT NULL
)
SELECT ord, id, (SELECT count(*) FROM woken) FROM src ORDER BY ord`

	// Ids for a COPY enqueue, taken from the batch sequence in order.
	sqlTakeIDs = `SELECT nextval($1::text::regclass) FROM generate_series(1, $2)`

	// Wake the runners of queues $2 after a COPY enqueue.
	sqlWake = `SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q`

	// The batch ids behind existing idempotency keys, in input order.
	// With each, the key's age in seconds by the database clock.
	sqlKeyLookup = `SELECT coalesce(k.batch_id, o.batch_id),
    extract(epoch FROM now() - coalesce(k.created_at, o.created_at))::float8
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(q, ikey, ord)
LEFT JOIN {s}.batch_key_digest k ON k.digest = {s}.key_digest(u.q, u.ikey)
LEFT JOIN {s}.batch_key o ON o.queue = u.q AND o.idempotency_key = u.ikey
ORDER BY u.ord`

	// Claim up to $2 runnable batches of queue $1 unless it is paused, in
	// (priority, run_at, id) order, skipping rows other claimers hold. Each
	// gets the lease token $3, owner $4 and an expiry $5 µs from now. The
	// picked ids go through an array so that even a generic plan updates them
	// by primary key instead of hash-joining the whole table.
	sqlClaim = `WITH picked AS (
    SELECT id FROM {s}.batch
    WHERE queue = $1 AND state = 'available' AND run_at <= now()
        AND NOT EXISTS (SELECT 1 FROM {s}.queue_setting s WHERE s.queue = $1 AND s.paused)
    ORDER BY priority, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
` + sqlTakeLease + `WHERE b.id = ANY (ARRAY(SELECT id FROM picked))
RETURNING ` + batchColumns

	// The update both claims make to the rows they picked: lease token $3,
	// owner $4, expiry $5 µs from now, one more attempt.
	sqlTakeLease = `UPDATE {s}.batch b SET
    state = 'running',
    attempt = b.attempt + 1,
    attempted_at = now(),
    lease_token = $3,
    lease_owner = $4,
    lease_expires_at = now() + $5::float8 * interval '1 microsecond'
`

	// Claim from a floor (see claimCursor): like sqlClaim, but the scan of
	// the claim index starts at ($6 priority, $7 run_at) instead of the head,
	// after a scan of the batches more urgent than $6 (which starts at the
	// head, and so walks only their entries). The second scan takes what the
	// first left of the $2.
	sqlClaimFrom = sqlClaimUrgent + sqlClaimRest + `    LIMIT $2 - (SELECT count(*) FROM urgent)
    FOR UPDATE SKIP LOCKED
)
` + sqlTakeLease + `WHERE b.id = ANY (ARRAY(SELECT id FROM urgent UNION ALL SELECT id FROM rest))
RETURNING ` + batchColumns

	// Claim from a floor with a slice of the sweep below it (see sweep):
	// like sqlClaimFrom, and first, after the urgent batches, the batches
	// of the floor's priority $6 with run_at in [$8, $9) ($8 may be
	// -infinity; $9 is at most the floor $7), so that scan walks only the
	// index entries of that range. The slice rides along with an ordinary
	// claim and costs no round trip of its own.
	sqlClaimSlice = sqlClaimUrgent + `below AS (
    SELECT id FROM {s}.batch
    WHERE queue = $1 AND state = 'available' AND run_at <= now()
        AND priority = $6 AND run_at >= $8 AND run_at < $9
        AND NOT EXISTS (SELECT 1 FROM {s}.queue_setting s WHERE s.queue = $1 AND s.paused)
    ORDER BY priority, run_at, id
    LIMIT $2 - (SELECT count(*) FROM urgent)
    FOR UPDATE SKIP LOCKED
),
` + sqlClaimRest + `    LIMIT $2 - (SELECT count(*) FROM urgent) - (SELECT count(*) FROM below)
    FOR UPDATE SKIP LOCKED
)
` + sqlTakeLease + `WHERE b.id = ANY (ARRAY(SELECT id FROM urgent UNION ALL SELECT id FROM below UNION ALL SELECT id FROM rest))
RETURNING ` + batchColumns

	// The parts the claims from a floor share: the batches more urgent
	// than the floor's priority $6, and the scan from the floor ($6, $7)
	// up, but for its limit.
	sqlClaimUrgent = `WITH urgent AS (
    SELECT id FROM {s}.batch
    WHERE queue = $1 AND state = 'available' AND run_at <= now() AND priority < $6
        AND NOT EXISTS (SELECT 1 FROM {s}.queue_setting s WHERE s.queue = $1 AND s.paused)
    ORDER BY priority, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
`
	sqlClaimRest = `rest AS (
    SELECT id FROM {s}.batch
    WHERE queue = $1 AND state = 'available' AND run_at <= now() AND (priority, run_at) >= ($6, $7)
        AND NOT EXISTS (SELECT 1 FROM {s}.queue_setting s WHERE s.queue = $1 AND s.paused)
    ORDER BY priority, run_at, id
`

	// The first statement of every round trip that claims or reclaims: no
	// JIT compilation for the rest of the round trip's implicit transaction.
	// PostgreSQL compiles a statement whose estimated cost exceeds
	// jit_above_cost (100,000 by default), and a claim from a floor limits
	// its scan by an expression ($2 less what the scan before it took),
	// which the planner costs at a tenth of the whole scan: the estimate
	// grows with the table. In the mvcc bench it crossed the threshold when
	// an old snapshot had grown the heap to 6 GB, and from then on every
	// claim spent 15 ms compiling 45 functions for a statement that runs in
	// 3: throughput fell to a fifth. None of these statements gains from
	// JIT. The setting is local to the transaction, so the connection goes
	// back to the pool as it came.
	sqlNoJIT = `SELECT set_config('jit', 'off', true)`

	// The database's clock, sent with a full claim (see claimCursor.done).
	sqlNow = `SELECT now()`

	// What this transaction's scans of index $1 (a qualified name) have
	// read so far: the entries it returned, dead ones included (-1 when the
	// server does not count them), and the server's clock. Read before and
	// after a slice of a sweep, it is what the slice cost (see sweep). The
	// count is the backend's not yet reported to the statistics system,
	// which may include earlier transactions': only a difference within one
	// transaction means anything.
	sqlMeter = `SELECT CASE WHEN current_setting('track_counts')::bool
    THEN pg_stat_get_xact_tuples_returned($1::text::regclass) ELSE -1 END, clock_timestamp()`

	// Complete: remove batches whose lease the tokens still hold, and record
	// each completion. Returns the ids completed by this statement.
	sqlComplete = `WITH gone AS (
    DELETE FROM {s}.batch b
    USING unnest($1::int8[], $2::int8[]) AS c(id, token)
    WHERE b.id = c.id AND b.lease_token = c.token AND b.id = ANY ($1::int8[])
    RETURNING b.id, b.lease_token, b.created_at, b.attempt, b.queue
),
rec AS (
    INSERT INTO {s}.batch_done (id, lease_token, created_at, attempt, queue)
    SELECT id, lease_token, created_at, attempt, queue FROM gone
    RETURNING id
)
SELECT id FROM rec`

	// Re-assertion of completions, first statement: claim the idempotency
	// keys of the completions ($1 queues, $2 keys) that the writer does not
	// know, each with a fresh id from the batch sequence ($3), so that a
	// re-assertion of their enqueues is a duplicate. It waits for a
	// concurrent insert of the same key (an enqueue re-asserted at the same
	// time), so the statement after it sees that batch.
	sqlReassertKeys = `INSERT INTO {s}.batch_key_digest (digest, batch_id)
SELECT {s}.key_digest(q, k), nextval($3::text::regclass) FROM unnest($1::text[], $2::text[]) AS u(q, k)
WHERE k <> '' AND NOT EXISTS (SELECT 1 FROM {s}.batch_key o WHERE o.queue = u.q AND o.idempotency_key = u.k)
ORDER BY 1
ON CONFLICT (digest) DO NOTHING`

	// Re-assertion of completions, second statement, in the same
	// transaction: finish each batch that an earlier writer completed and
	// this one may still have. A batch is matched by id and creation time
	// (after lost commits the new writer may hand the same id to another
	// batch), or by queue and idempotency key through the key tables (a
	// re-asserted enqueue gets a new id), and finished whatever its state,
	// recording the completion under the token that was acknowledged. A
	// completion whose batch the writer lacks altogether is recorded as it
	// was acknowledged, under the id its key now names (the statement above
	// gave it one), or a fresh id ($7) for a batch without a key: the old id
	// may name another batch on this writer. A batch with a completion on
	// record (by any token: a second run's) is left alone. Returns one row
	// per completion recorded.
	sqlReassertComplete = `WITH c AS (
    SELECT * FROM unnest($1::int8[], $2::int8[], $3::timestamptz[], $4::text[], $5::text[], $6::int4[])
        AS c(id, token, created_at, queue, ikey, attempt)
),
by_key AS (
    SELECT c.id AS cid, c.token, c.queue, c.ikey, k.batch_id FROM c
    JOIN {s}.batch_key_digest k ON k.digest = {s}.key_digest(c.queue, c.ikey)
    WHERE c.ikey <> ''
    UNION ALL
    SELECT c.id, c.token, c.queue, c.ikey, o.batch_id FROM c
    JOIN {s}.batch_key o ON o.queue = c.queue AND o.idempotency_key = c.ikey
    WHERE c.ikey <> ''
),
target AS (
    SELECT b.id, c.id AS cid, c.token FROM c JOIN {s}.batch b ON b.id = c.id AND b.created_at = c.created_at
    WHERE b.id = ANY ($1::int8[])
    UNION
    SELECT b.id, k.cid, k.token FROM by_key k
    JOIN {s}.batch b ON b.id = k.batch_id AND b.queue = k.queue AND b.idempotency_key = k.ikey
    WHERE b.id = ANY (ARRAY(SELECT batch_id FROM by_key))
),
gone AS (
    DELETE FROM {s}.batch b USING target t
    WHERE b.id = t.id AND b.id = ANY (ARRAY(SELECT id FROM target))
    RETURNING b.id, t.token, b.created_at, b.attempt, b.queue
),
keyed AS (
    SELECT c.*, CASE WHEN c.ikey <> '' THEN coalesce(
        (SELECT k.batch_id FROM {s}.batch_key_digest k WHERE k.digest = {s}.key_digest(c.queue, c.ikey)),
        (SELECT o.batch_id FROM {s}.batch_key o WHERE o.queue = c.queue AND o.idempotency_key = c.ikey)) END AS kid
    FROM c
),
done_now AS MATERIALIZED (
    -- One scan of batch_done for every id in question (its index is a BRIN
    -- on id: one bitmap scan of the recent block ranges, not one per row).
    SELECT d.id, d.created_at FROM {s}.batch_done d
    WHERE d.id = ANY (ARRAY(SELECT id FROM keyed UNION SELECT kid FROM keyed WHERE kid IS NOT NULL))
),
absent AS (
    SELECT token, created_at, queue, attempt, coalesce(kid, nextval($7::text::regclass)) AS id FROM keyed c
    WHERE NOT EXISTS (SELECT 1 FROM target t WHERE t.cid = c.id AND t.token = c.token)
        AND NOT EXISTS (SELECT 1 FROM done_now d WHERE d.id = c.id AND d.created_at = c.created_at)
        AND NOT EXISTS (SELECT 1 FROM done_now d WHERE d.id = c.kid)
),
rec AS (
    INSERT INTO {s}.batch_done (id, lease_token, created_at, attempt, queue)
    SELECT id, token, created_at, attempt, queue FROM gone
    UNION ALL
    SELECT id, token, created_at, attempt, queue FROM absent
    RETURNING id
)
SELECT id FROM rec`

	// For completions the statement above did not apply: was the batch
	// already completed under the same token? Runs as its own statement so
	// it sees a completion that committed while the first one waited.
	sqlCompleteRepeat = `SELECT c.id, EXISTS (
    SELECT 1 FROM {s}.batch_done d WHERE d.id = c.id AND d.lease_token = c.token)
FROM unnest($1::int8[], $2::int8[]) AS c(id, token)`

	// Fail: retry later or dead-letter. The retry delay is $5 µs doubled
	// per attempt, capped at $6 µs, times a random factor in [0.5, 1), unless
	// the row's own delay is given. Permanent failures and failures of the
	// last attempt dead-letter the batch, keeping its last error.
	sqlFail = `UPDATE {s}.batch b SET
    state = CASE WHEN f.permanent OR b.attempt >= b.max_attempts THEN 'dead' ELSE 'available' END,
    run_at = CASE WHEN f.permanent OR b.attempt >= b.max_attempts THEN b.run_at
        ELSE now() + coalesce(f.delay_us::float8,
            least($6::float8, $5::float8 * power(2::float8, least(b.attempt - 1, 40)))
                * (0.5 + random() / 2)) * interval '1 microsecond' END,
    last_error = f.err,
    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
FROM unnest($1::int8[], $2::int8[], $3::text[], $4::bool[], $7::int8[])
    AS f(id, token, err, permanent, delay_us)
WHERE b.id = f.id AND b.lease_token = f.token AND b.id = ANY ($1::int8[])
RETURNING b.id, b.state = 'dead'`

	// Extend leases by $3 µs from now.
	sqlExtend = `UPDATE {s}.batch b SET lease_expires_at = now() + $3::float8 * interval '1 microsecond'
FROM unnest($1::int8[], $2::int8[]) AS e(id, token)
WHERE b.id = e.id AND b.lease_token = e.token AND b.id = ANY ($1::int8[])
RETURNING b.id`

	// Release: make batches available again at once without counting the
	// attempt. run_at is kept, so they keep their place in line.
	sqlRelease = `UPDATE {s}.batch b SET
    state = 'available', attempt = greatest(b.attempt - 1, 0),
    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
FROM unnest($1::int8[], $2::int8[]) AS r(id, token)
WHERE b.id = r.id AND b.lease_token = r.token AND b.id = ANY ($1::int8[])
RETURNING b.id`

	// Reclaim expired leases of queue $1 (all queues when NULL), at most $2,
	// that expired less than $3 µs and at least $6 µs ago (0: every expired
	// lease within $3): available again, or dead when that was the last
	// attempt. The bounds let a runner skip the index entries of leases that
	// ended long ago, or sweep them a slice at a time (see reclaimFloor). Leases ($4 ids, $5
	// tokens) that a runner of the reclaiming client still holds are left
	// alone (see Client.heldRefs).
	sqlReclaim = `WITH expired AS (
    SELECT id FROM {s}.batch
    WHERE state = 'running' AND ($1::text IS NULL OR queue = $1)
        AND lease_expires_at >= now() - $3::float8 * interval '1 microsecond'
        AND lease_expires_at < now() - $6::float8 * interval '1 microsecond'
        AND NOT EXISTS (SELECT 1 FROM unnest($4::int8[], $5::int8[]) AS h(id, token)
            WHERE h.id = batch.id AND h.token = batch.lease_token)
    ORDER BY lease_expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE {s}.batch b SET
    state = CASE WHEN b.attempt >= b.max_attempts THEN 'dead' ELSE 'available' END,
    last_error = 'lease of ' || coalesce(b.lease_owner, '?') || ' expired',
    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
FROM expired WHERE b.id = expired.id AND b.id = ANY (ARRAY(SELECT id FROM expired))
RETURNING b.id, b.state = 'dead'`

	// Fails unless every table the queue uses exists and is readable.
	sqlCheck = `SELECT (SELECT 1 FROM {s}.batch LIMIT 0), (SELECT 1 FROM {s}.batch_done LIMIT 0),
    (SELECT 1 FROM {s}.batch_key LIMIT 0), (SELECT 1 FROM {s}.batch_key_digest LIMIT 0),
    (SELECT 1 FROM {s}.queue_setting LIMIT 0)`

	sqlGet = `SELECT ` + batchColumns + ` FROM {s}.batch b WHERE b.id = $1`

	sqlDone = `SELECT EXISTS (SELECT 1 FROM {s}.batch_done WHERE id = $1)`

	sqlListDead = `SELECT ` + batchColumns + ` FROM {s}.batch b
WHERE b.queue = $1 AND b.state = 'dead' AND b.id > $2
ORDER BY b.id LIMIT $3`

	// Requeue dead batches ($2 NULL: all of the queue) with fresh attempts.
	// With ids, all or nothing: unless every distinct id is a dead batch of
	// the queue, nothing changes. Returns how many were requeued, how many
	// runners were notified, and the ids that are not dead batches of the
	// queue.
	sqlRequeueDead = `WITH want AS (
    SELECT DISTINCT w.id FROM unnest($2::int8[]) AS w(id)
),
dead AS (
    SELECT b.id FROM {s}.batch b
    WHERE b.queue = $1 AND b.state = 'dead' AND ($2::int8[] IS NULL OR b.id = ANY ($2::int8[]))
    FOR UPDATE
),
req AS (
    UPDATE {s}.batch b SET state = 'available', attempt = 0, run_at = now()
    FROM dead
    WHERE b.id = dead.id AND b.id = ANY (ARRAY(SELECT id FROM dead))
        AND ($2::int8[] IS NULL OR (SELECT count(*) FROM dead) = (SELECT count(*) FROM want))
    RETURNING b.id
),
woken AS (
    SELECT pg_notify($3, $1) WHERE $3::text IS NOT NULL AND EXISTS (SELECT 1 FROM req)
)
SELECT (SELECT count(*) FROM req), (SELECT count(*) FROM woken),
    coalesce((SELECT array_agg(w.id ORDER BY w.id) FROM want w WHERE w.id NOT IN (SELECT id FROM dead)), '{}')`

	// Pause ($2 true) or resume a queue; a resume wakes its runners.
	sqlSetPaused = `WITH up AS (
    INSERT INTO {s}.queue_setting (queue, paused) VALUES ($1, $2)
    ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused, updated_at = now()
    RETURNING paused
),
woken AS (
    SELECT pg_notify($3, $1) WHERE $3::text IS NOT NULL AND NOT $2
)
SELECT (SELECT paused FROM up), (SELECT count(*) FROM woken)`

	sqlPaused = `SELECT coalesce((SELECT paused FROM {s}.queue_setting WHERE queue = $1), false)`

	// Per-queue figures ($1 NULL: every queue with batches or settings).
	sqlStats = `WITH q AS (
    SELECT queue,
        count(*) FILTER (WHERE state = 'available' AND run_at <= now()) AS available,
        count(*) FILTER (WHERE state = 'available' AND run_at > now()) AS scheduled,
        count(*) FILTER (WHERE state = 'running') AS running,
        count(*) FILTER (WHERE state = 'running' AND lease_expires_at < now()) AS expired,
        count(*) FILTER (WHERE state = 'dead') AS dead,
        min(run_at) FILTER (WHERE state = 'available' AND run_at <= now()) AS oldest
    FROM {s}.batch
    WHERE $1::text IS NULL OR queue = $1
    GROUP BY queue
)
SELECT coalesce(q.queue, s.queue), coalesce(q.available, 0), coalesce(q.scheduled, 0),
    coalesce(q.running, 0), coalesce(q.expired, 0), coalesce(q.dead, 0),
    coalesce(extract(epoch FROM now() - q.oldest)::float8, 0), coalesce(s.paused, false)
FROM q FULL JOIN (SELECT * FROM {s}.queue_setting WHERE $1::text IS NULL OR queue = $1) s
    ON s.queue = q.queue
ORDER BY 1`

	// Vacuum support: whether the hot table has at least $3 dead tuples and
	// was not vacuumed (by anyone) within the last $2 µs, and whether the
	// current role may vacuum it ($1 is the table's quoted name).
	sqlVacuumDue = `SELECT coalesce(greatest(s.last_vacuum, s.last_autovacuum) < now() - $2::float8 * interval '1 microsecond', true)
        AND coalesce(s.n_dead_tup, 0) >= $3,
    pg_has_role(current_user, c.relowner, 'MEMBER') OR coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false),
    coalesce(s.n_dead_tup, 0), coalesce(s.n_tup_upd + s.n_tup_del, 0)
FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = $1::text::regclass`

	// The hot table's dead tuples, and the updates and deletes that made
	// them so far, as the statistics count them.
	sqlDeadTuples = `SELECT coalesce(pg_stat_get_dead_tuples(c.oid), 0),
    coalesce(pg_stat_get_tuples_updated(c.oid) + pg_stat_get_tuples_deleted(c.oid), 0)
FROM pg_class c WHERE c.oid = $1::text::regclass`

	// SKIP_LOCKED: if another process is vacuuming the table, do nothing.
	// INDEX_CLEANUP ON: the point is to remove index entries of finished
	// batches from the head of the claim index. ANALYZE: a vacuum records
	// the live rows of the pages it scanned as the table's row count, and
	// while an old snapshot keeps the dead rows, the live batches sit in
	// pages appended while it ran: it recorded 9 rows for a table of 20,000
	// live batches in the mvcc bench, and the planner turned the floored
	// claim into a bitmap scan of every entry above the floor plus a sort
	// (15,000 index entries per claim instead of 900, a third of the
	// throughput) until autovacuum's next ANALYZE. Sampling the table right
	// after the vacuum puts the live rows back into the statistics.
	sqlVacuum = `VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON, ANALYZE) {s}.batch`

	// Pruning of completion records and idempotency keys (both tables)
	// older than $1 µs, at most $2 rows per statement.
	sqlPruneDone = `DELETE FROM {s}.batch_done WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM {s}.batch_done WHERE done_at < now() - $1::float8 * interval '1 microsecond' LIMIT $2))`
	sqlPruneKeys = `DELETE FROM {s}.batch_key_digest WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM {s}.batch_key_digest WHERE created_at < now() - $1::float8 * interval '1 microsecond' LIMIT $2))`
	sqlPruneOldKeys = `DELETE FROM {s}.batch_key WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM {s}.batch_key WHERE created_at < now() - $1::float8 * interval '1 microsecond' LIMIT $2))`

	// Re-confirm held leases (runners, on every heartbeat and at once after
	// a writer change): extend each lease still held by its (id, token) by
	// $5 µs from now, and re-take each batch flagged in $4 that the writer
	// has available with no lease — a claim lost with commits a failover
	// dropped — under the same token, owner $6 and one more attempt. A
	// re-take matches id and creation time: after lost commits the writer
	// may have given the id to another batch. The two updates match
	// disjoint rows (token held vs. no token). Returns (id, token, retaken)
	// per lease kept; a lease not returned is lost.
	sqlReconfirm = `WITH held AS (
    SELECT * FROM unnest($1::int8[], $2::int8[], $3::timestamptz[], $4::bool[])
        AS h(id, token, created_at, retake)
),
extended AS (
    UPDATE {s}.batch b SET lease_expires_at = now() + $5::float8 * interval '1 microsecond'
    FROM held h
    WHERE b.id = h.id AND b.lease_token = h.token AND b.id = ANY ($1::int8[])
    RETURNING b.id, b.lease_token
),
retaken AS (
    UPDATE {s}.batch b SET
        state = 'running',
        attempt = b.attempt + 1,
        attempted_at = now(),
        lease_token = h.token,
        lease_owner = $6,
        lease_expires_at = now() + $5::float8 * interval '1 microsecond'
    FROM held h
    WHERE b.id = h.id AND b.created_at = h.created_at AND h.retake AND b.id = ANY ($1::int8[])
        AND b.state = 'available' AND b.lease_token IS NULL
    RETURNING b.id, b.lease_token
)
SELECT id, lease_token, false FROM extended
UNION ALL
SELECT id, lease_token, true FROM retaken`

	// Release every batch still held under lease tokens $1: claims whose
	// answer was lost (the runner chose the token, never ran a handler for
	// them), so the attempt is refunded. Their leases expire no earlier than
	// $2 µs ago (the claims were sent since): the bound keeps the scan of the
	// partial index on running rows (batch_lease_idx) to the leases taken
	// since, not every entry an old snapshot keeps; see
	// TestReleaseTokensPlan.
	sqlReleaseTokens = `UPDATE {s}.batch b SET
    state = 'available', attempt = greatest(b.attempt - 1, 0),
    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
WHERE b.state = 'running' AND b.lease_token = ANY ($1::int8[])
    AND b.lease_expires_at >= now() - $2::float8 * interval '1 microsecond'
RETURNING b.id`

	// Operators' listing: batches of queue $1 in state $2 ('available',
	// 'running' or 'dead') with ids above $3, in id order, at most $5. $4
	// splits available batches: true runnable now, false scheduled for
	// later, NULL both. It reads the primary key from $3 on (or a partial
	// index of the state); it is for inspection, not for a hot path.
	sqlList = `SELECT ` + batchColumns + ` FROM {s}.batch b
WHERE b.queue = $1 AND b.state = $2 AND b.id > $3
    AND ($4::bool IS NULL OR (b.run_at <= now()) = $4)
ORDER BY b.id LIMIT $5`

	// Delete dead batches $2 of queue $1, all or nothing like
	// sqlRequeueDead: unless every distinct id is a dead batch of the queue,
	// nothing is deleted. Idempotency keys stay (until KeyRetention), as for
	// a completed batch. Returns how many were deleted and the ids that are
	// not dead batches of the queue.
	sqlDeleteDead = `WITH want AS (
    SELECT DISTINCT w.id FROM unnest($2::int8[]) AS w(id)
),
dead AS (
    SELECT b.id FROM {s}.batch b
    WHERE b.queue = $1 AND b.state = 'dead' AND b.id = ANY ($2::int8[])
    FOR UPDATE
),
gone AS (
    DELETE FROM {s}.batch b USING dead
    WHERE b.id = dead.id AND b.id = ANY (ARRAY(SELECT id FROM dead)) AND (SELECT count(*) FROM dead) = (SELECT count(*) FROM want)
    RETURNING b.id
)
SELECT (SELECT count(*) FROM gone),
    coalesce((SELECT array_agg(w.id ORDER BY w.id) FROM want w WHERE w.id NOT IN (SELECT id FROM dead)), '{}')`

	// End the leases owner $2 holds on batches of queue $1 now, as if they
	// had expired (an operator releasing a worker known to be gone): each
	// batch becomes available again, or dead when that was its last
	// attempt; the attempt counts. The leases are read first (held), and a
	// row is changed only while the token read still holds it for the
	// same owner: a lease taken since — reclaimed and claimed again, even
	// by a worker of the same name — is left alone (a concurrent change
	// makes the update re-check the row's newest version). Returns the ids
	// read, the ids made available, the ids dead-lettered, and how many
	// runners were woken ($3 channel, NULL to skip).
	sqlReleaseOwner = `WITH held AS (
    SELECT id, lease_token FROM {s}.batch
    WHERE state = 'running' AND queue = $1 AND lease_owner = $2
),
freed AS (
    UPDATE {s}.batch b SET
        state = CASE WHEN b.attempt >= b.max_attempts THEN 'dead' ELSE 'available' END,
        last_error = 'lease of ' || b.lease_owner || ' released by an operator',
        lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
    FROM held h
    WHERE b.id = h.id AND b.id = ANY (ARRAY(SELECT id FROM held))
        AND b.lease_token = h.lease_token AND b.lease_owner = $2 AND b.queue = $1
    RETURNING b.id, b.state
),
woken AS (
    SELECT pg_notify($3, $1)
    WHERE $3::text IS NOT NULL AND EXISTS (SELECT 1 FROM freed WHERE state = 'available')
)
SELECT coalesce((SELECT array_agg(id ORDER BY id) FROM held), '{}'),
    coalesce((SELECT array_agg(id ORDER BY id) FROM freed WHERE state = 'available'), '{}'),
    coalesce((SELECT array_agg(id ORDER BY id) FROM freed WHERE state = 'dead'), '{}'),
    (SELECT count(*) FROM woken)`
)

// statements is the package's SQL with the schema substituted.
type statements struct {
	enqueue, enqueueKeyless, takeIDs, wake, keyLookup, claim, claimFrom, claimSlice, now, complete, reassertKeys, reassertComplete, completeRepeat, fail, extend, release, reclaim string
	vacuumDue, vacuum, deadTuples, table,
	check, get, done, listDead, requeueDead, setPaused, paused, stats, pruneDone, pruneKeys, pruneOldKeys string
	reconfirm, releaseTokens string
	meter                    string
	claimIndex, leaseIndex   string // the indexes slices sweep, quoted, passed as parameters to meter
	sequence                 string // the batch id sequence, quoted, passed as a parameter
	channel                  string // the NOTIFY channel of the schema

	list, deleteDead, releaseOwner string // operators' statements
}

func newStatements(schema string) *statements {
	quoted := pgx.Identifier{schema}.Sanitize()
	sub := func(q string) string { return strings.ReplaceAll(q, "{s}", quoted) }
	return &statements{
		enqueue:          sub(sqlEnqueue),
		enqueueKeyless:   sub(sqlEnqueueKeyless),
		takeIDs:          sub(sqlTakeIDs),
		wake:             sub(sqlWake),
		keyLookup:        sub(sqlKeyLookup),
		claim:            sub(sqlClaim),
		claimFrom:        sub(sqlClaimFrom),
		claimSlice:       sub(sqlClaimSlice),
		now:              sqlNow,
		meter:            sqlMeter,
		claimIndex:       pgx.Identifier{schema, "batch_claim_idx"}.Sanitize(),
		leaseIndex:       pgx.Identifier{schema, "batch_lease_idx"}.Sanitize(),
		complete:         sub(sqlComplete),
		reassertKeys:     sub(sqlReassertKeys),
		reassertComplete: sub(sqlReassertComplete),
		completeRepeat:   sub(sqlCompleteRepeat),
		fail:             sub(sqlFail),
		extend:           sub(sqlExtend),
		release:          sub(sqlRelease),
		reclaim:          sub(sqlReclaim),
		vacuumDue:        sub(sqlVacuumDue),
		vacuum:           sub(sqlVacuum),
		deadTuples:       sqlDeadTuples,
		table:            pgx.Identifier{schema, "batch"}.Sanitize(),
		check:            sub(sqlCheck),
		get:              sub(sqlGet),
		done:             sub(sqlDone),
		listDead:         sub(sqlListDead),
		requeueDead:      sub(sqlRequeueDead),
		setPaused:        sub(sqlSetPaused),
		paused:           sub(sqlPaused),
		stats:            sub(sqlStats),
		pruneDone:        sub(sqlPruneDone),
		pruneKeys:        sub(sqlPruneKeys),
		pruneOldKeys:     sub(sqlPruneOldKeys),
		sequence:         pgx.Identifier{schema, "batch_id_seq"}.Sanitize(),
		channel:          channelName(schema),
		reconfirm:        sub(sqlReconfirm),
		releaseTokens:    sub(sqlReleaseTokens),
		list:             sub(sqlList),
		deleteDead:       sub(sqlDeleteDead),
		releaseOwner:     sub(sqlReleaseOwner),
	}
}

// channelName is the NOTIFY channel of a schema: a short ASCII name that is
// always a valid identifier, whatever the schema is called.
func channelName(schema string) string {
	h := fnv.New64a()
	h.Write([]byte(schema))
	return "skiplock_" + strconv.FormatUint(h.Sum64(), 36)
}
