package queue_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/queue"
)

func TestEnqueueAndGet(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	m := batch.Meta{
		PartitionKey: "tenant-7",
		URI:          "s3://bucket/a.ndjson",
		Source:       batch.Source{Topic: "events", Partition: 3, Start: 100, End: 200},
		EventCount:   100,
		ByteSize:     12345,
		Payload:      []byte(`{"schema":2}`),
	}
	res, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "ingest", Meta: m, Priority: 2, MaxAttempts: 3})
	require.NoError(t, err)
	require.False(t, res.Duplicate)
	require.Positive(t, res.ID)

	b, err := e.client.Get(ctx, res.ID)
	require.NoError(t, err)
	require.Equal(t, "ingest", b.Queue)
	require.Equal(t, batch.StateAvailable, b.State)
	require.Equal(t, m, b.Meta)
	require.Equal(t, m.Source.Key(), b.IdempotencyKey, "the key defaults to the source position's")
	require.Equal(t, int16(2), b.Priority)
	require.Equal(t, 3, b.MaxAttempts)
	require.Zero(t, b.Attempt)
	require.False(t, b.CreatedAt.IsZero())

	_, err = e.client.Get(ctx, res.ID+1000)
	require.ErrorIs(t, err, queue.ErrNotFound)
}

func TestEnqueueManyOrderAndChunks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	n := queue.MaxEnqueueBatchRows*2 + 17
	ps := make([]queue.EnqueueParams, n)
	for i := range ps {
		ps[i] = queue.EnqueueParams{Queue: "bulk", Meta: meta(i)}
	}
	// Two rows with the same explicit key within one call: one batch.
	ps[5].IdempotencyKey = "same"
	ps[9].IdempotencyKey = "same"
	res, err := e.client.EnqueueMany(ctx, ps)
	require.NoError(t, err)
	require.Len(t, res, n)
	seen := map[int64]bool{}
	for i, r := range res {
		if i == 9 {
			require.True(t, r.Duplicate)
			require.Equal(t, res[5].ID, r.ID)
			continue
		}
		require.False(t, r.Duplicate, "row %d", i)
		require.False(t, seen[r.ID], "id %d returned twice", r.ID)
		seen[r.ID] = true
	}
	require.Equal(t, n-1, e.count("WHERE queue = 'bulk'"))

	// Results are in input order: each id's row has that input's URI.
	for _, i := range []int{0, 1, queue.MaxEnqueueBatchRows, n - 1} {
		b, err := e.client.Get(ctx, res[i].ID)
		require.NoError(t, err)
		require.Equal(t, meta(i).URI, b.URI)
	}

	none, err := e.client.EnqueueMany(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, none)
}

func TestEnqueueManyIsAtomic(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	n := queue.MaxEnqueueBatchRows + 10
	ps := make([]queue.EnqueueParams, n)
	for i := range ps {
		ps[i] = queue.EnqueueParams{Queue: "atomic", Meta: meta(i)}
	}
	// Make the database refuse the last row, which travels in the second
	// statement: the first statement's rows must be rolled back with it.
	e.exec(`CREATE FUNCTION ` + e.q("refuse") + `() RETURNS trigger LANGUAGE plpgsql AS
		$$BEGIN IF NEW.uri = 'refuse-me' THEN RAISE EXCEPTION 'refused by test'; END IF; RETURN NEW; END$$`)
	e.exec(`CREATE TRIGGER refuse BEFORE INSERT ON ` + e.q("batch") + ` FOR EACH ROW EXECUTE FUNCTION ` + e.q("refuse") + `()`)
	ps[n-1].Meta.URI = "refuse-me"
	_, err := e.client.EnqueueMany(ctx, ps)
	require.ErrorContains(t, err, "refused by test")
	require.Zero(t, e.count("WHERE queue = 'atomic'"), "a failed bulk enqueue must leave nothing")
}

