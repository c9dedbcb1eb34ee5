// Package batch defines the batch metadata that skiplock queues carry, its
// validation and JSON encoding, deterministic idempotency keys for log
// ranges, and a Builder that cuts a stream of items into batches.
//
// A skiplock queue row is not an event: it describes a batch of events stored
// elsewhere — an object-store key (Meta.URI), a range of a Kafka partition
// (Meta.Source), or both — so one claimed row is often thousands of events.
// Producers fill a Meta and check it with Meta.Validate; the queue stores it
// as a Batch, with state, attempts, schedule and lease. The limits (Max...
// constants) bound every stored field; violations are *ValidationError
// values that match ErrInvalid with errors.Is.
//
// Source.Key derives a stable idempotency key from a log range, so that
// re-reading the same offsets after a crash enqueues the same batch only
// once.
//
// Builder groups items (e.g. events read from Kafka) into cuts by count,
// bytes and age and hands each cut to a FlushFunc, which typically writes the
// events to object storage and enqueues one batch row. Flushes run one at a
// time in order, and a failed cut is kept and retried, never dropped.
//
// The package uses only the standard library and no database.
package batch
