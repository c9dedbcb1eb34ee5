package migrations_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func newPool(t *testing.T, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(pgtest.SharedURL(t))
	require.NoError(t, err)
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func versions(st []migrations.Status, applied bool) []int {
	var out []int
	for _, s := range st {
		if s.Applied == applied {
			out = append(out, s.Version)
		}
	}
	return out
}

func allVersions() []int {
	var out []int
	for _, m := range migrations.All() {
		out = append(out, m.Version)
	}
	return out
}

func TestUpDownStatus(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	pool := newPool(t, 4)
	schema := pgtest.NewSchema(t, pgtest.SharedURL(t))
	m, err := migrations.New(pool, &migrations.Config{Schema: schema})
	require.NoError(t, err)

	st, err := m.Status(ctx)
	require.NoError(t, err)
	require.Empty(t, versions(st, true))
	require.Equal(t, allVersions(), versions(st, false))

	res, err := m.Up(ctx)
	require.NoError(t, err)
	require.Equal(t, allVersions(), res.Applied)
	require.Equal(t, migrations.Latest(), res.Version)
	require.ElementsMatch(t, []string{"batch", "queue_setting", "batch_done", "batch_key", "batch_key_digest", "skiplock_migration"}, tables(t, pool, schema))

	res, err = m.Up(ctx)
	require.NoError(t, err)
	require.Empty(t, res.Applied, "a second Up must apply nothing")

	st, err = m.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, allVersions(), versions(st, true))
	for _, s := range st {
		require.True(t, s.Known)
		require.False(t, s.AppliedAt.IsZero())
	}

	res, err = m.Down(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, []int{4, 3}, res.Reverted)
	require.Equal(t, 2, res.Version)
	require.ElementsMatch(t, []string{"batch", "queue_setting", "batch_done", "batch_key", "skiplock_migration"}, tables(t, pool, schema))

	res, err = m.Down(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, []int{2}, res.Reverted)
	require.Equal(t, 1, res.Version)
	require.ElementsMatch(t, []string{"batch", "queue_setting", "skiplock_migration"}, tables(t, pool, schema))

	res, err = m.Down(ctx, 0)
	require.NoError(t, err)
	require.Equal(t, []int{1}, res.Reverted)
	require.Equal(t, 0, res.Version)
	require.ElementsMatch(t, []string{"skiplock_migration"}, tables(t, pool, schema))

	v, err := m.Version(ctx)
	require.NoError(t, err)
	require.Zero(t, v)

	_, err = m.Down(ctx, migrations.Latest()+1)
	require.Error(t, err)
}

// TestFullPagesIsOnline applies 0003 to a schema at version 2 that holds
// batches, while another transaction has written to the batch table and
// not committed (an enqueue in flight): the migration must neither wait for
// it nor rewrite the table, and the fillfactor must change.
func TestFullPagesIsOnline(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	pool := newPool(t, 4)
	schema := pgtest.NewSchema(t, pgtest.SharedURL(t))
	m, err := migrations.New(pool, &migrations.Config{Schema: schema})
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)
	_, err = m.Down(ctx, 2)
	require.NoError(t, err)
	batch := pgx.Identifier{schema, "batch"}.Sanitize()
	options := func() []string {
		var o []string
		require.NoError(t, pool.QueryRow(ctx, `SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = $1::regclass`, batch).Scan(&o))
		return o
	}
	require.Contains(t, options(), "fillfactor=85")
	_, err = pool.Exec(ctx, `INSERT INTO `+batch+` (queue, max_attempts) SELECT 'q', 3 FROM generate_series(1, 1000)`)
	require.NoError(t, err)
	var node uint32
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_relation_filenode($1::regclass)`, batch).Scan(&node))

	inflight, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = inflight.Rollback(context.Background()) }()
	_, err = inflight.Exec(ctx, `INSERT INTO `+batch+` (queue, max_attempts) VALUES ('q', 3)`)
	require.NoError(t, err)

	// A migration that had to wait for the open transaction would run into
	// this deadline instead of finishing.
	upCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := m.Up(upCtx)
	require.NoError(t, err, "0003 and 0004 must not wait for an open write to the batch table")
	require.Equal(t, []int{3, 4}, res.Applied)
	require.NoError(t, inflight.Commit(ctx))

	require.Contains(t, options(), "fillfactor=100")
	var after uint32
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_relation_filenode($1::regclass), (SELECT count(*) FROM `+batch+`)`, batch).Scan(&after, &n))
	require.Equal(t, node, after, "the table must not be rewritten")
	require.Equal(t, 1001, n)
}

