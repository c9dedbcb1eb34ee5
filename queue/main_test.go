package queue_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopBenchServer()
	pgtest.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// env is one test's private queue: its own schema on the shared server.
type env struct {
	t      testing.TB
	url    string
	schema string
	pool   *pgxpool.Pool
	client *queue.Client
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newEnv migrates a fresh schema and returns a Client on it. cfg may be nil;
// its Schema and Logger are filled in.
func newEnv(t testing.TB, cfg *queue.Config) *env {
	t.Helper()
	url := pgtest.SharedURL(t)
	schema := pgtest.NewSchema(t, url)
	pool := newPool(t, url, 20)
	m, err := migrations.New(pool, &migrations.Config{Schema: schema})
	require.NoError(t, err)
	_, err = m.Up(testContext(t))
	require.NoError(t, err)
	return &env{t: t, url: url, schema: schema, pool: pool, client: newClient(t, pool, schema, cfg)}
}

func newPool(t testing.TB, url string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	pcfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	pcfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

func newClient(t testing.TB, db queue.DB, schema string, cfg *queue.Config) *queue.Client {
	t.Helper()
	c := queue.Config{}
	if cfg != nil {
		c = *cfg
	}
	c.Schema = schema
	if c.Logger == nil {
		c.Logger = testLogger(t)
	}
	client, err := queue.New(db, &c)
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func testLogger(t testing.TB) *zap.Logger {
	if os.Getenv("SKIPLOCK_TEST_LOG") != "" {
		return zaptest.NewLogger(t)
	}
	return zap.NewNop()
}

// q returns the schema-qualified name of a table, for assertions.
func (e *env) q(table string) string {
	return pgx.Identifier{e.schema, table}.Sanitize()
}

func (e *env) count(where string, args ...any) int {
	e.t.Helper()
	var n int
	require.NoError(e.t, e.pool.QueryRow(context.Background(),
		"SELECT count(*) FROM "+e.q("batch")+" "+where, args...).Scan(&n))
	return n
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	_, err := e.pool.Exec(context.Background(), sql, args...)
	require.NoError(e.t, err)
}

func meta(i int) batch.Meta {
	return batch.Meta{URI: fmt.Sprintf("s3://bucket/events/%06d.ndjson", i), EventCount: 100, ByteSize: 4096}
}

func enqueueN(t testing.TB, c *queue.Client, queueName string, n int) []int64 {
	t.Helper()
	ps := make([]queue.EnqueueParams, n)
	for i := range ps {
		ps[i] = queue.EnqueueParams{Queue: queueName, Meta: meta(i)}
	}
	res, err := c.EnqueueMany(testContext(t), ps)
	require.NoError(t, err)
	ids := make([]int64, n)
	for i, r := range res {
		require.False(t, r.Duplicate)
		ids[i] = r.ID
	}
	return ids
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	pgtest.WaitFor(t, d, what, cond)
}
