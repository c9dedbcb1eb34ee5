package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// Stop with a context that is already done returns nil when no handler was
// running: there was nothing to cut short.
func TestStopWithDoneContextAndNothingRunning(t *testing.T) {
	e := newEnv(t, nil)
	r, err := queue.NewRunner(e.client, &queue.RunnerConfig{
		Queue:   "idle",
		Handler: func(context.Context, *batch.Batch) error { return nil },
	})
	require.NoError(t, err)
	require.NoError(t, r.Start(testContext(t)))
	done, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, r.Stop(done))
	select {
	case <-r.Stopped():
	default:
		t.Fatal("Stop returned before the runner stopped")
	}
}

// Stop with a context that ends while a handler runs cancels it and says so.
func TestStopWithDoneContextCancelsRunningHandlers(t *testing.T) {
	e := newEnv(t, nil)
	started := make(chan struct{}, 1)
	r, err := queue.NewRunner(e.client, &queue.RunnerConfig{
		Queue: "busy",
		Handler: func(ctx context.Context, _ *batch.Batch) error {
			started <- struct{}{}
			<-ctx.Done()
			return context.Cause(ctx)
		},
	})
	require.NoError(t, err)
	require.NoError(t, r.Start(testContext(t)))
	ids := enqueueN(t, e.client, "busy", 1)
	<-started
	done, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, r.Stop(done), context.Canceled)
	waitFor(t, 10*time.Second, "the cancelled handler's batch released", func() bool {
		return e.count("WHERE id = $1 AND state = 'available' AND attempt = 0", ids[0]) == 1
	})
}

// Closing the client stops its runners: no claim goes on against a client
// that refuses every other call.
func TestCloseStopsRunners(t *testing.T) {
	e := newEnv(t, nil)
	client := newClient(t, e.pool, e.schema, nil)
	started := make(chan struct{}, 1)
	r, err := queue.NewRunner(client, &queue.RunnerConfig{
		Queue: "closing",
		Handler: func(ctx context.Context, _ *batch.Batch) error {
			started <- struct{}{}
			<-ctx.Done()
			return context.Cause(ctx)
		},
	})
	require.NoError(t, err)
	require.NoError(t, r.Start(testContext(t)))
	ids := enqueueN(t, client, "closing", 1)
	<-started
	require.NoError(t, client.Close())
	select {
	case <-r.Stopped():
	default:
		t.Fatal("Close returned with its runner still running")
	}
	require.Equal(t, 1, e.count("WHERE id = $1 AND state = 'available' AND attempt = 0", ids[0]),
		"the cancelled handler's batch is released for other runners")
	_, err = client.Enqueue(testContext(t), queue.EnqueueParams{Queue: "closing", Meta: meta(1)})
	require.ErrorIs(t, err, queue.ErrClosed)
	require.True(t, errors.Is(r.Start(testContext(t)), queue.ErrClosed))
}

// A runner owner that is not valid UTF-8 is refused up front: the database
// would refuse every claim (22021) and the runner would do nothing.
func TestRunnerOwnerMustBeUTF8(t *testing.T) {
	e := newEnv(t, nil)
	_, err := queue.NewRunner(e.client, &queue.RunnerConfig{
		Queue:   "owner",
		Owner:   "worker-\xff",
		Handler: func(context.Context, *batch.Batch) error { return nil },
	})
	var ae *queue.ArgumentError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, "Owner", ae.Field)
}
