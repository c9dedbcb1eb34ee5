package queue_test

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/queue"
)

// requireArg asserts an *ArgumentError of op naming field.
func requireArg(t *testing.T, err error, op, field string) *queue.ArgumentError {
	t.Helper()
	require.ErrorIs(t, err, queue.ErrInvalid)
	var ae *queue.ArgumentError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, op, ae.Op)
	require.Equal(t, field, ae.Field)
	return ae
}

// row is what the table holds for one batch, for exact assertions.
type row struct {
	State   string
	Attempt int
	Token   *int64
	LastErr *string
}

func (e *env) row(id int64) row {
	e.t.Helper()
	var r row
	require.NoError(e.t, e.pool.QueryRow(context.Background(),
		"SELECT state, attempt, lease_token, last_error FROM "+e.q("batch")+" WHERE id = $1", id).
		Scan(&r.State, &r.Attempt, &r.Token, &r.LastErr))
	return r
}

func (e *env) keys() int {
	e.t.Helper()
	var n int
	require.NoError(e.t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+e.q("batch_key_digest")).Scan(&n))
	return n
}

// TestBadInputs runs the bad-input table of the README against a real
// server: each case gets the typed error naming the field (and index), and
// the database holds exactly what it held before.
func TestBadInputs(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	c := e.client
	good := queue.EnqueueParams{Queue: "edge", Meta: meta(1)}
	with := func(f func(p *queue.EnqueueParams)) queue.EnqueueParams {
		p := good
		f(&p)
		return p
	}
	cases := []struct {
		name  string
		p     queue.EnqueueParams
		field string
	}{
		{"queue of spaces only", with(func(p *queue.EnqueueParams) { p.Queue = "   " }), "Queue"},
		{"queue with a trailing space", with(func(p *queue.EnqueueParams) { p.Queue = "edge " }), "Queue"},
		{"queue with a zero-width space", with(func(p *queue.EnqueueParams) { p.Queue = "ed\u200bge" }), "Queue"},
		{"queue with a no-break space", with(func(p *queue.EnqueueParams) { p.Queue = "\u00a0" }), "Queue"},
		{"queue with a byte order mark", with(func(p *queue.EnqueueParams) { p.Queue = "\ufeffedge" }), "Queue"},
		{"queue with invalid UTF-8", with(func(p *queue.EnqueueParams) { p.Queue = "ed\xffge" }), "Queue"},
		{"RunAt in year 586500 (pgx overflow)", with(func(p *queue.EnqueueParams) {
			p.RunAt = time.Date(586500, 1, 1, 0, 0, 0, 0, time.UTC)
		}), "RunAt"},
		{"RunAt after PostgreSQL's range", with(func(p *queue.EnqueueParams) { p.RunAt = queue.MaxRunAt.Add(time.Microsecond) }), "RunAt"},
		{"RunAt before PostgreSQL's range", with(func(p *queue.EnqueueParams) { p.RunAt = queue.MinRunAt.Add(-time.Microsecond) }), "RunAt"},
		{"RunAt year 300000", with(func(p *queue.EnqueueParams) { p.RunAt = time.Date(300000, 1, 1, 0, 0, 0, 0, time.UTC) }), "RunAt"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.p.IdempotencyKey = "k-" + tc.name
			_, err := c.Enqueue(ctx, tc.p)
			requireArg(t, err, "enqueue", tc.field)
			// In a bulk call the index is named and nothing is written.
			_, err = c.EnqueueMany(ctx, []queue.EnqueueParams{good, good, tc.p})
			requireArg(t, err, "enqueue", "[2]."+tc.field)
			require.Zero(t, e.count(""), "nothing written")
			require.Zero(t, e.keys(), "no key written")
		})
	}

	t.Run("claim Owner with invalid UTF-8", func(t *testing.T) {
		res, err := c.Enqueue(ctx, good)
		require.NoError(t, err)
		t.Cleanup(func() { e.exec("DELETE FROM " + e.q("batch")) })
		_, err = c.Claim(ctx, queue.ClaimParams{Queue: "edge", Limit: 1, Lease: time.Minute, Owner: "w\xff"})
		requireArg(t, err, "claim", "Owner")
		require.Equal(t, row{State: "available"}, e.row(res.ID), "not claimed, no attempt")
	})

	t.Run("typed nil pool", func(t *testing.T) {
		var pool *pgxpool.Pool
		_, err := queue.New(pool, nil)
		requireArg(t, err, "new", "db")
		require.Contains(t, err.Error(), "*pgxpool.Pool")
	})
}

