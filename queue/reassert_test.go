package queue_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/queue"
)

// writerSwitch is a queue.DB over a real pool whose writer changes the test
// drives: change() fires WriterChanged, down makes every operation fail as
// the failover pool does while no writer is reachable, and afterEnqueue
// runs when the answer of an enqueue statement has been read (the moment
// the enqueue is acknowledged). The database is real; only the failover
// signals are the test's.
type writerSwitch struct {
	*pgxpool.Pool
	mu           sync.Mutex
	ch           chan struct{}
	down         atomic.Bool
	afterEnqueue func()
	failQueries  atomic.Int32 // this many next queries fail with conflictErr
}

// conflictErr is what a statement that lost a deadlock gets.
var conflictErr = &pgconn.PgError{Severity: "ERROR", Code: "40P01", Message: "deadlock detected"}

func newWriterSwitch(pool *pgxpool.Pool) *writerSwitch {
	return &writerSwitch{Pool: pool, ch: make(chan struct{})}
}

func (w *writerSwitch) WriterChanged() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

func (w *writerSwitch) change() {
	w.mu.Lock()
	defer w.mu.Unlock()
	close(w.ch)
	w.ch = make(chan struct{})
}

var errNoWriter = &failover.NoWriterError{Waited: time.Millisecond, Last: errors.New("endpoint reaches a standby")}

func (w *writerSwitch) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if w.down.Load() {
		return pgconn.CommandTag{}, errNoWriter
	}
	return w.Pool.Exec(ctx, sql, args...)
}

func (w *writerSwitch) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if w.down.Load() {
		return nil, errNoWriter
	}
	if w.failQueries.Add(-1) >= 0 {
		return nil, conflictErr
	}
	rows, err := w.Pool.Query(ctx, sql, args...)
	if err != nil || !strings.Contains(sql, "batch_key_digest (digest)") {
		return rows, err
	}
	w.mu.Lock()
	f := w.afterEnqueue
	w.afterEnqueue = nil
	w.mu.Unlock()
	if f == nil {
		return rows, nil
	}
	return &hookedRows{Rows: rows, after: f}, nil
}

func (w *writerSwitch) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if w.down.Load() {
		return errRow{errNoWriter}
	}
	return w.Pool.QueryRow(ctx, sql, args...)
}

