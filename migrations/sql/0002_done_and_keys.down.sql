-- skiplock 0002 down: removes completion tombstones and idempotency keys.
DROP TABLE batch_key;
DROP TABLE batch_done;