func tables(t *testing.T, pool *pgxpool.Pool, schema string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(),
		`SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY 1`, schema)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

// TestConcurrentUp starts eight migrators at once on an empty schema, each on
// its own connection. Without the advisory lock two of them would both find a
// version missing and the second CREATE TABLE would fail.
// TestKeyDigest pins what 0004's key_digest computes, against SHA-256 in
// Go: every stored digest depends on it, so it may never change. Queue and
// key are split by a zero byte, so moving bytes between them changes it.
func TestKeyDigest(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	pool := newPool(t, 2)
	schema := pgtest.NewSchema(t, pgtest.SharedURL(t))
	m, err := migrations.New(pool, &migrations.Config{Schema: schema})
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)
	fn := pgx.Identifier{schema, "key_digest"}.Sanitize()
	for _, c := range []struct{ queue, key string }{
		{"orders", "src1:orders:3:100-200"},
		{"q", "k"}, {"qk", ""}, {"", "qk"},
		{"émoji ✓", "key with 'quotes' and \\ backslash"},
	} {
		var got [16]byte
		require.NoError(t, pool.QueryRow(ctx, `SELECT `+fn+`($1, $2)`, c.queue, c.key).Scan(&got))
		sum := sha256.Sum256([]byte(c.queue + "\x00" + c.key))
		require.Equal(t, sum[:16], got[:], "%q/%q", c.queue, c.key)
	}
}

// TestKeyDigestDown reverts 0004 with a queued keyed batch and a key whose
// batch is completed: the queued batch's key goes back to batch_key under
// its batch id (re-enqueueing it stays a duplicate), the other is dropped.
func TestKeyDigestDown(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	pool := newPool(t, 2)
	schema := pgtest.NewSchema(t, pgtest.SharedURL(t))
	m, err := migrations.New(pool, &migrations.Config{Schema: schema})
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)
	q := func(name string) string { return pgx.Identifier{schema, name}.Sanitize() }
	var queued int64
	require.NoError(t, pool.QueryRow(ctx, `WITH k AS (
    INSERT INTO `+q("batch_key_digest")+` (digest) VALUES (`+q("key_digest")+`('q', 'queued')) RETURNING batch_id)
INSERT INTO `+q("batch")+` (id, queue, idempotency_key, max_attempts) SELECT batch_id, 'q', 'queued', 3 FROM k RETURNING id`).Scan(&queued))
	_, err = pool.Exec(ctx, `INSERT INTO `+q("batch_key_digest")+` (digest) VALUES (`+q("key_digest")+`('q', 'completed'))`)
	require.NoError(t, err)

	res, err := m.Down(ctx, 3)
	require.NoError(t, err)
	require.Equal(t, []int{4}, res.Reverted)
	rows, err := pool.Query(ctx, `SELECT queue || '/' || idempotency_key || '/' || batch_id FROM `+q("batch_key"))
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{fmt.Sprintf("q/queued/%d", queued)}, got)
	require.NotContains(t, tables(t, pool, schema), "batch_key_digest")
}

