package failover_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/skiplock/skiplock/batch"
	"github.com/skiplock/skiplock/failover"
	"github.com/skiplock/skiplock/internal/pgtest"
	"github.com/skiplock/skiplock/migrations"
	"github.com/skiplock/skiplock/queue"
)

// passwordServer is a primary where role must log in with a password over
// TCP (scram-sha-256), as on RDS with rotated passwords or IAM tokens.
type passwordServer struct {
	t     *testing.T
	srv   *pgtest.Server
	admin *pgxpool.Pool
	role  string
}

func newPasswordServer(t *testing.T, role, password string) *passwordServer {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	srv := pgtest.NewPrimary(t, nil)
	admin, err := pgxpool.New(ctx, srv.ConnString("postgres"))
	require.NoError(t, err)
	t.Cleanup(admin.Close)
	_, err = admin.Exec(ctx, "CREATE ROLE "+role+" LOGIN SUPERUSER PASSWORD '"+password+"'")
	require.NoError(t, err)
	// The first matching line wins: put ours before pgtest's trust lines.
	hba := filepath.Join(srv.DataDir(), "pg_hba.conf")
	old, err := os.ReadFile(hba)
	require.NoError(t, err)
	line := "host all " + role + " 127.0.0.1/32 scram-sha-256\n"
	require.NoError(t, os.WriteFile(hba, append([]byte(line), old...), 0o600))
	var ok bool
	require.NoError(t, admin.QueryRow(ctx, "SELECT pg_reload_conf()").Scan(&ok))
	require.True(t, ok)
	s := &passwordServer{t: t, srv: srv, admin: admin, role: role}
	pgtest.WaitFor(t, 30*time.Second, "the password requirement in force", func() bool {
		return s.connectWith("") != nil
	})
	require.NoError(t, s.connectWith(password))
	return s
}

// connectWith tries to log in as the role with password.
func (s *passwordServer) connectWith(password string) error {
	cc, err := pgx.ParseConfig(s.srv.ConnString("postgres"))
	require.NoError(s.t, err)
	cc.User, cc.Password = s.role, password
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// poolConfig logs in as the role with the password the hook returns now.
func (s *passwordServer) poolConfig(password *atomic.Pointer[string], before *atomic.Int64) *pgxpool.Config {
	cfg, err := pgxpool.ParseConfig(s.srv.ConnString("postgres"))
	require.NoError(s.t, err)
	cfg.ConnConfig.User = s.role
	cfg.ConnConfig.Password = "" // only the hook knows it
	cfg.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
		before.Add(1)
		cc.Password = *password.Load()
		return nil
	}
	cfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "SET application_name = 'hooked'")
		return err
	}
	return cfg
}

