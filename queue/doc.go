// Package queue is a durable PostgreSQL queue of batch metadata.
//
// Each row describes a batch of events stored elsewhere — an object-store
// key, a Kafka offset range — as a batch.Meta. Producers enqueue batches
// (one at a time, in bulk, or inside their own pgx.Tx); workers claim them
// with SELECT ... FOR UPDATE SKIP LOCKED, many per round trip, under a lease
// whose expiry comes from the database clock.
//
// # Leases and fencing
//
// A claim gives each batch a fresh random lease token. Complete, Fail,
// Extend and Release are single statements keyed by (id, token): they
// succeed only while the token still holds the batch and otherwise return
// ErrLeaseLost. A batch whose lease expires (a crashed or cut-off worker)
// is made claimable again by ReclaimExpired, which every Runner runs
// periodically. Completed batches leave the hot table; a short-lived
// completion record makes a repeated Complete with the same token succeed,
// so completions are safe to retry when a commit's outcome is unknown.
//
// # Runner
//
// A Runner embeds workers in a binary: it claims batches of a queue, runs a
// HandlerFunc on each with bounded concurrency, renews all held leases in
// one statement per heartbeat, and acknowledges outcomes together with the
// next claim in one pipelined round trip. If a lease cannot be renewed, the
// handler's context is cancelled FenceMargin before the lease would expire
// (self-fencing), so two handlers of one batch never overlap unless a
// handler ignores its context. New batches wake runners at once through
// LISTEN/NOTIFY; polling is the fallback.
//
// # Guarantees
//
// Delivery is at least once: a batch reaches a handler until it is
// completed, or dead-lettered after its last attempt (see ListDead and
// RequeueDead). Enqueues with an idempotency key (by default derived from
// the batch's source position) add nothing when repeated. Leases, schedules
// and retries use the database's clock only.
//
// The tables are installed by the migrations package. A Client runs on a
// *pgxpool.Pool or on the failover package's writer-verified pool.
package queue
