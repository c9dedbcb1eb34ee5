package queue_test

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/queue"
)

// TestNotifyCoalescingThroughput measures many concurrent single enqueues
// with a NOTIFY in every enqueue statement (NotifyInTransaction) and with
// coalesced wake-ups (the default), in alternating rounds of one session on
// one server, with a listener on the channel, and logs the medians. It is a
// measurement, not a pass/fail test; run it with SKIPLOCK_NOTIFY_BENCH=1.
func TestNotifyCoalescingThroughput(t *testing.T) {
	if os.Getenv("SKIPLOCK_NOTIFY_BENCH") == "" {
		t.Skip("set SKIPLOCK_NOTIFY_BENCH=1 to measure")
	}
	e := newEnv(t, nil)
	ctx := testContext(t)
	inStatement := newClient(t, e.pool, e.schema, &queue.Config{NotifyInterval: queue.NotifyInTransaction})
	coalesced := e.client

	lconn, err := e.pool.Acquire(ctx)
	require.NoError(t, err)
	defer lconn.Release()
	_, err = lconn.Exec(ctx, "LISTEN "+pgx.Identifier{queue.ChannelNameForTest(e.schema)}.Sanitize())
	require.NoError(t, err)

	const producers, perProducer, rounds = 16, 150, 5
	run := func(c *queue.Client) float64 {
		e.exec("TRUNCATE " + e.q("batch"))
		t0 := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, producers)
		for p := 0; p < producers; p++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < perProducer; i++ {
					if _, err := c.Enqueue(ctx, queue.EnqueueParams{Queue: "hot", Meta: meta(i)}); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		require.NoError(t, <-errs)
		return float64(producers*perProducer) / time.Since(t0).Seconds()
	}
	var before, after []float64
	for r := 0; r < rounds; r++ {
		before = append(before, run(inStatement))
		after = append(after, run(coalesced))
	}
	median := func(xs []float64) float64 { s := slices.Clone(xs); slices.Sort(s); return s[len(s)/2] }
	msg := fmt.Sprintf("concurrent single enqueues (%d producers): NOTIFY in every statement median %.0f/s %v; coalesced median %.0f/s %v",
		producers, median(before), rounded(before), median(after), rounded(after))
	t.Log(msg)
	fmt.Println(msg)
}

func rounded(xs []float64) []int {
	out := make([]int, len(xs))
	for i, x := range xs {
		out[i] = int(x)
	}
	return out
}