func (w *writerSwitch) Begin(ctx context.Context) (pgx.Tx, error) {
	if w.down.Load() {
		return nil, errNoWriter
	}
	return w.Pool.Begin(ctx)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// hookedRows runs after once the rows are closed.
type hookedRows struct {
	pgx.Rows
	after func()
	once  sync.Once
}

func (r *hookedRows) Close() {
	r.Rows.Close()
	r.once.Do(r.after)
}

// loseKey deletes a keyed batch, its key and its completion record: what a
// promoted replica that missed those commits looks like.
func (e *env) loseKey(queueName, key string) {
	e.t.Helper()
	ctx := context.Background()
	var ids []int64
	rows, err := e.pool.Query(ctx, "SELECT batch_id FROM "+e.q("batch_key_digest")+" WHERE digest = "+e.q("key_digest")+"($1, $2)", queueName, key)
	require.NoError(e.t, err)
	ids, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(e.t, err)
	e.exec("DELETE FROM "+e.q("batch_key_digest")+" WHERE digest = "+e.q("key_digest")+"($1, $2)", queueName, key)
	e.exec("DELETE FROM "+e.q("batch")+" WHERE id = ANY($1)", ids)
	e.exec("DELETE FROM "+e.q("batch_done")+" WHERE id = ANY($1)", ids)
}

func keyedParams(queueName string, start int64) queue.EnqueueParams {
	return queue.EnqueueParams{Queue: queueName, Meta: batch.Meta{
		URI:    fmt.Sprintf("s3://events/%d", start),
		Source: batch.Source{Topic: "clicks", Partition: 0, Start: start, End: start + 100}, EventCount: 100,
	}}
}

// An enqueue acknowledged by a writer that is replaced while the call runs,
// and that the new writer lacks, must not be reported as done unless it is
// on the new writer: with no writer reachable the call says the outcome is
// unknown, the journal keeps the batch pending, and asserts it once a
// writer is back.
func TestStraddledEnqueueIsNeverAcknowledgedUnasserted(t *testing.T) {
	e := newEnv(t, nil)
	sw := newWriterSwitch(e.pool)
	client := newClient(t, sw, e.schema, &queue.Config{RetryWindow: 500 * time.Millisecond})
	p := keyedParams("straddle", 0)
	key := p.Meta.Source.Key()

	sw.afterEnqueue = func() {
		// Acknowledged by the old writer; the new one never got it, and is
		// not reachable yet.
		e.loseKey("straddle", key)
		sw.change()
		sw.down.Store(true)
	}
	_, err := client.Enqueue(testContext(t), p)
	require.ErrorIs(t, err, queue.ErrOutcomeUnknown)
	waitFor(t, 10*time.Second, "the writer change noticed", func() bool {
		return client.JournalStats().Pending == 1
	})
	require.Zero(t, e.count("WHERE idempotency_key = $1", key))

	sw.down.Store(false)
	waitFor(t, 15*time.Second, "the journal asserts the batch once a writer is back", func() bool {
		return client.JournalStats().Pending == 0
	})
	require.Equal(t, 1, e.count("WHERE idempotency_key = $1 AND state = 'available'", key))
	require.EqualValues(t, 1, client.JournalStats().Reasserted)
}

// When the new writer is reachable, a straddled enqueue is confirmed on it
// before the call returns, and the id returned is the id there.
func TestStraddledEnqueueIsConfirmedOnTheNewWriter(t *testing.T) {
	e := newEnv(t, nil)
	sw := newWriterSwitch(e.pool)
	client := newClient(t, sw, e.schema, nil)
	p := keyedParams("straddle", 100)
	key := p.Meta.Source.Key()
	sw.afterEnqueue = func() {
		e.loseKey("straddle", key)
		sw.change()
	}
	res, err := client.Enqueue(testContext(t), p)
	require.NoError(t, err)
	require.False(t, res.Duplicate)
	b, err := client.Get(testContext(t), res.ID)
	require.NoError(t, err, "the id returned must name the batch on the current writer")
	require.Equal(t, key, b.IdempotencyKey)
	require.Zero(t, client.JournalStats().Pending)
}

// A keyless enqueue that straddles a writer change cannot be asserted
// again safely: its outcome is unknown, and the call says so.
func TestStraddledKeylessEnqueueReportsOutcomeUnknown(t *testing.T) {
	e := newEnv(t, nil)
	sw := newWriterSwitch(e.pool)
	client := newClient(t, sw, e.schema, nil)
	// The keyless statement has no key table; trigger on a keyed row in the
	// same call instead.
	keyed := keyedParams("mixed", 0)
	sw.afterEnqueue = sw.change
	_, err := client.EnqueueMany(testContext(t), []queue.EnqueueParams{keyed, {Queue: "mixed", Meta: meta(1)}})
	require.ErrorIs(t, err, queue.ErrOutcomeUnknown)
}

// The journal window is measured back from the last acknowledgement on the
// old writer, not from when the change is detected: detection that takes
// longer than the window (a slow endpoint move) still re-asserts what the
// old writer acknowledged last.
func TestJournalCoversSlowDetection(t *testing.T) {
	e := newEnv(t, nil)
	sw := newWriterSwitch(e.pool)
	client := newClient(t, sw, e.schema, &queue.Config{JournalWindow: 200 * time.Millisecond})
	p := keyedParams("slow", 0)
	_, err := client.Enqueue(testContext(t), p)
	require.NoError(t, err)
	// No acknowledgement for several windows (the old writer is gone, the
	// endpoint has not moved yet), then the change is detected.
	time.Sleep(time.Second)
	e.loseKey("slow", p.Meta.Source.Key())
	sw.change()
	waitFor(t, 10*time.Second, "the batch asserted on the new writer", func() bool {
		return e.count("WHERE idempotency_key = $1", p.Meta.Source.Key()) == 1
	})
	waitFor(t, 5*time.Second, "nothing pending", func() bool { return client.JournalStats().Pending == 0 })
	require.EqualValues(t, 1, client.JournalStats().Reasserted)
}

// Close reports journaled enqueues it could not assert.
func TestCloseReportsUnassertedEnqueues(t *testing.T) {
	e := newEnv(t, nil)
	sw := newWriterSwitch(e.pool)
	client, err := queue.New(sw, &queue.Config{Schema: e.schema, RetryWindow: 300 * time.Millisecond, Logger: testLogger(t)})
	require.NoError(t, err)
	_, err = client.Enqueue(testContext(t), keyedParams("close", 0))
	require.NoError(t, err)
	sw.down.Store(true)
	sw.change()
	waitFor(t, 10*time.Second, "the change noticed", func() bool { return client.JournalStats().Pending == 1 })
	err = client.Close()
	require.ErrorIs(t, err, queue.ErrNotReasserted)
	require.Contains(t, err.Error(), "1 acknowledged keyed enqueues")
}

// Completions are re-asserted by key as well as by id: a batch that a
// failover re-enqueued under another id is finished, not run again, and a
// completion whose batch the new writer lacks altogether keeps a later
// re-assertion of the enqueue from adding it back.
func TestReassertCompletedMatchesByKey(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	p := keyedParams("bykey", 0)
	key := p.Meta.Source.Key()
	res, err := e.client.Enqueue(ctx, p)
	require.NoError(t, err)
	claimed, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "bykey", Limit: 1, Lease: time.Minute, Owner: "w1"})
	require.NoError(t, err)
	require.Len(t, claimed, 1)
	b := claimed[0]
	require.NoError(t, e.client.Complete(ctx, queue.RefOf(&b)))
	done := queue.Completion{Ref: queue.RefOf(&b), CreatedAt: b.CreatedAt, Queue: b.Queue, Key: b.IdempotencyKey, Attempt: b.Attempt}

	// The new writer lost the completion, the key and the batch; the
	// enqueue was re-asserted and got another id.
	e.loseKey("bykey", key)
	e.exec("SELECT nextval($1::text::regclass)", pgx.Identifier{e.schema, "batch_id_seq"}.Sanitize())
	again, err := e.client.Enqueue(ctx, p)
	require.NoError(t, err)
	require.NotEqual(t, res.ID, again.ID)

	n, err := e.client.ReassertCompleted(ctx, []queue.Completion{done})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Zero(t, e.count("WHERE idempotency_key = $1", key))

	// Asserting it again changes nothing.
	n, err = e.client.ReassertCompleted(ctx, []queue.Completion{done})
	require.NoError(t, err)
	require.Zero(t, n)

	// Lost altogether: the completion is recorded as acknowledged, with its
	// key, so the enqueue's re-assertion is a duplicate.
	e.loseKey("bykey", key)
	n, err = e.client.ReassertCompleted(ctx, []queue.Completion{done})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	dup, err := e.client.Enqueue(ctx, p)
	require.NoError(t, err)
	require.True(t, dup.Duplicate)
	require.Zero(t, e.count("WHERE idempotency_key = $1", key))
	// Recorded under a new id (the old one may name another batch here),
	// the one the key now points at.
	ok, err := e.client.Completed(ctx, dup.ID)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, e.client.Complete(ctx, queue.Ref{ID: dup.ID, Token: done.Ref.Token}), "a repeated Complete by the token on record succeeds")
}