func TestConcurrentUp(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	const n = 8
	schema := pgtest.NewSchema(t, pgtest.SharedURL(t))

	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		mu      sync.Mutex
		applied = map[int]int{}
		errs    []error
	)
	for i := 0; i < n; i++ {
		conn, err := pgx.Connect(ctx, pgtest.SharedURL(t))
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close(context.Background()) })
		m, err := migrations.New(conn, &migrations.Config{Schema: schema})
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, err := m.Up(ctx)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			for _, v := range res.Applied {
				applied[v]++
			}
		}()
	}
	close(start)
	wg.Wait()
	require.Empty(t, errs)
	for _, v := range allVersions() {
		require.Equal(t, 1, applied[v], "version %d applied %d times", v, applied[v])
	}

	pool := newPool(t, 2)
	var count int
	require.NoError(t, pool.QueryRow(ctx,
		fmt.Sprintf(`SELECT count(*) FROM %s.skiplock_migration`, pgx.Identifier{schema}.Sanitize())).Scan(&count))
	require.Equal(t, len(allVersions()), count)
}

// TestDownUpSameCatalog checks that reverting every version and applying
// them again gives back exactly the same tables, columns, defaults,
// constraints, indexes and storage options.
func TestDownUpSameCatalog(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	pool := newPool(t, 4)
	schema := pgtest.NewSchema(t, pgtest.SharedURL(t))
	m, err := migrations.New(pool, &migrations.Config{Schema: schema})
	require.NoError(t, err)

	_, err = m.Up(ctx)
	require.NoError(t, err)
	before := catalog(t, pool, schema)
	require.Greater(t, len(before), 40, "the catalog snapshot looks too small to compare")

	_, err = m.Down(ctx, 0)
	require.NoError(t, err)
	empty := catalog(t, pool, schema)
	require.NotEqual(t, before, empty)

	_, err = m.Up(ctx)
	require.NoError(t, err)
	require.Equal(t, before, catalog(t, pool, schema))

	// Partial down and up again.
	_, err = m.Down(ctx, 1)
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)
	require.Equal(t, before, catalog(t, pool, schema))
}

// catalog describes every object of a schema except the migrator's own
// version rows, one line per fact.
func catalog(t *testing.T, pool *pgxpool.Pool, schema string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
SELECT 'rel ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(array_to_string(c.reloptions, ','), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
UNION ALL
SELECT 'col ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
    || ' notnull=' || a.attnotnull || ' identity=' || a.attidentity::text
    || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = $1 AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
UNION ALL
SELECT 'con ' || c.relname || '.' || k.conname || ' ' || pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1
UNION ALL
SELECT 'idx ' || pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1
ORDER BY 1`, schema)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return lines
}

// TestHostileSchemaName uses a schema name that is an SQL injection attempt.
// It must be quoted, used literally, and the canary table must survive.
func TestHostileSchemaName(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	pool := newPool(t, 4)
	home := pgtest.NewSchema(t, pgtest.SharedURL(t))
	homeQ := pgx.Identifier{home}.Sanitize()
	_, err := pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s.canary (id int)`, homeQ))
	require.NoError(t, err)

	hostile := fmt.Sprintf(`x"; drop table %s.canary; --`, home)
	if len(hostile) > 63 {
		hostile = `x"; drop table canary; --`
	}
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{hostile}.Sanitize()+` CASCADE`)
	})
	m, err := migrations.New(pool, &migrations.Config{Schema: hostile})
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)

	require.Contains(t, tables(t, pool, home), "canary", "the hostile name was executed")
	require.Contains(t, tables(t, pool, hostile), "batch", "tables must be created in the schema named literally")
	st, err := m.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, allVersions(), versions(st, true))
	_, err = m.Down(ctx, 0)
	require.NoError(t, err)
	require.Contains(t, tables(t, pool, home), "canary")
}

func TestInvalidSchemaName(t *testing.T) {
	t.Parallel()
	for _, name := range []string{strings.Repeat("s", 64), strings.Repeat("s", 500), "pg_catalog", "a\x00b", "bad\xff"} {
		_, err := migrations.New(nopDB{}, &migrations.Config{Schema: name})
		require.ErrorIs(t, err, migrations.ErrInvalidSchema, "schema %q", name)
		require.Less(t, len(err.Error()), 200, "the error must not echo a long name in full")
	}
	m, err := migrations.New(nopDB{}, nil)
	require.NoError(t, err, "nil config means defaults")
	require.NotNil(t, m)
	_, err = migrations.New(nil, nil)
	require.Error(t, err)
}