// RunAt at both ends of PostgreSQL's range is stored exactly.
func TestRunAtRangeBoundsStored(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	for _, at := range []time.Time{queue.MinRunAt, queue.MaxRunAt} {
		res, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "edge", Meta: meta(1), RunAt: at})
		require.NoError(t, err)
		b, err := e.client.Get(ctx, res.ID)
		require.NoError(t, err)
		require.True(t, at.Equal(b.RunAt), "stored %s for %s", b.RunAt, at)
	}
}

// A batch runnable for centuries reports MaxOldestAge, not a negative age.
func TestStatsOldestAgeDoesNotOverflow(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	_, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "old", Meta: meta(1),
		RunAt: time.Date(1500, 1, 1, 0, 0, 0, 0, time.UTC)})
	require.NoError(t, err)
	st, err := e.client.Stats(ctx, "old")
	require.NoError(t, err)
	require.Len(t, st, 1)
	require.Equal(t, int64(1), st[0].Available)
	require.Equal(t, queue.MaxOldestAge, st[0].OldestAge)
}

// RequeueDead is all or nothing and says which ids are not dead.
func TestRequeueDeadNotFound(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	c := e.client
	ids := enqueueN(t, c, "rq", 3)
	e.exec("UPDATE "+e.q("batch")+" SET state = 'dead', attempt = 3, last_error = 'boom' WHERE id = ANY ($1)", ids[:2])

	n, err := c.RequeueDead(ctx, "rq", []int64{ids[0], ids[2], 999999})
	require.ErrorIs(t, err, queue.ErrNotFound)
	require.Zero(t, n)
	require.Contains(t, err.Error(), "999999")
	require.Equal(t, "dead", e.row(ids[0]).State, "nothing requeued")
	require.Equal(t, 3, e.row(ids[0]).Attempt)
	require.Equal(t, "available", e.row(ids[2]).State)

	_, err = c.RequeueDead(ctx, "other", ids[:1])
	require.ErrorIs(t, err, queue.ErrNotFound, "a dead batch of another queue")

	n, err = c.RequeueDead(ctx, "rq", []int64{ids[0], ids[1], ids[0]})
	require.NoError(t, err)
	require.Equal(t, 2, n)
	for _, id := range ids[:2] {
		r := e.row(id)
		require.Equal(t, "available", r.State)
		require.Zero(t, r.Attempt)
		require.Equal(t, "boom", *r.LastErr)
	}
	n, err = c.RequeueAllDead(ctx, "rq")
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestTxTwins(t *testing.T) {
	e := newEnv(t, &queue.Config{MaxAttempts: 5})
	ctx := testContext(t)
	c := e.client
	claim := func() batch.Batch {
		t.Helper()
		bs, err := c.Claim(ctx, queue.ClaimParams{Queue: "tx", Limit: 1, Lease: time.Minute})
		require.NoError(t, err)
		require.Len(t, bs, 1)
		return bs[0]
	}
	inTx := func(commit bool, f func(tx pgx.Tx)) {
		t.Helper()
		tx, err := e.pool.Begin(ctx)
		require.NoError(t, err)
		f(tx)
		if commit {
			require.NoError(t, tx.Commit(ctx))
		} else {
			require.NoError(t, tx.Rollback(ctx))
		}
	}
	id := enqueueN(t, c, "tx", 1)[0]

	// FailTx: nothing until commit.
	b := claim()
	inTx(false, func(tx pgx.Tx) {
		dead, err := c.FailTx(ctx, tx, queue.RefOf(&b), errors.New("rolled back"))
		require.NoError(t, err)
		require.False(t, dead)
	})
	r := e.row(id)
	require.Equal(t, "running", r.State)
	require.Equal(t, 1, r.Attempt)
	inTx(true, func(tx pgx.Tx) {
		_, err := c.FailTx(ctx, tx, queue.RefOf(&b), errors.New("first"))
		require.NoError(t, err)
	})
	r = e.row(id)
	require.Equal(t, "available", r.State)
	require.Equal(t, "first", *r.LastErr)
	require.Nil(t, r.Token)
	inTx(false, func(tx pgx.Tx) {
		_, err := c.FailTx(ctx, tx, queue.RefOf(&b), errors.New("again"))
		require.ErrorIs(t, err, queue.ErrLeaseLost)
	})

	// ReleaseTx refunds the attempt at commit.
	e.exec("UPDATE " + e.q("batch") + " SET run_at = now()")
	b = claim()
	require.Equal(t, 2, b.Attempt)
	inTx(true, func(tx pgx.Tx) { require.NoError(t, c.ReleaseTx(ctx, tx, queue.RefOf(&b))) })
	r = e.row(id)
	require.Equal(t, "available", r.State)
	require.Equal(t, 1, r.Attempt)
	inTx(true, func(tx pgx.Tx) { require.ErrorIs(t, c.ReleaseTx(ctx, tx, queue.RefOf(&b)), queue.ErrLeaseLost) })

	// PauseTx/ResumeTx take effect at commit.
	inTx(false, func(tx pgx.Tx) { require.NoError(t, c.PauseTx(ctx, tx, "tx")) })
	paused, err := c.Paused(ctx, "tx")
	require.NoError(t, err)
	require.False(t, paused)
	inTx(true, func(tx pgx.Tx) { require.NoError(t, c.PauseTx(ctx, tx, "tx")) })
	paused, err = c.Paused(ctx, "tx")
	require.NoError(t, err)
	require.True(t, paused)
	inTx(true, func(tx pgx.Tx) { require.NoError(t, c.ResumeTx(ctx, tx, "tx")) })
	paused, err = c.Paused(ctx, "tx")
	require.NoError(t, err)
	require.False(t, paused)

	// RequeueDeadTx.
	e.exec("UPDATE "+e.q("batch")+" SET state = 'dead' WHERE id = $1", id)
	inTx(false, func(tx pgx.Tx) {
		n, err := c.RequeueDeadTx(ctx, tx, "tx", []int64{id})
		require.NoError(t, err)
		require.Equal(t, 1, n)
	})
	require.Equal(t, "dead", e.row(id).State)
	inTx(true, func(tx pgx.Tx) {
		n, err := c.RequeueDeadTx(ctx, tx, "tx", []int64{id})
		require.NoError(t, err)
		require.Equal(t, 1, n)
	})
	r = e.row(id)
	require.Equal(t, "available", r.State)
	require.Zero(t, r.Attempt)

	// nil tx.
	_, err = c.FailTx(ctx, nil, queue.RefOf(&b), errors.New("x"))
	requireArg(t, err, "fail", "tx")
	requireArg(t, c.ReleaseTx(ctx, nil, queue.RefOf(&b)), "release", "tx")
	requireArg(t, c.PauseTx(ctx, nil, "tx"), "pause", "tx")
	requireArg(t, c.ResumeTx(ctx, nil, "tx"), "resume", "tx")
	_, err = c.RequeueDeadTx(ctx, nil, "tx", []int64{id})
	requireArg(t, err, "requeue", "tx")
}

// lossyDB runs the first statement that matches on the real pool, reads its
// whole answer (so it commits), and then reports a broken connection, as
// when the connection dies after the commit and before the answer arrives.
type lossyDB struct {
	*pgxpool.Pool
	match func(sql string) bool
	hits  atomic.Int32
}

func (d *lossyDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if d.match(sql) && d.hits.Add(1) == 1 {
		rows, err := d.Pool.Query(ctx, sql, args...)
		if err != nil {
			return nil, err
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		return nil, io.ErrUnexpectedEOF
	}
	return d.Pool.Query(ctx, sql, args...)
}

// SendBatch loses the answer of the first batch that holds a matching
// statement, after the whole batch ran.
func (d *lossyDB) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if slices.ContainsFunc(b.QueuedQueries, func(q *pgx.QueuedQuery) bool { return d.match(q.SQL) }) && d.hits.Add(1) == 1 {
		if err := d.Pool.SendBatch(ctx, b).Close(); err != nil {
			return lostResults{err}
		}
		return lostResults{io.ErrUnexpectedEOF}
	}
	return d.Pool.SendBatch(ctx, b)
}

// lostResults are the results of a batch whose answer did not arrive.
type lostResults struct{ err error }

func (l lostResults) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, l.err }
func (l lostResults) Query() (pgx.Rows, error)         { return nil, l.err }
func (l lostResults) QueryRow() pgx.Row                { return lostRow(l) }
func (l lostResults) Close() error                     { return l.err }
func (l lostResults) Tx() pgx.Tx                       { return nil }

