-- skiplock 0002: completion tombstones and idempotency keys.
--
-- batch_done records each completion: (id, lease token) for a short time, so
-- that repeating a completion whose commit outcome was unknown succeeds for
-- the same token and fails with "lease lost" for any other. It doubles as a
-- lean history. It is append-only and never on the claim path; old rows are
-- pruned by done_at, and the whole table may be truncated at any time without
-- affecting the queue beyond those repeat checks.
CREATE TABLE batch_done (
    id          bigint      NOT NULL,
    lease_token bigint      NOT NULL,
    done_at     timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL,
    attempt     integer     NOT NULL,
    queue       text        NOT NULL
) WITH (
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000
);

-- Serves: the repeat check of complete (WHERE id = $1 AND lease_token = $2),
-- run only when the batch is no longer in the hot table. Completions arrive
-- roughly in id order, so a block-range index is small and cheap to maintain.
CREATE INDEX batch_done_id_idx ON batch_done USING brin (id);

-- Serves: history pruning (DELETE ... WHERE done_at < now() - $1).
CREATE INDEX batch_done_at_idx ON batch_done USING brin (done_at);

-- batch_key holds idempotency keys apart from the batches, so a key outlives
-- the completion of its batch: re-enqueueing the same source range after a
-- producer crash adds nothing even when the first batch already finished.
-- A keyed enqueue inserts here first and uses batch_id as the new batch's id.
-- Keyed batches take their id from the batch table's own identity sequence,
-- so ids stay unique across keyed and unkeyed enqueues.
CREATE TABLE batch_key (
    queue           text        NOT NULL,
    idempotency_key text        NOT NULL,
    batch_id        bigint      NOT NULL DEFAULT nextval('batch_id_seq'),
    created_at      timestamptz NOT NULL DEFAULT now(),

    -- Serves: keyed enqueue (INSERT ... ON CONFLICT (queue, idempotency_key)
    -- DO NOTHING) and the lookup of the existing batch id on a duplicate.
    PRIMARY KEY (queue, idempotency_key)
);

-- Serves: key retention pruning (DELETE ... WHERE created_at < now() - $1).
CREATE INDEX batch_key_created_idx ON batch_key USING brin (created_at);
