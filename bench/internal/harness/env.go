package harness

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/skiplock/skiplock/internal/benchsql"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

// Names the harness creates on the target server.
const (
	skiplockSchema = "skiplock_bench"
	riverSchema    = "river_bench"
	schemaComment  = "skiplock-bench: created by the bench harness; dropped and recreated by it"
	benchQueue     = "bench"
	riverKind      = "bench_batch"
	poolConns      = 48
)

// serverSettings are the throwaway server's settings on top of pgtest's
// (fsync on): the same as the queue package's benchmarks.
var serverSettings = map[string]string{
	"shared_buffers": "256MB",
	"max_wal_size":   "4GB",
}

// env is the server the single-node scenarios run on, with both systems'
// tables installed in their own schemas.
type env struct {
	srv   *pgtest.Server // nil with a DSN
	url   string
	pool  *pgxpool.Pool // skiplock's
	rpool *pgxpool.Pool // River's (a separate pool, so neither starves the other)

	client *queue.Client // skiplock client with NOTIFY on, for throughput and enqueue

	pgVersion string
	fsync     string
}

// riverArgs is the River job equivalent of a batch's metadata: the same
// fields the skiplock rows carry (URI, event count, byte size), plus a
// sequence number for latency.
type riverArgs struct {
	URI        string `json:"uri"`
	EventCount int64  `json:"event_count"`
	ByteSize   int64  `json:"byte_size"`
	Seq        int64  `json:"seq,omitempty"`
}

func (riverArgs) Kind() string { return riverKind }