type lostRow struct{ err error }

func (l lostRow) Scan(...any) error { return l.err }

// A keyed enqueue repeated after its first attempt committed reports its
// own write as not a duplicate; a key older than the call still is one.
func TestEnqueueRetryAfterCommitIsNotDuplicate(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	_, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "dup", Meta: meta(0), IdempotencyKey: "old"})
	require.NoError(t, err)
	e.exec("UPDATE " + e.q("batch_key_digest") + " SET created_at = now() - interval '1 hour'")

	db := &lossyDB{Pool: e.pool, match: func(sql string) bool {
		return strings.Contains(sql, "INSERT INTO") && strings.Contains(sql, "batch_key_digest")
	}}
	c := newClient(t, db, e.schema, nil)
	res, err := c.EnqueueMany(ctx, []queue.EnqueueParams{
		{Queue: "dup", Meta: meta(1), IdempotencyKey: "new"},
		{Queue: "dup", Meta: meta(2), IdempotencyKey: "old"},
	})
	require.NoError(t, err)
	require.Equal(t, int32(2), db.hits.Load(), "the first attempt was repeated")
	require.False(t, res[0].Duplicate, "the call's own write")
	require.True(t, res[1].Duplicate, "a key from before the call")
	require.Equal(t, 2, e.count(""), "one batch per key")
	var keyed int64
	require.NoError(t, e.pool.QueryRow(ctx, "SELECT id FROM "+e.q("batch")+" WHERE idempotency_key = 'new'").Scan(&keyed))
	require.Equal(t, keyed, res[0].ID)
}

