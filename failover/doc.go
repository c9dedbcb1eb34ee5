// Package failover is a writer-verified PostgreSQL connection pool that
// rides through failovers.
//
// Managed clusters (Aurora, RDS, Patroni, Cloud SQL) are reached through an
// endpoint whose answer changes later than the roles do. A plain pgx pool
// keeps its connections to a server that became read-only (every write then
// fails with SQLSTATE 25006 until the process restarts) or to an old writer
// that still accepts writes that will be lost. A Pool instead:
//
//   - checks every new connection's role (pg_is_in_recovery(),
//     transaction_read_only) and identity (address, port, postmaster start
//     time, Aurora instance) before use, and pins each generation of its
//     pgxpool to one writer — no extra query per checkout;
//   - classifies errors by SQLSTATE (Classify): read-only and identity
//     mismatches mean a stale writer; shutdowns, connection errors and i/o
//     timeouts trigger an immediate probe (rate-limited; a caller's own
//     context ending does not); serialization failures and deadlocks are
//     ClassConflict; Class.Retryable says when an operation did not take
//     effect and may be repeated whatever it is;
//   - probes the endpoint through a fresh connection every ProbeInterval to
//     learn who the writer is, so an old writer that still accepts writes
//     is found too;
//   - on a stale writer retires the generation at once (no more
//     connections from it, and a transaction begun on it rolls back at
//     Commit with a *StaleWriterError), lets its in-flight work finish or
//     fail, and builds the next generation as soon as a writer answers,
//     probing at once and then at most every RebuildBackoff (100ms by
//     default) without giving up; meanwhile callers wait up to WriterWait
//     and then get a *NoWriterError (or ErrClosed if the pool closes);
//   - runs the pool configuration's BeforeConnect (passwords, IAM tokens)
//     before every connection it opens, probes included;
//   - reports every transition as an Event and a zap log line.
//
// A Pool satisfies the queue package's DB interface, including the LISTEN
// connection (ConnectListener) and writer-change notifications
// (WriterChanged) the queue uses to follow the writer. The pool never
// retries a statement itself: whether one may be repeated is the caller's
// decision (the queue retries only idempotent operations).
package failover
