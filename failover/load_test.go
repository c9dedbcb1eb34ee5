package failover_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

const loadQueue = "events"

// batchKey names a batch across writers: after a failover that lost
// commits, a new writer can give an old batch's id to another batch.
type batchKey struct {
	id      int64
	created int64 // creation time, Unix microseconds
}

func keyOf(b *batch.Batch) batchKey { return batchKey{b.ID, b.CreatedAt.UnixMicro()} }

// execution is one handler run of a batch.
type execution struct {
	token  int64
	at     time.Time
	worker string
	key    string // the batch's idempotency key: its identity across writers
}

// load runs producers and workers against a DB and records everything
// that was acknowledged and every handler execution, for the invariant
// check at the end.
type load struct {
	t      *testing.T
	client *queue.Client

	mu        sync.Mutex
	acked     map[string]time.Time // idempotency key -> when its enqueue was acknowledged
	execs     map[batchKey][]execution
	lastExec  time.Time
	prodErrs  int
	firstErr  error
	runners   []*queue.Runner
	stopProd  context.CancelFunc
	producers sync.WaitGroup
}

type loadConfig struct {
	producers, workers int
	lease              time.Duration
}

func startLoad(t *testing.T, db queue.DB, cfg loadConfig) *load {
	t.Helper()
	client, err := queue.New(db, &queue.Config{Schema: testSchema, Logger: testLogger(t)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	l := &load{t: t, client: client, acked: map[string]time.Time{}, execs: map[batchKey][]execution{}}
	if cfg.lease == 0 {
		cfg.lease = 10 * time.Second
	}
	for w := 0; w < cfg.workers; w++ {
		name := fmt.Sprintf("worker-%d", w)
		r, err := queue.NewRunner(client, &queue.RunnerConfig{
			Queue:           loadQueue,
			Concurrency:     4,
			ClaimSize:       4,
			LeaseDuration:   cfg.lease,
			PollInterval:    100 * time.Millisecond,
			ReclaimInterval: 200 * time.Millisecond,
			Owner:           name,
			Handler: func(ctx context.Context, b *batch.Batch) error {
				l.record(keyOf(b), execution{token: b.Lease.Token, at: time.Now(), worker: name, key: b.IdempotencyKey})
				select { // a little work, so batches are in flight when faults hit
				case <-time.After(2 * time.Millisecond):
				case <-ctx.Done():
					return ctx.Err()
				}
				return nil
			},
		})
		require.NoError(t, err)
		require.NoError(t, r.Start(ctxFor(t, 30*time.Second)))
		l.runners = append(l.runners, r)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, r := range l.runners {
			_ = r.StopAndCancel(ctx)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	l.stopProd = cancel
	for p := 0; p < cfg.producers; p++ {
		l.producers.Add(1)
		go l.produce(ctx, int32(p))
	}
	t.Cleanup(l.stopProducers)
	return l
}

func (l *load) record(id batchKey, e execution) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.execs[id] = append(l.execs[id], e)
	if e.at.After(l.lastExec) {
		l.lastExec = e.at
	}
}

// produce enqueues keyed batches (one per offset range) every few
// milliseconds and records those acknowledged.
func (l *load) produce(ctx context.Context, part int32) {
	defer l.producers.Done()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for i := int64(0); ctx.Err() == nil; i++ {
		src := batch.Source{Topic: "orders", Partition: part, Start: i * 100, End: (i + 1) * 100}
		_, err := l.client.Enqueue(ctx, queue.EnqueueParams{
			Queue: loadQueue,
			Meta:  batch.Meta{Source: src, URI: fmt.Sprintf("s3://events/orders/%d/%d", part, i), EventCount: 100},
		})
		l.mu.Lock()
		if err == nil {
			l.acked[src.Key()] = time.Now()
		} else if ctx.Err() == nil {
			l.prodErrs++
			if l.firstErr == nil {
				l.firstErr = err
			}
		}
		l.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

func (l *load) stopProducers() {
	l.stopProd()
	l.producers.Wait()
}

// firstClaimAfter waits for the first handler execution that starts after
// t0 and returns how long after t0 it started.
func (l *load) firstClaimAfter(t0 time.Time, within time.Duration) time.Duration {
	l.t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		l.mu.Lock()
		var first time.Time
		for _, es := range l.execs {
			for _, e := range es {
				if e.at.After(t0) && (first.IsZero() || e.at.Before(first)) {
					first = e.at
				}
			}
		}
		l.mu.Unlock()
		if !first.IsZero() {
			return first.Sub(t0)
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("no batch was claimed within %s of the writer becoming reachable", within)
		}
		<-tick.C
	}
}

// runFor lets the load run for d (the fault schedule's own pacing).
func runFor(d time.Duration) { <-time.After(d) }

// report is the outcome of the shared invariant check.
type report struct {
	acked, completed, queued int
	lost, staleCompletions   int
	duplicates               int // batches (by idempotency key) handled more than once
	executions               int
}

// finish stops the producers, lets the workers drain every acknowledged
// batch on the final writer, stops them, and checks the invariants there:
// every acknowledged enqueue ends completed exactly once or still queued;
// every completion on record was made by the batch's latest claim.
func (l *load) finish(final *pgxpool.Pool) report {
	l.t.Helper()
	l.stopProducers()
	ctx := ctxFor(l.t, 2*time.Minute)

	keys := l.ackedKeys()
	// Drain: wait until no acknowledged batch is still queued.
	deadline := time.Now().Add(90 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var queued int
		require.NoError(l.t, final.QueryRow(ctx, `SELECT count(*) FROM skiplock.batch WHERE queue = $1 AND state <> 'dead'`, loadQueue).Scan(&queued))
		if queued == 0 {
			break
		}
		if time.Now().After(deadline) {
			l.t.Logf("%d batches still queued after the drain deadline", queued)
			break
		}
		<-tick.C
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range l.runners {
		require.NoError(l.t, r.Stop(stopCtx))
	}

	var rep report
	rep.acked = len(keys)
	queues := make([]string, len(keys))
	for i := range queues {
		queues[i] = loadQueue
	}
	rows, err := final.Query(ctx, `
SELECT u.key, k.batch_id,
    (SELECT count(*) FROM skiplock.batch_done d WHERE d.id = k.batch_id),
    EXISTS (SELECT 1 FROM skiplock.batch b WHERE b.id = k.batch_id)
FROM unnest($1::text[], $2::text[]) AS u(q, key)
LEFT JOIN skiplock.batch_key k ON k.queue = u.q AND k.idempotency_key = u.key`, queues, keys)
	require.NoError(l.t, err)
	var (
		key    string
		id     *int64
		done   int
		queued bool
	)
	_, err = pgx.ForEachRow(rows, []any{&key, &id, &done, &queued}, func() error {
		switch {
		case id == nil, done == 0 && !queued:
			rep.lost++
			if rep.lost <= 5 {
				l.t.Logf("lost: acknowledged batch %s (id %v) is neither completed nor queued", key, id)
			}
		case done > 1:
			rep.lost++ // completed more than once is a broken invariant too
			l.t.Logf("batch %d completed %d times", *id, done)
		case done == 1:
			rep.completed++
		default:
			rep.queued++
		}
		return nil
	})
	require.NoError(l.t, err)

	l.mu.Lock()
	execs := l.execs
	l.mu.Unlock()
	rows, err = final.Query(ctx, `SELECT id, lease_token, created_at FROM skiplock.batch_done`)
	require.NoError(l.t, err)
	var doneID, doneTok int64
	var doneCreated time.Time
	_, err = pgx.ForEachRow(rows, []any{&doneID, &doneTok, &doneCreated}, func() error {
		es := execs[batchKey{doneID, doneCreated.UnixMicro()}]
		if len(es) == 0 {
			rep.staleCompletions++
			l.t.Logf("batch %d completed by token %d, but no handler ever ran it", doneID, doneTok)
			return nil
		}
		sort.Slice(es, func(i, j int) bool { return es[i].at.Before(es[j].at) })
		if latest := es[len(es)-1]; latest.token != doneTok {
			rep.staleCompletions++
			l.t.Logf("batch %d completed by token %d, but its latest claim was %d (%s)", doneID, doneTok, latest.token, latest.worker)
		}
		return nil
	})
	require.NoError(l.t, err)
	perKey := map[string]int{}
	for _, es := range execs {
		rep.executions += len(es)
		for _, e := range es {
			perKey[e.key]++
		}
	}
	for _, n := range perKey {
		if n > 1 {
			rep.duplicates++
		}
	}
	return rep
}

func (l *load) ackedKeys() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	keys := make([]string, 0, len(l.acked))
	for k := range l.acked {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