// A claim whose answer was lost does not count an attempt: the batch is
// released at once, so a MaxAttempts 1 batch is not dead-lettered unrun.
func TestClaimWithLostAnswerRefundsAttempt(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testContext(t)
	res, err := e.client.Enqueue(ctx, queue.EnqueueParams{Queue: "lost", Meta: meta(1), MaxAttempts: 1})
	require.NoError(t, err)
	db := &lossyDB{Pool: e.pool, match: func(sql string) bool {
		return strings.Contains(sql, "FOR UPDATE SKIP LOCKED") && strings.Contains(sql, "lease_owner = $4")
	}}
	c := newClient(t, db, e.schema, nil)
	bs, err := c.Claim(ctx, queue.ClaimParams{Queue: "lost", Limit: 10, Lease: time.Minute})
	require.NoError(t, err)
	require.GreaterOrEqual(t, db.hits.Load(), int32(2))
	if len(bs) == 0 {
		require.Equal(t, row{State: "available"}, e.row(res.ID), "released, attempt refunded")
		bs, err = c.Claim(ctx, queue.ClaimParams{Queue: "lost", Limit: 10, Lease: time.Minute})
		require.NoError(t, err)
	}
	require.Len(t, bs, 1)
	require.Equal(t, 1, bs[0].Attempt, "the lost claim did not count")
	dead, err := c.Fail(ctx, queue.RefOf(&bs[0]), errors.New("ran once"))
	require.NoError(t, err)
	require.True(t, dead, "its one attempt was a real run")
}

// NoRetry makes one attempt: a refused connection fails at once.
func TestNoRetry(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens there now
	pcfg, err := pgxpool.ParseConfig("postgres://nobody@" + addr + "/x?connect_timeout=5")
	require.NoError(t, err)
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	c, err := queue.New(pool, &queue.Config{RetryWindow: queue.NoRetry})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	start := time.Now()
	_, err = c.Enqueue(testContext(t), queue.EnqueueParams{Queue: "q", Meta: meta(1), IdempotencyKey: "k"})
	require.Error(t, err)
	require.Less(t, time.Since(start), 10*time.Second, "no retries for RetryWindowDefault (30s)")

	// The start-up check does not blame migrations for a refused connection.
	err = c.CheckTablesForTest(testContext(t))
	require.Error(t, err)
	require.NotContains(t, err.Error(), "migrations")
	var connErr *pgconn.ConnectError
	require.ErrorAs(t, err, &connErr)
}

// A schema without the tables is blamed on the migrations.
func TestCheckTablesBlamesMigrationsOnlyForMissingTables(t *testing.T) {
	url := pgtest.SharedURL(t)
	pool := newPool(t, url, 2)
	c := newClient(t, pool, "no_such_schema_edge", nil)
	err := c.CheckTablesForTest(testContext(t))
	require.Error(t, err)
	require.Contains(t, err.Error(), "migrations")
}
