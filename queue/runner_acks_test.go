package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// TestAcknowledgementsOutliveFailingClaims: an acknowledgement travels in
// one transaction with the next claim, so a claim that keeps failing (here
// blocked behind a lock on the queue settings it reads; in the field a
// slice of the sweep that ran out of time, or a release of lost claims)
// would fail it too, round trip after round trip, until the batch's lease
// expired and it ran again. After a failed round trip the runner sends
// what it holds alone: the batch completes while claims still cannot.
func TestAcknowledgementsOutliveFailingClaims(t *testing.T) {
	t.Parallel()
	e := newEnv(t, &queue.Config{OpTimeout: 300 * time.Millisecond})
	ctx := testContext(t)
	release := make(chan struct{})
	started := make(chan int64, 1)
	r := startRunner(t, e.client, queue.RunnerConfig{
		Queue: "work", Concurrency: 1, ClaimSize: 1, PollInterval: 50 * time.Millisecond,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			started <- b.ID
			<-release
			return nil
		},
	})
	ids := enqueueN(t, e.client, "work", 2)
	id := <-started
	require.Equal(t, ids[0], id)

	// Claims read queue_setting (a paused queue claims nothing); a lock on
	// it that no one else takes blocks every claim, and nothing else.
	conn, err := pgx.Connect(ctx, e.url)
	require.NoError(t, err)
	defer func() { _ = conn.Close(context.Background()) }()
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "LOCK TABLE "+e.q("queue_setting")+" IN ACCESS EXCLUSIVE MODE")
	require.NoError(t, err)

	close(release)
	waitFor(t, 20*time.Second, "the batch completed while claims fail", func() bool {
		return e.count("WHERE id = $1", id) == 0
	})
	s := r.Stats()
	require.Equal(t, int64(1), s.Completed)
	require.Positive(t, s.RoundTripErrors, "claims failed meanwhile")
	require.Equal(t, 1, e.count("WHERE id = $1 AND state = 'available'", ids[1]), "and claimed nothing")

	require.NoError(t, tx.Rollback(ctx))
	waitFor(t, 20*time.Second, "the second batch claimed once the lock is gone", func() bool {
		select {
		case id := <-started:
			return id == ids[1]
		default:
			return false
		}
	})
}
