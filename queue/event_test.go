package queue_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

// eventLog records the events an OnEvent hook receives.
type eventLog struct {
	mu  sync.Mutex
	evs []queue.Event
}

func (l *eventLog) on(e queue.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, e)
}

// count sums the Count of kind's events.
func (l *eventLog) count(kind queue.EventKind) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.evs {
		if e.Kind == kind {
			n += e.Count
		}
	}
	return n
}

// batches returns the batches of kind's events, by id.
func (l *eventLog) batches(kind queue.EventKind) map[int64][]queue.EventBatch {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[int64][]queue.EventBatch{}
	for _, e := range l.evs {
		if e.Kind == kind {
			for _, b := range e.Batches {
				out[b.ID] = append(out[b.ID], b)
			}
		}
	}
	return out
}

func (l *eventLog) all() []queue.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]queue.Event(nil), l.evs...)
}

// TestEventsReportLifecycle drives every event kind in one real scenario
// and checks each event's fields: a batch that completes after a lease
// extension, one that fails twice (retried, then dead-lettered), one whose
// lease is taken over (lease lost), one released at shutdown, an expired
// lease of a crashed claimer (reclaimed), and an enqueue and a completion
// that a "new writer" lost (re-asserted).
func TestEventsReportLifecycle(t *testing.T) {
	t.Parallel()
	base := newEnv(t, nil)
	ctx := testContext(t)
	var log eventLog
	sw := newWriterSwitch(base.pool)
	c := newClient(t, sw, base.schema, &queue.Config{MaxAttempts: 2, RetryBase: time.Millisecond, RetryMax: time.Millisecond, OnEvent: log.on})
	e := &env{t: t, url: base.url, schema: base.schema, pool: base.pool, client: c}

	r, err := queue.NewRunner(c, &queue.RunnerConfig{
		Queue: "ev", Concurrency: 8, PollInterval: 20 * time.Millisecond, ReclaimInterval: 50 * time.Millisecond,
		LeaseDuration: 2 * time.Second, HeartbeatInterval: 100 * time.Millisecond, FenceMargin: 400 * time.Millisecond,
		HandlerGrace: 200 * time.Millisecond,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			switch b.PartitionKey {
			case "fail":
				return errors.New("always fails")
			case "slow":
				// Outlive a few heartbeats, then complete.
				t := time.NewTimer(400 * time.Millisecond)
				defer t.Stop()
				select {
				case <-t.C:
				case <-ctx.Done():
					return ctx.Err()
				}
			case "steal", "hold":
				<-ctx.Done()
				return context.Cause(ctx)
			}
			return nil
		},
	})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	stopped := false
	defer func() {
		if !stopped {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = r.StopAndCancel(sctx)
			cancel()
		}
	}()

	enq := func(kind string) int64 {
		res, err := c.Enqueue(ctx, queue.EnqueueParams{Queue: "ev", Meta: batch.Meta{URI: "s3://ev/" + kind, PartitionKey: kind}})
		require.NoError(t, err)
		return res.ID
	}
	okID, slowID, failID := enq("ok"), enq("slow"), enq("fail")
	waitFor(t, 20*time.Second, "ok, slow completed and fail dead", func() bool {
		st := r.Stats()
		return st.Completed == 2 && st.Dead == 1
	})
	// Events reach the callback on a goroutine of their own, after the
	// statistics: wait until these outcomes' events have been delivered
	// (the second claim's event comes before the dead letter's).
	waitFor(t, 5*time.Second, "the outcomes' events delivered", func() bool {
		return log.count(queue.EventDeadLettered) == 1 && len(log.batches(queue.EventCompleted)) == 2
	})
	require.Equal(t, 3, log.count(queue.EventEnqueued))
	for _, ev := range log.all() {
		require.NotZero(t, ev.Count, ev.String())
		require.False(t, ev.At.IsZero())
		if ev.Kind != queue.EventReassertedEnqueues && ev.Kind != queue.EventReassertedCompletions {
			require.Equal(t, "ev", ev.Queue, ev.String())
		}
		if ev.Batches != nil {
			require.Len(t, ev.Batches, ev.Count, ev.String())
		}
	}
	claimed := log.batches(queue.EventClaimed)
	require.Len(t, claimed[failID], 2, "claimed twice")
	require.Equal(t, 1, claimed[failID][0].Attempt)
	require.Equal(t, 2, claimed[failID][1].Attempt)
	completed := log.batches(queue.EventCompleted)
	require.Len(t, completed, 2)
	require.Contains(t, completed, okID)
	require.Contains(t, completed, slowID)
	var created time.Time
	require.NoError(t, e.pool.QueryRow(ctx, "SELECT created_at FROM "+e.q("batch_done")+" WHERE id = $1", okID).Scan(&created))
	require.True(t, created.Equal(completed[okID][0].CreatedAt), "CreatedAt is the batch's created_at")
	retried := log.batches(queue.EventRetried)
	require.Len(t, retried, 1)
	require.Equal(t, queue.EventBatch{ID: failID, Attempt: 1, CreatedAt: retried[failID][0].CreatedAt, Error: "always fails"}, retried[failID][0])
	dead := log.batches(queue.EventDeadLettered)
	require.Len(t, dead, 1)
	require.Equal(t, 2, dead[failID][0].Attempt)
	require.Equal(t, "always fails", dead[failID][0].Error)
	require.Contains(t, log.batches(queue.EventLeaseExtended), slowID, "the slow batch's lease was extended")

	// Lease lost: another claim takes the batch over while it runs.
	stealID := enq("steal")
	waitFor(t, 10*time.Second, "steal started", func() bool { return log.batches(queue.EventClaimed)[stealID] != nil })
	e.exec("UPDATE "+e.q("batch")+" SET lease_token = lease_token + 1 WHERE id = $1", stealID)
	waitFor(t, 10*time.Second, "lease lost reported", func() bool { return log.batches(queue.EventLeaseLost)[stealID] != nil })
	require.EqualValues(t, 1, r.Stats().LeaseLost)

	// Reclaimed: a claimer that crashed leaves an expiring lease behind.
	require.NoError(t, c.Pause(ctx, "ev"))
	crashed, err := c.Enqueue(ctx, queue.EnqueueParams{Queue: "ev", Meta: batch.Meta{URI: "s3://ev/crashed", PartitionKey: "ok"}})
	require.NoError(t, err)
	e.exec("UPDATE "+e.q("batch")+" SET state = 'running', attempt = 1, lease_token = 42, lease_owner = 'crashed', lease_expires_at = now() + interval '200 milliseconds' WHERE id = $1", crashed.ID)
	waitFor(t, 10*time.Second, "reclaimed reported", func() bool { return log.count(queue.EventReclaimed) >= 1 })

	// Re-asserted enqueue: the new writer lost a keyed enqueue.
	p := keyedParams("ev", 1000)
	_, err = c.Enqueue(ctx, p)
	require.NoError(t, err)
	e.loseKey("ev", p.Meta.Source.Key())
	sw.change()
	waitFor(t, 10*time.Second, "re-asserted enqueue reported", func() bool { return log.count(queue.EventReassertedEnqueues) == 1 })

	// Re-asserted completion: the next new writer has the ok batch back as
	// enqueued, without its completion.
	e.exec("DELETE FROM "+e.q("batch_done")+" WHERE id = $1", okID)
	e.exec("INSERT INTO "+e.q("batch")+" (id, queue, created_at, max_attempts) VALUES ($1, 'ev', $2, 5)", okID, created)
	sw.change()
	waitFor(t, 10*time.Second, "re-asserted completion reported", func() bool { return log.count(queue.EventReassertedCompletions) == 1 })
	require.Zero(t, e.count("WHERE id = $1", okID), "the completion is recorded again")

	// Released: a handler still running at shutdown.
	require.NoError(t, c.Resume(ctx, "ev"))
	holdID := enq("hold")
	waitFor(t, 10*time.Second, "hold started", func() bool { return log.batches(queue.EventClaimed)[holdID] != nil })
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, r.StopAndCancel(sctx))
	stopped = true
	waitFor(t, 10*time.Second, "released reported", func() bool { return log.batches(queue.EventReleased)[holdID] != nil })
	require.Equal(t, "available", e.dbRow(holdID).state)

	st := r.Stats()
	require.EqualValues(t, st.Claimed, log.count(queue.EventClaimed))
	require.EqualValues(t, st.Completed, log.count(queue.EventCompleted))
	require.EqualValues(t, st.Retried, log.count(queue.EventRetried))
	require.EqualValues(t, st.Dead, log.count(queue.EventDeadLettered))
	require.EqualValues(t, st.Released, log.count(queue.EventReleased))
	require.EqualValues(t, st.LeaseLost, log.count(queue.EventLeaseLost))
	require.EqualValues(t, st.Reclaimed, log.count(queue.EventReclaimed))
	waitFor(t, 10*time.Second, "every event delivered", func() bool { return c.EventStats().Delivered == int64(len(log.all())) })
	es := c.EventStats()
	require.Zero(t, es.Dropped)
	require.Zero(t, es.Panics)
}