// nopDB proves New does not touch the database: any use fails the test.
type nopDB struct{}

func (nopDB) Begin(context.Context) (pgx.Tx, error) {
	return nil, errors.New("nopDB: must not be used")
}

func TestDownRefusesUnknownVersion(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	pool := newPool(t, 4)
	schema := pgtest.NewSchema(t, pgtest.SharedURL(t))
	m, err := migrations.New(pool, &migrations.Config{Schema: schema})
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, fmt.Sprintf(`INSERT INTO %s.skiplock_migration (version, name) VALUES (999, 'from_the_future')`,
		pgx.Identifier{schema}.Sanitize()))
	require.NoError(t, err)

	_, err = m.Down(ctx, 0)
	require.ErrorIs(t, err, migrations.ErrUnknownVersion)
	require.Contains(t, tables(t, pool, schema), "batch", "a refused Down must change nothing")

	res, err := m.Up(ctx)
	require.NoError(t, err, "Up with a newer version present is a no-op")
	require.Empty(t, res.Applied)
	st, err := m.Status(ctx)
	require.NoError(t, err)
	last := st[len(st)-1]
	require.Equal(t, 999, last.Version)
	require.False(t, last.Known)
	require.True(t, last.Applied)
}

var migrateName = regexp.MustCompile(`^[0-9]+_[a-z0-9_]+\.(up|down)\.sql$`)
var gooseName = regexp.MustCompile(`^[0-9]{5}_[a-z0-9_]+\.sql$`)

// TestFilesForOtherTools applies the golang-migrate layout the way another
// tool would (plain statements under a search_path) and checks it produces
// the same catalog as the Migrator.
func TestFilesForOtherTools(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	pool := newPool(t, 4)

	entries, err := fs.ReadDir(migrations.FS, ".")
	require.NoError(t, err)
	require.Len(t, entries, 2*len(migrations.All()))
	for _, e := range entries {
		require.Regexp(t, migrateName, e.Name())
	}
	gooseEntries, err := fs.ReadDir(migrations.GooseFS(), ".")
	require.NoError(t, err)
	require.Len(t, gooseEntries, len(migrations.All()))
	for _, e := range gooseEntries {
		require.Regexp(t, gooseName, e.Name())
		body, err := fs.ReadFile(migrations.GooseFS(), e.Name())
		require.NoError(t, err)
		require.Less(t, strings.Index(string(body), "-- +goose Up"), strings.Index(string(body), "-- +goose Down"))
	}

	viaMigrator := pgtest.NewSchema(t, pgtest.SharedURL(t))
	m, err := migrations.New(pool, &migrations.Config{Schema: viaMigrator})
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)

	viaFiles := pgtest.NewSchema(t, pgtest.SharedURL(t))
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(ctx, "SET search_path TO "+pgx.Identifier{viaFiles}.Sanitize())
	require.NoError(t, err)
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".up.sql") {
			continue
		}
		body, err := fs.ReadFile(migrations.FS, e.Name())
		require.NoError(t, err)
		_, err = conn.Exec(ctx, string(body), pgx.QueryExecModeSimpleProtocol)
		require.NoError(t, err, e.Name())
	}
	_, err = conn.Exec(ctx, "RESET search_path")
	require.NoError(t, err)

	withoutVersions := func(lines []string) []string {
		var out []string
		for _, l := range lines {
			if !strings.Contains(l, "skiplock_migration") {
				out = append(out, l)
			}
		}
		return out
	}
	got := withoutVersions(catalog(t, pool, viaFiles))
	want := withoutVersions(catalog(t, pool, viaMigrator))
	require.NotEmpty(t, want)
	require.Equal(t, len(want), len(got))
	for i := range want {
		require.Equal(t, strings.ReplaceAll(want[i], viaMigrator, "S"), strings.ReplaceAll(got[i], viaFiles, "S"))
	}
}