// TestPoolCredentialHooks: the password comes only from BeforeConnect and
// is rotated. Probes, rebuilds and the LISTEN connection must all log in
// through the hook, and the user's AfterConnect runs on the LISTEN
// connection too.
func TestPoolCredentialHooks(t *testing.T) {
	s := newPasswordServer(t, "rotated", "p1")
	ctx := ctxFor(t, 2*time.Minute)
	var password atomic.Pointer[string]
	p1, p2 := "p1", "p2"
	password.Store(&p1)
	var beforeRuns atomic.Int64
	var mu sync.Mutex
	var events []failover.Event
	p, err := failover.New(ctxFor(t, 30*time.Second), &failover.Config{
		PoolConfig:    s.poolConfig(&password, &beforeRuns),
		Logger:        testLogger(t),
		ProbeInterval: 100 * time.Millisecond,
		OnEvent: func(e failover.Event) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		},
	})
	require.NoError(t, err, "the first probe must log in through BeforeConnect")
	defer p.Close()
	probeFailures := func(after time.Time) []failover.Event {
		mu.Lock()
		defer mu.Unlock()
		var out []failover.Event
		for _, e := range events {
			if e.Kind == failover.EventProbeFailed && e.At.After(after) {
				out = append(out, e)
			}
		}
		return out
	}
	_, err = p.Exec(ctx, "CREATE TABLE creds (v int)")
	require.NoError(t, err)

	// Rotate: the old password stops working, the hook hands out the new.
	_, err = s.admin.Exec(ctx, "ALTER ROLE rotated PASSWORD 'p2'")
	require.NoError(t, err)
	password.Store(&p2)
	require.Error(t, s.connectWith("p1"), "the old password must be rejected")
	// A probe in flight during the rotation may fail; once a few have run
	// with the new password, none may.
	n := beforeRuns.Load()
	pgtest.WaitFor(t, 20*time.Second, "probes with the new password", func() bool { return beforeRuns.Load() >= n+3 })
	mark := time.Now()
	n = beforeRuns.Load()
	pgtest.WaitFor(t, 20*time.Second, "more probes", func() bool { return beforeRuns.Load() >= n+5 })
	require.Empty(t, probeFailures(mark), "probes must log in with the rotated password")

	// A forced rebuild (a read-only error retires the generation) reaches
	// the writer again through the hook.
	gen := p.Generation()
	tx, err := p.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "INSERT INTO creds VALUES (1)")
	require.Equal(t, failover.ClassReadOnly, failover.Classify(err), "%v", err)
	require.NoError(t, tx.Rollback(ctx))
	_, err = p.Exec(ctx, "INSERT INTO creds VALUES (2)")
	require.NoError(t, err)
	require.Greater(t, p.Generation(), gen, "the generation must have been rebuilt")
	_, ok := p.Writer()
	require.True(t, ok)

	// Pooled connections killed: new ones log in with the new password.
	_, err = s.srv.TerminateBackends(ctx)
	require.NoError(t, err)
	pgtest.WaitFor(t, 20*time.Second, "a write after the backends were terminated", func() bool {
		_, err := p.Exec(ctx, "INSERT INTO creds VALUES (3)")
		return err == nil
	})

	conn, err := p.ConnectListener(ctx)
	require.NoError(t, err, "the LISTEN connection must log in through BeforeConnect")
	defer conn.Close(context.Background())
	var app string
	require.NoError(t, conn.QueryRow(ctx, "SHOW application_name").Scan(&app))
	require.Equal(t, "hooked", app, "the user's AfterConnect must run on the LISTEN connection")
}

// TestQueueListenerCredentialHooks: on a plain *pgxpool.Pool, the queue's
// LISTEN connection logs in through the pool's BeforeConnect, so wake-ups
// come by NOTIFY (the poll is 10 s away).
func TestQueueListenerCredentialHooks(t *testing.T) {
	s := newPasswordServer(t, "listener", "secret")
	ctx := ctxFor(t, 2*time.Minute)
	m, err := migrations.New(s.admin, &migrations.Config{Schema: testSchema})
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)

	var password atomic.Pointer[string]
	pw := "secret"
	password.Store(&pw)
	var beforeRuns atomic.Int64
	pool, err := pgxpool.NewWithConfig(ctx, s.poolConfig(&password, &beforeRuns))
	require.NoError(t, err)
	defer pool.Close()
	client, err := queue.New(pool, &queue.Config{Schema: testSchema, Logger: testLogger(t)})
	require.NoError(t, err)
	defer client.Close()
	started := make(chan struct{}, 1)
	r, err := queue.NewRunner(client, &queue.RunnerConfig{
		Queue: "creds", Concurrency: 1, PollInterval: 10 * time.Second,
		Handler: func(context.Context, *batch.Batch) error {
			started <- struct{}{}
			return nil
		},
	})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	defer func() { require.NoError(t, r.Stop(ctx)) }()
	pgtest.WaitFor(t, 20*time.Second, "a LISTEN session of the role, with the user's AfterConnect applied", func() bool {
		var n int
		require.NoError(t, s.admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE usename = 'listener' AND application_name = 'hooked' AND query ILIKE 'listen %'`).Scan(&n))
		return n == 1
	})
	// The runner's first look for work may find the first batch without a
	// wake-up; the second one needs NOTIFY.
	for i := int64(1); i <= 2; i++ {
		_, err = client.Enqueue(ctx, queue.EnqueueParams{Queue: "creds",
			Meta: batch.Meta{Source: batch.Source{Topic: "creds", Start: i, End: i + 1}}})
		require.NoError(t, err)
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatalf("batch %d not started within 5s: no wake-up, the LISTEN connection did not log in", i)
		}
	}
}
