package failover_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// TestListenerFollowsWriter: with polling every 10 s, wake-ups must come
// from NOTIFY. After a failover the old writer keeps the LISTEN connection
// open (it is only read-only), so unless the listener moves to the new
// writer, a batch enqueued there would wait for the next poll.
func TestListenerFollowsWriter(t *testing.T) {
	c := newCluster(t)
	ctx := ctxFor(t, 2*time.Minute)
	pool := c.newPool(nil)
	client, err := queue.New(pool, &queue.Config{Schema: testSchema, Logger: testLogger(t)})
	require.NoError(t, err)
	defer client.Close()
	started := make(chan time.Time, 10)
	r, err := queue.NewRunner(client, &queue.RunnerConfig{
		Queue: "wake", Concurrency: 1, PollInterval: 10 * time.Second,
		Handler: func(context.Context, *batch.Batch) error {
			started <- time.Now()
			return nil
		},
	})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	defer func() { require.NoError(t, r.Stop(ctx)) }()

	wakeLatency := func(i int64) time.Duration {
		t.Helper()
		t0 := time.Now()
		_, err := client.Enqueue(ctx, queue.EnqueueParams{Queue: "wake",
			Meta: batch.Meta{Source: batch.Source{Topic: "wake", Start: i, End: i + 1}}})
		require.NoError(t, err)
		select {
		case at := <-started:
			return at.Sub(t0)
		case <-time.After(5 * time.Second):
			t.Fatalf("batch %d was not started within 5s: no wake-up", i)
			return 0
		}
	}
	require.Less(t, wakeLatency(1), time.Second, "before the failover")

	gen := pool.Generation()
	require.NoError(t, c.nodes[0].DemoteReadOnly(ctx))
	c.waitCaughtUp(0, 1)
	require.NoError(t, c.nodes[1].Promote(ctx))
	c.proxy.SetTarget(c.addr(1))
	waitFor(t, 10*time.Second, "a new generation on the new writer", func() bool {
		w, ok := pool.Writer()
		return ok && pool.Generation() > gen && w.Equal(c.identity(1))
	})
	// The listener reconnects on its own; give it the same bound a runner
	// gets to recover, then every wake-up must be prompt again.
	var last time.Duration
	waitFor(t, 5*time.Second, "prompt wake-ups on the new writer", func() bool {
		last = wakeLatency(time.Now().UnixNano())
		return last < time.Second
	})
	for i := int64(0); i < 3; i++ {
		d := wakeLatency(1000 + i)
		require.Less(t, d, time.Second, "after the failover")
		last = max(last, d)
	}
	t.Logf("wake-up after the failover within %s", last.Round(time.Millisecond))
}