func TestTransactionalEnqueue(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)

	tx, err := e.pool.Begin(ctx)
	require.NoError(t, err)
	res, err := e.client.EnqueueTx(ctx, tx, queue.EnqueueParams{Queue: "tx", Meta: meta(1)})
	require.NoError(t, err)
	require.Positive(t, res.ID)
	require.NoError(t, tx.Rollback(ctx))
	require.Zero(t, e.count("WHERE queue = 'tx'"), "rolled back enqueue must leave nothing")
	got, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "tx", Limit: 10, Lease: time.Minute})
	require.NoError(t, err)
	require.Empty(t, got)

	tx, err = e.pool.Begin(ctx)
	require.NoError(t, err)
	res, err = e.client.EnqueueTx(ctx, tx, queue.EnqueueParams{Queue: "tx", Meta: meta(2)})
	require.NoError(t, err)
	// Not visible to others before commit.
	got, err = e.client.Claim(ctx, queue.ClaimParams{Queue: "tx", Limit: 10, Lease: time.Minute})
	require.NoError(t, err)
	require.Empty(t, got)
	require.NoError(t, tx.Commit(ctx))

	got, err = e.client.Claim(ctx, queue.ClaimParams{Queue: "tx", Limit: 10, Lease: time.Minute})
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, res.ID, got[0].ID)

	// A keyed enqueue rolled back does not keep its key.
	err = pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		_, err := e.client.EnqueueTx(ctx, tx, queue.EnqueueParams{Queue: "tx", Meta: meta(3), IdempotencyKey: "k"})
		require.NoError(t, err)
		return errors.New("roll back")
	})
	require.Error(t, err)
	again, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "tx", Meta: meta(3), IdempotencyKey: "k"})
	require.NoError(t, err)
	require.False(t, again.Duplicate)
}

func TestConcurrentIdempotentEnqueue(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	src := batch.Source{Topic: "orders", Partition: 1, Start: 5000, End: 6000}

	const producers = 16
	var wg sync.WaitGroup
	start := make(chan struct{})
	results := make([]queue.EnqueueResult, producers)
	errs := make([]error, producers)
	for i := 0; i < producers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = e.client.Enqueue(ctx, queue.EnqueueParams{
				Queue: "orders", Meta: batch.Meta{Source: src, URI: "s3://b/orders-1-5000"},
			})
		}()
	}
	close(start)
	wg.Wait()

	fresh := 0
	for i := range results {
		require.NoError(t, errs[i])
		require.Equal(t, results[0].ID, results[i].ID, "every producer gets the same batch id")
		if !results[i].Duplicate {
			fresh++
		}
	}
	require.Equal(t, 1, fresh, "exactly one enqueue adds the batch")
	require.Equal(t, 1, e.count("WHERE queue = 'orders'"))

	// Completed, the key is still remembered: re-enqueueing the same range
	// after a producer crash adds nothing.
	got, err := e.client.Claim(ctx, queue.ClaimParams{Queue: "orders", Limit: 1, Lease: time.Minute})
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.NoError(t, e.client.Complete(ctx, queue.RefOf(&got[0])))
	again, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "orders", Meta: batch.Meta{Source: src}})
	require.NoError(t, err)
	require.True(t, again.Duplicate)
	require.Equal(t, results[0].ID, again.ID)
	require.Zero(t, e.count("WHERE queue = 'orders'"))

	// The same range in another queue is another batch; opting out of the
	// default key adds a batch too.
	other, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "orders-replay", Meta: batch.Meta{Source: src}})
	require.NoError(t, err)
	require.False(t, other.Duplicate)
	unkeyed, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "orders", Meta: batch.Meta{Source: src}, NoIdempotencyKey: true})
	require.NoError(t, err)
	require.False(t, unkeyed.Duplicate)
}