// A hostile OnEvent — one that panics, calls runtime.Goexit, blocks
// forever or is slow — neither stops nor slows the runner: it still drains
// every batch and stops within its deadline, and Close returns at once.
// What became of the events shows in EventStats.
func TestHostileOnEvent(t *testing.T) {
	t.Parallel()
	block := make(chan struct{})
	t.Cleanup(func() { close(block) }) // after the parallel subtests: lets the blocked callback end, for goleak
	cases := []struct {
		name  string
		fn    queue.OnEventFunc
		check func(t *testing.T, es queue.EventStats)
	}{
		{"panics", func(queue.Event) { panic("callback boom") }, func(t *testing.T, es queue.EventStats) {
			require.Positive(t, es.Panics)
			require.Zero(t, es.Delivered)
		}},
		{"calls runtime.Goexit", func(queue.Event) { runtime.Goexit() }, func(t *testing.T, es queue.EventStats) {
			require.Positive(t, es.Panics)
			require.Zero(t, es.Delivered)
		}},
		{"blocks forever", func(queue.Event) { <-block }, func(t *testing.T, es queue.EventStats) {
			require.Positive(t, es.Dropped, "the buffer filled up")
			require.Zero(t, es.Delivered)
		}},
		{"is slow", func(queue.Event) { time.Sleep(50 * time.Millisecond) }, func(t *testing.T, es queue.EventStats) {
			require.Positive(t, es.Dropped)
		}},
	}
	const n = 2000
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			base := newEnv(t, nil)
			c, err := queue.New(base.pool, &queue.Config{Schema: base.schema, OnEvent: tc.fn, EventBuffer: 4})
			require.NoError(t, err)
			closed := false
			defer func() {
				if !closed {
					_ = c.Close()
				}
			}()
			enqueueN(t, c, "hostile", n)
			var handled atomic.Int64
			done := make(chan struct{})
			r, err := queue.NewRunner(c, &queue.RunnerConfig{
				Queue: "hostile", Concurrency: 50, ClaimSize: 50, PollInterval: 20 * time.Millisecond,
				Handler: func(context.Context, *batch.Batch) error {
					if handled.Add(1) == n {
						close(done)
					}
					return nil
				},
			})
			require.NoError(t, err)
			t0 := time.Now()
			require.NoError(t, r.Start(testContext(t)))
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				t.Fatalf("handled %d of %d", handled.Load(), n)
			}
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			require.NoError(t, r.Stop(sctx))
			require.EqualValues(t, n, r.Stats().Completed)
			took := time.Since(t0)
			t1 := time.Now()
			require.NoError(t, c.Close())
			closed = true
			require.Less(t, time.Since(t1), 2*time.Second, "Close waits for the callback a short time only")
			t.Logf("%s: drained %d in %s; %+v", tc.name, n, took, c.EventStats())
			tc.check(t, c.EventStats())
		})
	}
}

// Without OnEvent a client starts no event goroutine and its runners build
// no events.
func TestNoEventHookCostsNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	require.False(t, queue.HasEventSink(e.client))
	var log eventLog
	c := newClient(t, e.pool, e.schema, &queue.Config{OnEvent: log.on})
	require.True(t, queue.HasEventSink(c))
	require.Equal(t, queue.EventStats{}, e.client.EventStats())
}
