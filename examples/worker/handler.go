package main

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// ---------------------------------------------------------------------------
// EXAMPLE HANDLER — replace this with your own delivery.
//
// A real handler reads the batch's events from where its metadata points
// (b.URI: an object-store key or a file; b.Source: a Kafka topic, partition
// and offset range) and delivers them, honouring ctx:
//
//   - return nil once the batch is delivered: the runner completes it;
//   - return an error to retry it later with backoff (queue.Permanent(err)
//     dead-letters it at once);
//   - when ctx is cancelled (shutdown past the drain deadline, a lease that
//     could not be renewed), stop and return context.Cause(ctx): the batch
//     is released and another worker takes it, so delivery must be
//     idempotent (at-least-once).
//
// This one only logs what it would process and, with -handler-duration,
// pretends to work that long.
// ---------------------------------------------------------------------------

// exampleHandler returns the example HandlerFunc.
func exampleHandler(log *zap.Logger, duration time.Duration) queue.HandlerFunc {
	log = log.Named("handler")
	return func(ctx context.Context, b *batch.Batch) error {
		if duration > 0 {
			t := time.NewTimer(duration)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				log.Info("batch cut short; it will be released",
					zap.Int64("batch_id", b.ID), zap.NamedError("cause", context.Cause(ctx)))
				return context.Cause(ctx)
			}
		}
		fields := []zap.Field{
			zap.Int64("batch_id", b.ID),
			zap.String("idempotency_key", b.IdempotencyKey),
			zap.Int("attempt", b.Attempt),
			zap.Int64("event_count", b.EventCount),
		}
		if b.URI != "" {
			fields = append(fields, zap.String("uri", b.URI))
		}
		if !b.Source.IsZero() {
			fields = append(fields, zap.String("topic", b.Source.Topic), zap.Int32("partition", b.Source.Partition),
				zap.Int64("offset_start", b.Source.Start), zap.Int64("offset_end", b.Source.End))
		}
		log.Info("processed batch", fields...)
		return nil
	}
}