// startEnv connects to dsn, or starts a throwaway server with fsync on
// when dsn is empty, and installs both systems' tables in fresh schemas.
func startEnv(ctx context.Context, dsn string, diag bool, prog *progress) (_ *env, err error) {
	e := &env{url: dsn}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if dsn == "" {
		prog.step("starting a throwaway PostgreSQL (fsync on)")
		settings := maps.Clone(serverSettings)
		if diag {
			maps.Copy(settings, diagSettings)
		}
		e.srv, err = pgtest.StartPrimary(ctx, &pgtest.Options{Fsync: true, Settings: settings})
		if err != nil {
			return nil, err
		}
		e.url = e.srv.ConnString("postgres")
	}
	if e.pool, err = newPool(ctx, e.url); err != nil {
		return nil, err
	}
	if e.rpool, err = newPool(ctx, e.url); err != nil {
		return nil, err
	}
	if err := e.pool.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('fsync')`).Scan(&e.pgVersion, &e.fsync); err != nil {
		return nil, fmt.Errorf("server version: %w", err)
	}
	for _, s := range []string{skiplockSchema, riverSchema} {
		if err := e.recreateSchema(ctx, s); err != nil {
			return nil, err
		}
	}
	m, err := migrations.New(e.pool, &migrations.Config{Schema: skiplockSchema})
	if err != nil {
		return nil, err
	}
	if _, err := m.Up(ctx); err != nil {
		return nil, fmt.Errorf("skiplock migrations: %w", err)
	}
	rm, err := rivermigrate.New(riverpgxv5.New(e.rpool), &rivermigrate.Config{Schema: riverSchema, Logger: quietLogger()})
	if err != nil {
		return nil, err
	}
	if _, err := rm.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return nil, fmt.Errorf("river migrations: %w", err)
	}
	if e.client, err = queue.New(e.pool, &queue.Config{Schema: skiplockSchema}); err != nil {
		return nil, err
	}
	return e, nil
}

func newPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, errors.New("parse the connection string: invalid (not shown)")
	}
	cfg.MaxConns = poolConns
	return pgxpool.NewWithConfig(ctx, cfg)
}

// recreateSchema drops and creates schema s, refusing to drop one that the
// harness did not create (it marks its schemas with a comment).
func (e *env) recreateSchema(ctx context.Context, s string) error {
	ident := pgx.Identifier{s}.Sanitize()
	var comment *string
	err := e.pool.QueryRow(ctx, `SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1`, s).Scan(&comment)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return err
	case comment == nil || *comment != schemaComment:
		return fmt.Errorf("schema %s exists and was not created by the bench harness: drop it or use another database", s)
	default:
		if _, err := e.pool.Exec(ctx, `DROP SCHEMA `+ident+` CASCADE`); err != nil {
			return err
		}
	}
	if _, err := e.pool.Exec(ctx, `CREATE SCHEMA `+ident); err != nil {
		return err
	}
	_, err = e.pool.Exec(ctx, `COMMENT ON SCHEMA `+ident+` IS '`+schemaComment+`'`)
	return err
}

func (e *env) close() {
	if e.client != nil {
		_ = e.client.Close()
	}
	if e.pool != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for _, s := range []string{skiplockSchema, riverSchema} {
			_, _ = e.pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{s}.Sanitize()+` CASCADE`)
		}
		cancel()
		e.pool.Close()
	}
	if e.rpool != nil {
		e.rpool.Close()
	}
	if e.srv != nil {
		_ = e.srv.Close()
	}
}

func (e *env) exec(ctx context.Context, sql string, args ...any) error {
	_, err := e.pool.Exec(ctx, sql, args...)
	return err
}

// qs and qr quote a table of skiplock's and River's schema.
func qs(table string) string { return pgx.Identifier{skiplockSchema, table}.Sanitize() }
func qr(table string) string { return pgx.Identifier{riverSchema, table}.Sanitize() }

// reset empties both systems' tables, so every measurement starts from the
// same state whichever system ran before.
func (e *env) reset(ctx context.Context) error {
	if err := e.exec(ctx, `TRUNCATE `+qs("batch")+`, `+qs("batch_done")+`, `+qs("batch_key")+`, `+qs("batch_key_digest")+`, `+qr("river_job")); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	return nil
}

// vacuum runs VACUUM ANALYZE on both systems' hot tables.
func (e *env) vacuum(ctx context.Context) error {
	for _, t := range []string{qs("batch"), qs("batch_done"), qr("river_job")} {
		if err := e.exec(ctx, `VACUUM ANALYZE `+t); err != nil {
			return fmt.Errorf("vacuum %s: %w", t, err)
		}
	}
	return nil
}

// riverPrefill inserts $2 available jobs into River queue $1, carrying the
// same metadata as benchsql.Prefill's rows.
var riverPrefill = `INSERT INTO ` + qr("river_job") + ` (args, kind, max_attempts, queue, state)
SELECT jsonb_build_object('uri', 's3://bench/' || g || '.ndjson', 'event_count', 100, 'byte_size', 4096),
    '` + riverKind + `', 10, $1, 'available' FROM generate_series(1, $2) g`

// prefill resets both systems and fills system's queue with n available
// rows (for pgbench: skiplock's table), then vacuums and analyzes.
func (e *env) prefill(ctx context.Context, system string, n int) error {
	if err := e.reset(ctx); err != nil {
		return err
	}
	sql := benchsql.Prefill(skiplockSchema)
	if system == SystemRiver {
		sql = riverPrefill
	}
	if err := e.exec(ctx, sql, benchQueue, n); err != nil {
		return fmt.Errorf("prefill %s: %w", system, err)
	}
	return e.vacuum(ctx)
}

// riverTuning is how a River client fetches.
type riverTuning struct {
	name     string
	cooldown time.Duration // FetchCooldown; 0 means River's default
	poll     time.Duration // FetchPollInterval; 0 means River's default
	pollOnly bool
}

// riverFast is the fetch tuning of River's own benchmark (riverbench):
// FetchCooldown 2ms, FetchPollInterval 20ms, far faster than the defaults
// (100ms, 1s) for throughput.
var riverFast = riverTuning{name: "fast", cooldown: 2 * time.Millisecond, poll: 20 * time.Millisecond}

// newRiverClient returns a River client on River's pool working queue
// bench with maxWorkers workers (none when work is nil: insert only).
func (e *env) newRiverClient(maxWorkers int, t riverTuning, work func(context.Context, *river.Job[riverArgs]) error) (*river.Client[pgx.Tx], error) {
	cfg := &river.Config{
		Schema:            riverSchema,
		Logger:            quietLogger(),
		FetchCooldown:     t.cooldown,
		FetchPollInterval: t.poll,
		PollOnly:          t.pollOnly,
	}
	if work != nil {
		workers := river.NewWorkers()
		river.AddWorker(workers, river.WorkFunc(work))
		cfg.Workers = workers
		cfg.Queues = map[string]river.QueueConfig{benchQueue: {MaxWorkers: maxWorkers}}
	}
	return river.NewClient(riverpgxv5.New(e.rpool), cfg)
}

// quietLogger keeps River's info and warning logs off the progress display;
// errors still show.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// pgxTx is River's transaction type with the pgx v5 driver.
type pgxTx = pgx.Tx
