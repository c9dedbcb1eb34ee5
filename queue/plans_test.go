package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

// statementLog records every statement a pool runs, with the arguments of
// its last run: what a test replays under EXPLAIN.
type statementLog struct {
	mu    sync.Mutex
	order []string
	args  map[string][]any
}

func (l *statementLog) record(sql string, args []any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.args[sql]; !ok {
		l.order = append(l.order, sql)
	}
	l.args[sql] = args
}

func (l *statementLog) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	l.record(d.SQL, d.Args)
	return ctx
}

func (l *statementLog) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (l *statementLog) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

func (l *statementLog) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	l.record(d.SQL, d.Args)
}

func (l *statementLog) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// TestStatementsSkipDeadEntries: after a backlog of 2.5 million batches
// drained while an old snapshot lived, every index still holds their dead
// entries, and ANALYZE says the table is all but empty. A plan that reads
// an index without a condition on it (the planner thinks that is cheap:
// "one row") then walks millions of entries for one batch; an
// acknowledgement took 300 ms that way, past a runner's round-trip timeout,
// again and again, until the batch's lease expired and it ran twice. Every
// statement the client's operations run is replayed under EXPLAIN ANALYZE
// (as a custom plan and as a generic one, in a transaction rolled back),
// and none may read more than a tenth of the dead entries' buffers, but
// for the few that read from the head of an index by design.
//
// Not parallel: its 2.5 million rows would load the machine under the
// parallel tests (the dead-entries test among them, whose round trips have
// 100 ms).
func TestStatementsSkipDeadEntries(t *testing.T) {
	url := pgtest.SharedURL(t)
	schema := pgtest.NewSchema(t, url)
	log := &statementLog{args: map[string][]any{}}
	pcfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	pcfg.MaxConns = 8
	pcfg.ConnConfig.Tracer = log
	traced, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	require.NoError(t, err)
	t.Cleanup(traced.Close)
	pool := newPool(t, url, 4)
	m, err := migrations.New(pool, &migrations.Config{Schema: schema})
	require.NoError(t, err)
	ctx := testContext(t)
	_, err = m.Up(ctx)
	require.NoError(t, err)
	e := &env{t: t, url: url, schema: schema, pool: pool, client: newClient(t, traced, schema, nil)}
	c := e.client

	const dead = 2_500_000
	e.exec(`INSERT INTO `+e.q("batch")+` (queue, max_attempts, run_at)
		SELECT 'work', 1, now() - interval '30 minutes' + g * interval '500 microseconds' FROM generate_series(1, $1::int) g`, dead)
	e.holdSnapshot(ctx)
	e.exec(`UPDATE ` + e.q("batch") + ` SET state = 'running', attempt = 1, lease_token = 1, lease_owner = 'gone',
		lease_expires_at = run_at WHERE queue = 'work'`)
	e.exec(`DELETE FROM ` + e.q("batch") + ` WHERE queue = 'work'`)
	e.exec(`ANALYZE ` + e.q("batch"))
	var pkeyBlocks int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_relation_size($1::text::regclass) / current_setting('block_size')::int8`,
		pgx.Identifier{schema, "batch_pkey"}.Sanitize()).Scan(&pkeyBlocks))
	t.Logf("primary key: %d blocks", pkeyBlocks)

	// Every operation of the client's API, on batches enqueued since.
	ps := make([]queue.EnqueueParams, 12)
	for i := range ps {
		ps[i] = queue.EnqueueParams{Queue: "work", Meta: meta(i), MaxAttempts: 2}
		if i%2 == 0 {
			ps[i].IdempotencyKey = "k" + string(rune('a'+i))
		}
	}
	_, err = c.EnqueueMany(ctx, ps)
	require.NoError(t, err)
	_, err = c.Enqueue(ctx, queue.EnqueueParams{Queue: "work", Meta: meta(99), IdempotencyKey: "ka"}) // a duplicate
	require.NoError(t, err)
	bs, err := c.Claim(ctx, queue.ClaimParams{Queue: "work", Limit: 12, Lease: time.Minute})
	require.NoError(t, err)
	require.Len(t, bs, 12)
	ref := func(i int) queue.Ref { return queue.Ref{ID: bs[i].ID, Token: bs[i].Lease.Token} }
	require.NoError(t, c.Extend(ctx, ref(0), time.Minute))
	_, err = c.ExtendMany(ctx, []queue.Ref{ref(0), ref(1)}, time.Minute)
	require.NoError(t, err)
	require.NoError(t, c.Complete(ctx, ref(0)))
	_, err = c.CompleteMany(ctx, []queue.Ref{ref(1), ref(0)}) // ref(0) again: a repeat
	require.NoError(t, err)
	_, err = c.Fail(ctx, ref(2), errors.New("retry later"))
	require.NoError(t, err)
	_, err = c.Fail(ctx, ref(3), queue.Permanent(errors.New("bad batch")))
	require.NoError(t, err)
	_, err = c.FailMany(ctx, []queue.Failure{{Ref: ref(4), Err: queue.Permanent(errors.New("bad"))}})
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx, ref(5)))
	_, err = c.ReleaseMany(ctx, []queue.Ref{ref(6)})
	require.NoError(t, err)
	_, err = c.ReassertCompleted(ctx, []queue.Completion{
		{Ref: ref(7), CreatedAt: bs[7].CreatedAt, Queue: "work", Key: bs[7].IdempotencyKey, Attempt: 1},
		{Ref: queue.Ref{ID: 1, Token: 5}, CreatedAt: time.Now(), Queue: "work", Key: "gone-key", Attempt: 1},
	})
	require.NoError(t, err)
	_, err = c.Get(ctx, bs[8].ID)
	require.NoError(t, err)
	_, err = c.Completed(ctx, bs[0].ID)
	require.NoError(t, err)
	_, err = c.ListDead(ctx, "work", 0, 10)
	require.NoError(t, err)
	_, err = c.RequeueDead(ctx, "work", []int64{bs[3].ID})
	require.NoError(t, err)
	_, err = c.Fail(ctx, ref(9), queue.Permanent(errors.New("bad")))
	require.NoError(t, err)
	_, err = c.DeleteDead(ctx, "work", []int64{bs[9].ID})
	require.NoError(t, err)
	_, err = c.ReleaseOwner(ctx, "work", bs[10].Lease.Owner)
	require.NoError(t, err)
	require.NoError(t, c.Pause(ctx, "work"))
	_, err = c.Paused(ctx, "work")
	require.NoError(t, err)
	require.NoError(t, c.Resume(ctx, "work"))
	_, _, err = c.ReclaimExpired(ctx, "work")
	require.NoError(t, err)
	// And a runner's: claims from its floor, acknowledgements, reclaims.
	var handled atomic.Int64
	r := startRunner(t, c, queue.RunnerConfig{Queue: "work", Concurrency: 4, ReclaimInterval: 100 * time.Millisecond,
		Handler: func(ctx context.Context, b *batch.Batch) error {
			handled.Add(1)
			return nil
		}})
	enqueueN(t, c, "work", 20)
	waitFor(t, time.Minute, "the runner handled 20 batches", func() bool { return handled.Load() >= 20 })
	require.NoError(t, r.Stop(ctx))

	// By design these read from the head of an index: the claim without a
	// floor (Client.Claim; runners claim from a floor), and the operators'
	// listings, counts and ReleaseOwner (it reads every running lease: no
	// index serves an owner).
	// A slice of the sweep below a runner's floor reads a bounded part of
	// that region by design (see sweep).
	byDesign := map[string]bool{queue.SliceStatement(c): true}
	full, _ := queue.ClaimStatements(c)
	byDesign[full] = true
	for _, s := range queue.HeadStatements(c) {
		byDesign[s] = true
	}
	// Runners reclaim what expired since their last reclaim: replay the
	// statement that way.
	reclaim := queue.ReclaimStatement(c)
	require.Contains(t, log.args, reclaim)
	log.args[reclaim] = []any{"work", 1000, (10 * time.Second).Microseconds(), []int64{}, []int64{}, int64(0)}

	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	limit := pkeyBlocks / 10
	checked := 0
	for _, sql := range log.order {
		verb := strings.ToUpper(strings.Fields(sql)[0])
		if verb != "SELECT" && verb != "WITH" && verb != "UPDATE" && verb != "DELETE" && verb != "INSERT" {
			continue
		}
		if byDesign[sql] {
			continue
		}
		for _, mode := range []string{"auto", "force_generic_plan"} {
			blocks, plan := explainBlocks(ctx, t, conn.Conn(), mode, sql, log.args[sql])
			checked++
			if blocks > limit {
				t.Errorf("%s plan read %d blocks (limit %d):\n%s\n%s", mode, blocks, limit, sql, plan)
			}
		}
	}
	t.Logf("%d statements checked", checked/2)
	require.Greater(t, checked/2, 15)
}

// explainBlocks runs sql under EXPLAIN ANALYZE with the given
// plan_cache_mode, in a transaction it rolls back, and returns the shared
// buffers it read (hit or not) and the plan.
func explainBlocks(ctx context.Context, t *testing.T, conn *pgx.Conn, mode, sql string, args []any) (int64, string) {
	t.Helper()
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, "SET LOCAL plan_cache_mode = "+mode)
	require.NoError(t, err)
	var out []byte
	require.NoError(t, tx.QueryRow(ctx, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "+sql, args...).Scan(&out), sql)
	var plans []struct {
		Plan struct {
			Hit  int64 `json:"Shared Hit Blocks"`
			Read int64 `json:"Shared Read Blocks"`
		} `json:"Plan"`
	}
	require.NoError(t, json.Unmarshal(out, &plans))
	require.Len(t, plans, 1)
	return plans[0].Plan.Hit + plans[0].Plan.Read, string(out)
}
