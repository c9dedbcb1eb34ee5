-- skiplock 0004 down: back to keys as text only. Keys recorded since 0004
-- are copied to batch_key first: a digest cannot be turned back into its
-- key, so they are rebuilt from the batches still queued that carry them;
-- keys of batches already completed are lost, and re-enqueueing such a
-- source range adds a batch again.
INSERT INTO batch_key (queue, idempotency_key, batch_id, created_at)
SELECT b.queue, b.idempotency_key, k.batch_id, k.created_at
FROM batch_key_digest k JOIN batch b ON b.id = k.batch_id
WHERE b.idempotency_key IS NOT NULL AND k.digest = key_digest(b.queue, b.idempotency_key)
ON CONFLICT (queue, idempotency_key) DO NOTHING;
DROP TABLE batch_key_digest;
DROP FUNCTION key_digest(text, text);