// Two producers enqueueing overlapping keys in opposite orders must not
// deadlock each other.
func TestOverlappingKeyedEnqueuesDoNotDeadlock(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	// 6,000 rows take two statements in one transaction: the keys of the
	// first statement stay locked while the second one runs.
	const rounds, rows = 3, 6000
	for round := 0; round < rounds; round++ {
		fwd := make([]queue.EnqueueParams, rows)
		for i := range fwd {
			fwd[i] = queue.EnqueueParams{Queue: "dl", Meta: meta(i), IdempotencyKey: fmt.Sprintf("r%d-k%03d", round, i)}
		}
		rev := make([]queue.EnqueueParams, len(fwd))
		for i := range fwd {
			rev[i] = fwd[len(fwd)-1-i]
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for g, ps := range [][]queue.EnqueueParams{fwd, rev} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[g] = e.client.EnqueueMany(ctx, ps)
			}()
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...), "round %d", round)
	}
	require.Equal(t, rounds*rows, e.count("WHERE queue = 'dl'"))
}

// A keyless enqueue reports ErrOutcomeUnknown only when its statement may
// have reached the server.
func TestKeylessOutcomeUnknownOnlyWhenSent(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)

	// Nothing listens: the connection is refused before anything is sent.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := ln.Addr().String()
	require.NoError(t, ln.Close())
	host, port, err := net.SplitHostPort(deadAddr)
	require.NoError(t, err)
	dead := newPool(t, fmt.Sprintf("postgres://postgres@%s:%s/postgres?connect_timeout=1", host, port), 2)
	refused := newClient(t, dead, e.schema, &queue.Config{RetryWindow: 200 * time.Millisecond})
	_, err = refused.Enqueue(ctx, queue.EnqueueParams{Queue: "ou", Meta: meta(0)})
	require.Error(t, err)
	require.NotErrorIs(t, err, queue.ErrOutcomeUnknown, "a refused connection sent nothing")

	// No writer: nothing sent either.
	sw := newWriterSwitch(e.pool)
	sw.down.Store(true)
	noWriter := newClient(t, sw, e.schema, &queue.Config{RetryWindow: 200 * time.Millisecond})
	_, err = noWriter.Enqueue(ctx, queue.EnqueueParams{Queue: "ou", Meta: meta(0)})
	require.Error(t, err)
	require.NotErrorIs(t, err, queue.ErrOutcomeUnknown)

	// The statement reached the server and the caller's deadline passed
	// before the answer came back: unknown.
	cfg, err := pgx.ParseConfig(e.url)
	require.NoError(t, err)
	proxy := pgtest.NewTestProxy(t, net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)))
	slow := newPool(t, proxy.ConnString(cfg.Database), 2)
	require.NoError(t, slow.Ping(ctx))
	proxy.SetLatency(400 * time.Millisecond)
	slowClient := newClient(t, slow, e.schema, nil)
	short, cancel := context.WithTimeout(ctx, 600*time.Millisecond)
	defer cancel()
	_, err = slowClient.Enqueue(short, queue.EnqueueParams{Queue: "ou", Meta: meta(0)})
	require.ErrorIs(t, err, queue.ErrOutcomeUnknown)
}

