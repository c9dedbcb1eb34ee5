package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

// binary is the skiplock command, built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "skiplock-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "skiplock")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build skiplock:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	pgtest.StopShared()
	_ = os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// result is what one run of the command did.
type result struct {
	stdout, stderr string
	code           int
}

// cliEnv is the environment of the command: the test's, without
// DATABASE_URL, plus extra ("NAME=value").
func cliEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DATABASE_URL=") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// start starts the command; wait for it with finish.
func start(t *testing.T, env []string, args ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Start())
	return cmd, &stdout, &stderr
}

func finish(t *testing.T, cmd *exec.Cmd, stdout, stderr *bytes.Buffer) result {
	t.Helper()
	err := cmd.Wait()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// runEnv runs the command with an environment and waits for it.
func runEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd, stdout, stderr := start(t, env, args...)
	return finish(t, cmd, stdout, stderr)
}

// db is one test's database: a fresh, migrated schema on the shared
// server, and a client on it for setting up and checking.
type db struct {
	t      *testing.T
	url    string
	schema string
	pool   *pgxpool.Pool
	client *queue.Client
}

func newDB(t *testing.T, migrate bool) *db {
	t.Helper()
	url := pgtest.SharedURL(t)
	return newDBOn(t, url, migrate)
}

func newDBOn(t *testing.T, url string, migrate bool) *db {
	t.Helper()
	schema := pgtest.NewSchema(t, url)
	pool, err := pgxpool.New(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	if migrate {
		m, err := migrations.New(pool, &migrations.Config{Schema: schema})
		require.NoError(t, err)
		_, err = m.Up(testContext(t))
		require.NoError(t, err)
	}
	c, err := queue.New(pool, &queue.Config{Schema: schema})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return &db{t: t, url: url, schema: schema, pool: pool, client: c}
}

// run runs the command against the test's schema (--dsn and --schema
// first) and waits for it.
func (d *db) run(args ...string) result {
	d.t.Helper()
	return runEnv(d.t, cliEnv(), append([]string{"--dsn", d.url, "--schema", d.schema}, args...)...)
}

// runJSON runs the command with --json, requires exit code 0 and decodes
// its output into v.
func (d *db) runJSON(v any, args ...string) {
	d.t.Helper()
	r := d.run(append(args, "--json")...)
	require.Equal(d.t, 0, r.code, "stderr: %s", r.stderr)
	require.NoError(d.t, json.Unmarshal([]byte(r.stdout), v), "stdout: %s", r.stdout)
}

func (d *db) q(table string) string { return pgx.Identifier{d.schema, table}.Sanitize() }

func (d *db) count(where string, args ...any) int {
	d.t.Helper()
	var n int
	require.NoError(d.t, d.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+d.q("batch")+" "+where, args...).Scan(&n))
	return n
}

func (d *db) exec(sql string, args ...any) {
	d.t.Helper()
	_, err := d.pool.Exec(context.Background(), sql, args...)
	require.NoError(d.t, err)
}

func (d *db) enqueue(queueName string, n int) []int64 {
	d.t.Helper()
	ps := make([]queue.EnqueueParams, n)
	for i := range ps {
		ps[i] = queue.EnqueueParams{Queue: queueName}
		ps[i].Meta.URI = fmt.Sprintf("s3://bucket/%s/%04d", queueName, i)
		ps[i].Meta.EventCount = 10
	}
	res, err := d.client.EnqueueMany(testContext(d.t), ps)
	require.NoError(d.t, err)
	ids := make([]int64, n)
	for i, r := range res {
		ids[i] = r.ID
	}
	return ids
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