// TestKeysRecordedBefore0004 runs against a schema upgraded with keys that
// migration 0004 left in batch_key (text keys, before digests): each still
// makes a re-enqueue of its key a duplicate naming its batch, in a single
// enqueue and in a bulk one, and is pruned past retention, after which the
// key is free again. The same key text in another queue is another key.
func TestKeysRecordedBefore0004(t *testing.T) {
	t.Parallel()
	e := newEnv(t, &queue.Config{KeyRetention: time.Hour})
	ctx := testContext(t)
	var id int64
	require.NoError(t, e.pool.QueryRow(ctx, `INSERT INTO `+e.q("batch_key")+` (queue, idempotency_key, created_at)
        VALUES ('legacy', 'src1:orders:0:0-10', now() - interval '10 minutes') RETURNING batch_id`).Scan(&id))

	one, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "legacy", Meta: meta(1), IdempotencyKey: "src1:orders:0:0-10"})
	require.NoError(t, err)
	require.True(t, one.Duplicate)
	require.Equal(t, id, one.ID)
	many, err := e.client.EnqueueMany(ctx, []queue.EnqueueParams{
		{Queue: "legacy", Meta: meta(2), IdempotencyKey: "src1:orders:0:10-20"},
		{Queue: "legacy", Meta: meta(3), IdempotencyKey: "src1:orders:0:0-10"},
		{Queue: "other", Meta: meta(4), IdempotencyKey: "src1:orders:0:0-10"},
	})
	require.NoError(t, err)
	require.False(t, many[0].Duplicate)
	require.True(t, many[1].Duplicate)
	require.Equal(t, id, many[1].ID)
	require.False(t, many[2].Duplicate, "the same key in another queue is another batch")
	require.Equal(t, 0, e.count("WHERE queue = 'legacy' AND idempotency_key = 'src1:orders:0:0-10'"))
	require.Equal(t, 2, e.keys(), "new keys go to batch_key_digest only")

	// Past retention, Prune removes the old key as well, and it is free.
	e.exec(`UPDATE ` + e.q("batch_key") + ` SET created_at = now() - interval '2 hours'`)
	_, pruned, err := e.client.Prune(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, pruned)
	again, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "legacy", Meta: meta(5), IdempotencyKey: "src1:orders:0:0-10"})
	require.NoError(t, err)
	require.False(t, again.Duplicate)
	require.NotEqual(t, id, again.ID)
}

func TestEnqueueRejectsBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	good := queue.EnqueueParams{Queue: "q", Meta: meta(1)}
	tests := []struct {
		name  string
		edit  func(p *queue.EnqueueParams)
		field string
	}{
		{"empty queue", func(p *queue.EnqueueParams) { p.Queue = "" }, "Queue"},
		{"long queue", func(p *queue.EnqueueParams) { p.Queue = strings.Repeat("q", batch.MaxQueueNameBytes+1) }, "Queue"},
		{"NUL in queue", func(p *queue.EnqueueParams) { p.Queue = "a\x00b" }, "Queue"},
		{"no location", func(p *queue.EnqueueParams) { p.Meta = batch.Meta{EventCount: 1} }, "Meta"},
		{"huge payload", func(p *queue.EnqueueParams) { p.Meta.Payload = make([]byte, batch.MaxPayloadBytes+1) }, "Meta"},
		{"negative delay", func(p *queue.EnqueueParams) { p.Delay = -time.Second }, "Delay"},
		{"delay and run-at", func(p *queue.EnqueueParams) { p.Delay = time.Second; p.RunAt = time.Now() }, "Delay"},
		{"negative attempts", func(p *queue.EnqueueParams) { p.MaxAttempts = -1 }, "MaxAttempts"},
		{"too many attempts", func(p *queue.EnqueueParams) { p.MaxAttempts = queue.MaxAttemptsLimit + 1 }, "MaxAttempts"},
		{"long key", func(p *queue.EnqueueParams) { p.IdempotencyKey = strings.Repeat("k", batch.MaxIdempotencyKeyBytes+1) }, "IdempotencyKey"},
		{"NUL key", func(p *queue.EnqueueParams) { p.IdempotencyKey = "k\x00" }, "IdempotencyKey"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := good
			tt.edit(&p)
			_, err := e.client.Enqueue(ctx, p)
			require.ErrorIs(t, err, queue.ErrInvalid)
			var ae *queue.ArgumentError
			require.ErrorAs(t, err, &ae)
			require.Equal(t, tt.field, ae.Field)
			require.Less(t, len(err.Error()), 400, "errors must not echo large input")

			// In a batch, the index is named and nothing is written.
			_, err = e.client.EnqueueMany(ctx, []queue.EnqueueParams{good, p})
			require.ErrorAs(t, err, &ae)
			require.Equal(t, "[1]."+tt.field, ae.Field)
		})
	}
	require.Zero(t, e.count(""), "rejected enqueues must write nothing")
	_, err := e.client.EnqueueTx(ctx, nil, good)
	require.ErrorIs(t, err, queue.ErrInvalid)

	require.NoError(t, e.client.Close())
	_, err = e.client.Enqueue(ctx, good)
	require.ErrorIs(t, err, queue.ErrClosed)
	_, err = e.client.Claim(ctx, queue.ClaimParams{Queue: "q", Limit: 1, Lease: time.Minute})
	require.ErrorIs(t, err, queue.ErrClosed)
	require.Zero(t, e.count(""))
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	pool := newPool(t, "postgres://nobody@127.0.0.1:1/none", 1) // never connected to
	tests := []struct {
		cfg   queue.Config
		field string
	}{
		{queue.Config{Schema: `x"; drop table y; --` + strings.Repeat("x", 60)}, "Schema"},
		{queue.Config{Schema: "pg_catalog"}, "Schema"},
		{queue.Config{MaxAttempts: -1}, "MaxAttempts"},
		{queue.Config{RetryBase: time.Microsecond}, "RetryBase"},
		{queue.Config{RetryBase: time.Minute, RetryMax: time.Second}, "RetryMax"},
		{queue.Config{OpTimeout: time.Millisecond}, "OpTimeout"},
		{queue.Config{DoneRetention: time.Second}, "DoneRetention"},
		{queue.Config{KeyRetention: time.Second}, "KeyRetention"},
		{queue.Config{PruneDuty: -0.5}, "PruneDuty"},
		{queue.Config{PruneDuty: 1.5}, "PruneDuty"},
		{queue.Config{PruneDuty: math.NaN()}, "PruneDuty"},
	}
	for _, tt := range tests {
		_, err := queue.New(pool, &tt.cfg)
		var ae *queue.ArgumentError
		require.ErrorAs(t, err, &ae, "%+v", tt.cfg)
		require.Equal(t, tt.field, ae.Field)
		require.ErrorIs(t, err, queue.ErrInvalid)
	}
	c, err := queue.New(pool, nil)
	require.NoError(t, err, "nil config means defaults")
	require.NoError(t, c.Close())
	require.NoError(t, c.Close(), "a second Close is fine")
	_, err = queue.New(nil, nil)
	require.ErrorIs(t, err, queue.ErrInvalid)
	_ = context.Background
}