// A statement that lost a deadlock or a serialization conflict was rolled
// back: repeating it is safe for every enqueue, keyed or not.
func TestEnqueueRetriesConflicts(t *testing.T) {
	e := newEnv(t, nil)
	sw := newWriterSwitch(e.pool)
	client := newClient(t, sw, e.schema, nil)
	ctx := testContext(t)
	sw.failQueries.Store(2)
	res, err := client.Enqueue(ctx, queue.EnqueueParams{Queue: "conflict", Meta: meta(0)})
	require.NoError(t, err)
	require.Equal(t, 1, e.count("WHERE id = $1", res.ID))
	sw.failQueries.Store(1)
	res, err = client.Enqueue(ctx, keyedParams("conflict", 0))
	require.NoError(t, err)
	require.Equal(t, 1, e.count("WHERE id = $1", res.ID))
	require.Equal(t, 2, e.count("WHERE queue = 'conflict'"))
}

// TestRunnerDoesNotRerunWorkANewWriterLost: a runner completed a batch; the
// writer that replaces the old one lost that completion, so it hands the
// batch out again. While the client has not yet asserted the completion
// there (here: batch_done is locked), the runner claims it, and completes it
// under the new claim without running its handler a second time.
func TestRunnerDoesNotRerunWorkANewWriterLost(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	w := newWriterSwitch(e.pool)
	c := newClient(t, w, e.schema, nil)
	var calls atomic.Int64
	r := startRunner(t, c, queue.RunnerConfig{Queue: "rerun", Concurrency: 4, PollInterval: 20 * time.Millisecond,
		Handler: func(context.Context, *batch.Batch) error {
			calls.Add(1)
			return nil
		}})
	p := keyedParams("rerun", 0)
	res, err := c.Enqueue(ctx, p)
	require.NoError(t, err)
	waitFor(t, 10*time.Second, "the batch completed", func() bool {
		ok, err := c.Completed(ctx, res.ID)
		return err == nil && ok
	})
	require.EqualValues(t, 1, calls.Load())

	// The new writer: the batch is there as enqueued, its completion is not.
	require.NoError(t, c.Pause(ctx, "rerun"))
	var created time.Time
	require.NoError(t, e.pool.QueryRow(ctx, "SELECT created_at FROM "+e.q("batch_done")+" WHERE id = $1", res.ID).Scan(&created))
	e.exec("DELETE FROM "+e.q("batch_done")+" WHERE id = $1", res.ID)
	e.exec("INSERT INTO "+e.q("batch")+" (id, queue, idempotency_key, created_at, max_attempts) VALUES ($1, 'rerun', $2, $3, 5)",
		res.ID, p.Meta.Source.Key(), created)
	lock, err := e.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = lock.Rollback(ctx) }()
	_, err = lock.Exec(ctx, "LOCK TABLE "+e.q("batch_done")+" IN EXCLUSIVE MODE")
	require.NoError(t, err)
	w.change()
	require.NoError(t, c.Resume(ctx, "rerun"))

	waitFor(t, 10*time.Second, "the batch claimed again", func() bool { return r.Stats().FinishedBefore == 1 })
	require.EqualValues(t, 1, calls.Load(), "the handler is not run again")
	require.NoError(t, lock.Rollback(ctx))
	waitFor(t, 10*time.Second, "the batch completed again", func() bool {
		return e.count("WHERE id = $1", res.ID) == 0 && r.Stats().PendingReassert == 0
	})
	var records int
	require.NoError(t, e.pool.QueryRow(ctx, "SELECT count(*) FROM "+e.q("batch_done")+" WHERE id = $1", res.ID).Scan(&records))
	require.Equal(t, 1, records, "one completion on record")
	require.EqualValues(t, 1, calls.Load())
}
