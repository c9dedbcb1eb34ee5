-- skiplock 0004: idempotency keys as 16-byte digests.
--
-- batch_key (0002) stores each key with its queue as text, in the table and
-- again in its primary key: with keys cut from source offsets that is about
-- 176 bytes per key, more than a third of what a queued batch costs, and it
-- is the table that grows to hundreds of millions of rows under a week of
-- key retention. batch_key_digest stores a key as the first 16 bytes of a
-- SHA-256 of its queue and key (key_digest below): 56-byte rows and 28-byte
-- index entries, whatever the key's length. A collision of two distinct
-- keys is as likely as one of random 128-bit values: about 1 in 10^20 for
-- a billion keys.
--
-- Online: this only creates objects. batch_key stays: skiplock reads it for
-- duplicates, never writes it, and prunes it like the new table, so it
-- empties itself within the key retention; a later version drops it.

-- The digest of an idempotency key: SHA-256 over the queue name, a zero
-- byte (which no text value holds, so the split is unambiguous) and the
-- key, truncated to 16 bytes. A plain SQL expression, STABLE like
-- convert_to, so that queries inline it; every name in it is qualified, so
-- no search_path can change what it computes.
CREATE FUNCTION key_digest(queue text, idempotency_key text) RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
SELECT pg_catalog.encode(pg_catalog.substring(pg_catalog.sha256(
    pg_catalog.convert_to($1, 'UTF8') OPERATOR(pg_catalog.||) '\x00'::pg_catalog.bytea
    OPERATOR(pg_catalog.||) pg_catalog.convert_to($2, 'UTF8')), 1, 16), 'hex')::pg_catalog.uuid
$$;

CREATE TABLE batch_key_digest (
    -- Serves: keyed enqueue (INSERT ... ON CONFLICT (digest) DO NOTHING),
    -- the lookup of the existing batch id on a duplicate, and the
    -- re-assertion of enqueues and completions after a failover.
    digest     uuid        PRIMARY KEY,
    batch_id   bigint      NOT NULL DEFAULT nextval('batch_id_seq'),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Serves: key retention pruning (DELETE ... WHERE created_at < now() - $1).
CREATE INDEX batch_key_digest_created_idx ON batch_key_digest USING brin (created_at);