// TestBulkEnqueueByCopy covers the COPY path of EnqueueMany (keyless,
// unscheduled chunks of at least 500 rows): every field round-trips, ids
// come back in input order, and idle runners are woken.
func TestBulkEnqueueByCopy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := testContext(t)
	started := make(chan int64, 1000)
	startRunner(t, e.client, queue.RunnerConfig{
		Queue: "copy-wake", Concurrency: 4, PollInterval: 10 * time.Second,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			started <- b.ID
			return nil
		},
	})

	const n = 700
	ps := make([]queue.EnqueueParams, n)
	for i := range ps {
		m := batch.Meta{URI: fmt.Sprintf("s3://b/%d", i), EventCount: int64(i), ByteSize: int64(i) * 10}
		if i%2 == 0 {
			m.PartitionKey = fmt.Sprint("p", i%7)
			m.Source = batch.Source{Topic: "t", Partition: int32(i % 3), Start: int64(i) * 10, End: int64(i)*10 + 10}
			m.Payload = []byte{byte(i), 0, 1}
		}
		ps[i] = queue.EnqueueParams{Queue: "copy", Meta: m, Priority: int16(i % 5), MaxAttempts: 1 + i%9, NoIdempotencyKey: true}
	}
	res, err := e.client.EnqueueMany(ctx, ps)
	require.NoError(t, err)
	require.Len(t, res, n)
	for _, i := range []int{0, 1, 2, 333, n - 1} {
		b, err := e.client.Get(ctx, res[i].ID)
		require.NoError(t, err)
		require.Equal(t, ps[i].Meta, b.Meta, "row %d", i)
		require.Equal(t, ps[i].Priority, b.Priority)
		require.Equal(t, ps[i].MaxAttempts, b.MaxAttempts)
		require.Empty(t, b.IdempotencyKey)
		require.Equal(t, batch.StateAvailable, b.State)
	}
	for i := 1; i < n; i++ {
		require.Greater(t, res[i].ID, res[i-1].ID, "ids follow input order")
	}
	require.Equal(t, n, e.count("WHERE queue = 'copy'"))

	// With polling at 10 s, only the NOTIFY sent after the COPY wakes the runner.
	wake := make([]queue.EnqueueParams, 600)
	for i := range wake {
		wake[i] = queue.EnqueueParams{Queue: "copy-wake", Meta: meta(i)}
	}
	t0 := time.Now()
	_, err = e.client.EnqueueMany(ctx, wake)
	require.NoError(t, err)
	select {
	case <-started:
		require.Less(t, time.Since(t0), 2*time.Second)
	case <-time.After(5 * time.Second):
		t.Fatal("no runner woke up after a COPY enqueue")
	}
}
